//! A validating framer for the structure around the records of a response body.
//!
//! The framer walks the envelope objects on the way to the records array byte by byte, with
//! unescaped keys and duplicate-key checks, and cuts out each complete member value and each
//! record as one slice of its buffer. It never interprets those slices: the engine parses each
//! one completely before anything of it is written. Its buffer holds at most the value being
//! cut plus one input chunk, so memory is bounded by the largest record, not by the body.

use std::ops::Range;
use std::slice::SliceIndex;

use bytes::Bytes;

use super::scan::is_ws;
use super::spare;

/// Something the framer found.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// The body's root object opened.
    OpenRoot,
    /// A complete member of an envelope object, with its unescaped key and its raw value.
    Member { key: String, value: Range<usize> },
    /// A member on the way to the records opened an object.
    OpenObject { key: String },
    /// The records array opened; `key` is `None` when the body itself is the array.
    OpenRecords { key: Option<String> },
    /// A record starts at this offset: the caller scans it from [`Framer::tail`] and reports
    /// with [`Framer::value_done`] or [`Framer::value_incomplete`].
    RecordAt(usize),
    /// The body (records at `$`) starts at this offset; reported on like [`Event::RecordAt`].
    BodyAt(usize),
    /// One complete record, cut out after [`Framer::value_incomplete`].
    Record(Range<usize>),
    /// The records array closed.
    CloseRecords,
    /// An envelope object closed.
    CloseObject,
    /// The whole body is one record (records at `$`), complete.
    Body(Range<usize>),
    /// The body ended, complete and well-formed.
    End,
}

/// Why the framer refused the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("the body is not well-formed JSON")]
    Malformed,
    #[error("the body does not have the shape the route declares")]
    UnexpectedShape,
    #[error("an object holds the same key twice")]
    DuplicateKey,
    #[error("the body ended before its JSON was complete")]
    Truncated,
    #[error("a value is nested deeper than the limit")]
    TooDeep,
    #[error("a record or envelope value is larger than the limit")]
    ValueTooLarge,
}

#[derive(Debug)]
enum State {
    /// Expecting the root value.
    Root,
    /// In an envelope object of depth `level`: expecting a key, or `}` if `first`.
    Key { first: bool },
    /// After a key: expecting `:`.
    Colon { key: String },
    /// After `:`: expecting the member's value.
    Value { key: String },
    /// After a member: expecting `,` or `}`.
    AfterMember,
    /// In the records array: expecting a record, or `]` if `first`.
    Item { first: bool },
    /// After a record: expecting `,` or `]`.
    AfterItem,
    /// A record or the body starts at `start`; waiting for the caller's report.
    At { what: Cut, start: usize },
    /// Cutting out a value that started at `start`.
    Cut { what: Cut, scan: Scan },
    /// After the root value: only whitespace may follow.
    Done,
    /// `End` was reported.
    Finished,
}

#[derive(Debug)]
enum Cut {
    Member(String),
    Record,
    Body,
}

/// Resumable scan over one value: where it started, how far it has been read, and the lexical
/// state at that point.
#[derive(Debug, Default)]
struct Scan {
    start: usize,
    pos: usize,
    depth: usize,
    in_string: bool,
    escaped: bool,
    scalar: bool,
}

/// Frames a body whose records are at `records_path` (`None`: the body is the record).
#[derive(Debug)]
pub struct Framer {
    /// Keys from the root to the records array; unused when `single`.
    path: Vec<Box<str>>,
    single: bool,
    buf: Input,
    pos: usize,
    state: State,
    /// Depth of the current envelope object (1 = root object), 0 before the root.
    level: usize,
    /// Keys already seen in each open envelope object, for the duplicate check.
    seen: Vec<Vec<String>>,
    /// True once inside the records array (between OpenRecords and CloseRecords).
    in_records: bool,
    max_depth: usize,
    max_value: usize,
    finished_input: bool,
}

impl Framer {
    /// A framer for records at the key path `path` (`single`: the body itself is one record).
    pub fn new(path: Vec<Box<str>>, single: bool, max_depth: usize, max_value: usize) -> Self {
        Self {
            path,
            single,
            buf: Input {
                own: spare::take(0),
                chunk: Bytes::new(),
            },
            pos: 0,
            state: State::Root,
            level: 0,
            seen: Vec::new(),
            in_records: false,
            max_depth,
            max_value,
            finished_input: false,
        }
    }

    /// Appends input. Bytes already handed out in events are released first, so callers must be
    /// done with every range they were given.
    pub fn push(&mut self, chunk: &[u8]) {
        self.release();
        self.buf.own.extend_from_slice(chunk);
    }

    /// As [`Framer::push`], for a chunk that can be kept as it is: while nothing from an
    /// earlier chunk is still needed (a record cut by the chunk's start), the chunk is read in
    /// place instead of being copied.
    pub fn push_bytes(&mut self, chunk: Bytes) {
        self.release();
        if self.buf.own.is_empty() {
            self.buf.chunk = chunk;
        } else {
            self.buf.own.extend_from_slice(&chunk);
        }
    }

    /// Lets go of the input before the first byte still needed, and moves what is still
    /// needed of a chunk read in place into the framer's own buffer.
    fn release(&mut self) {
        let keep_from = match &self.state {
            State::Cut { scan, .. } => scan.start,
            State::At { start, .. } => *start,
            _ => self.pos,
        };
        let chunk = std::mem::take(&mut self.buf.chunk);
        if chunk.is_empty() {
            self.buf.own.drain(..keep_from);
        } else {
            self.buf.own.clear();
            self.buf
                .own
                .extend_from_slice(chunk.get(keep_from..).unwrap_or_default());
        }
        if keep_from > 0 {
            self.pos -= keep_from;
            match &mut self.state {
                State::Cut { scan, .. } => {
                    scan.start -= keep_from;
                    scan.pos -= keep_from;
                }
                State::At { start, .. } => *start -= keep_from,
                _ => {}
            }
        }
    }

    /// Marks the end of input: the next events must complete the body or fail as truncated.
    pub fn finish(&mut self) {
        self.finished_input = true;
    }

    /// The bytes of a range handed out in an event.
    pub fn slice(&self, range: Range<usize>) -> &[u8] {
        self.buf.get(range).unwrap_or_default()
    }

    /// Everything buffered from `start` on (after [`Event::RecordAt`] or [`Event::BodyAt`]).
    pub fn tail(&self, start: usize) -> &[u8] {
        self.buf.get(start..).unwrap_or_default()
    }

    /// True once the end of the input was announced.
    pub fn input_finished(&self) -> bool {
        self.finished_input
    }

    /// The record or body announced at `start` was scanned whole and ends at `end`.
    pub fn value_done(&mut self, end: usize) -> Result<(), FrameError> {
        let State::At { what, start } = &self.state else {
            return Err(FrameError::Malformed);
        };
        if end - start > self.max_value {
            return Err(FrameError::ValueTooLarge);
        }
        self.pos = end;
        self.state = match what {
            Cut::Body => State::Done,
            _ => State::AfterItem,
        };
        Ok(())
    }

    /// The record or body announced is not complete in the buffer yet: it will be cut out as
    /// more input arrives, and handed over as [`Event::Record`] or [`Event::Body`].
    pub fn value_incomplete(&mut self) -> Result<(), FrameError> {
        let State::At { what, start } = std::mem::replace(&mut self.state, State::Root) else {
            return Err(FrameError::Malformed);
        };
        self.pos = start;
        self.start_cut(what);
        Ok(())
    }

    /// The next event, or `None` when more input is needed.
    pub fn next_event(&mut self) -> Result<Option<Event>, FrameError> {
        loop {
            if let State::Cut { .. } = self.state {
                return self.cut();
            }
            if matches!(self.state, State::Finished) {
                return Ok(None);
            }
            let Some(byte) = self.next_non_ws() else {
                if self.finished_input {
                    return match self.state {
                        State::Done => {
                            self.state = State::Finished;
                            Ok(Some(Event::End))
                        }
                        _ => Err(FrameError::Truncated),
                    };
                }
                return Ok(None);
            };
            let state = std::mem::replace(&mut self.state, State::Root);
            match state {
                State::Root => {
                    if self.single {
                        self.state = State::At {
                            what: Cut::Body,
                            start: self.pos,
                        };
                        return Ok(Some(Event::BodyAt(self.pos)));
                    }
                    self.pos += 1;
                    match (byte, self.path.is_empty()) {
                        (b'{', false) => {
                            self.open_object();
                            return Ok(Some(Event::OpenRoot));
                        }
                        (b'[', true) => {
                            self.in_records = true;
                            self.state = State::Item { first: true };
                            return Ok(Some(Event::OpenRecords { key: None }));
                        }
                        (b'{' | b'[', _) => return Err(FrameError::UnexpectedShape),
                        _ => return Err(self.bad_value_start(byte)),
                    }
                }
                State::Key { first } => match byte {
                    b'"' => {
                        let Some(key) = self.read_key()? else {
                            self.state = State::Key { first };
                            return Ok(None);
                        };
                        let seen = self.seen.last_mut().ok_or(FrameError::Malformed)?;
                        if seen.contains(&key) {
                            return Err(FrameError::DuplicateKey);
                        }
                        seen.push(key.clone());
                        self.state = State::Colon { key };
                    }
                    b'}' if first => {
                        self.pos += 1;
                        return Ok(Some(self.close_object()));
                    }
                    _ => return Err(FrameError::Malformed),
                },
                State::Colon { key } => {
                    if byte != b':' {
                        return Err(FrameError::Malformed);
                    }
                    self.pos += 1;
                    self.state = State::Value { key };
                }
                State::Value { key } => {
                    let on_path = !self.in_records
                        && self.path.get(self.level - 1).is_some_and(|k| **k == *key);
                    if !on_path {
                        self.start_cut(Cut::Member(key));
                        continue;
                    }
                    self.pos += 1;
                    if self.level == self.path.len() {
                        if byte != b'[' {
                            return Err(self.shape_or_malformed(byte));
                        }
                        self.in_records = true;
                        self.state = State::Item { first: true };
                        return Ok(Some(Event::OpenRecords { key: Some(key) }));
                    }
                    if byte != b'{' {
                        return Err(self.shape_or_malformed(byte));
                    }
                    self.open_object();
                    return Ok(Some(Event::OpenObject { key }));
                }
                State::AfterMember => match byte {
                    b',' => {
                        self.pos += 1;
                        self.state = State::Key { first: false };
                    }
                    b'}' => {
                        self.pos += 1;
                        return Ok(Some(self.close_object()));
                    }
                    _ => return Err(FrameError::Malformed),
                },
                State::Item { first } => {
                    if byte == b']' && first {
                        self.pos += 1;
                        return Ok(Some(self.close_records()));
                    }
                    self.state = State::At {
                        what: Cut::Record,
                        start: self.pos,
                    };
                    return Ok(Some(Event::RecordAt(self.pos)));
                }
                State::AfterItem => match byte {
                    b',' => {
                        self.pos += 1;
                        self.state = State::Item { first: false };
                    }
                    b']' => {
                        self.pos += 1;
                        return Ok(Some(self.close_records()));
                    }
                    _ => return Err(FrameError::Malformed),
                },
                State::Done => return Err(FrameError::Malformed),
                State::Cut { .. } | State::At { .. } | State::Finished => {
                    return Err(FrameError::Malformed);
                }
            }
        }
    }

    fn bad_value_start(&self, byte: u8) -> FrameError {
        if is_value_start(byte) {
            FrameError::UnexpectedShape
        } else {
            FrameError::Malformed
        }
    }

    fn shape_or_malformed(&self, byte: u8) -> FrameError {
        self.bad_value_start(byte)
    }

    fn open_object(&mut self) {
        self.level += 1;
        self.seen.push(Vec::new());
        self.state = State::Key { first: true };
    }

    fn close_object(&mut self) -> Event {
        self.level -= 1;
        self.seen.pop();
        self.state = if self.level == 0 {
            State::Done
        } else {
            State::AfterMember
        };
        Event::CloseObject
    }

    fn close_records(&mut self) -> Event {
        self.in_records = false;
        self.state = if self.level == 0 {
            State::Done
        } else {
            State::AfterMember
        };
        Event::CloseRecords
    }

    fn next_non_ws(&mut self) -> Option<u8> {
        while let Some(&b) = self.buf.get(self.pos) {
            if is_ws(b) {
                self.pos += 1;
            } else {
                return Some(b);
            }
        }
        None
    }

    /// Reads a key string starting at `pos` (on its opening quote), unescaped and validated.
    /// `None`: the key is not complete yet.
    fn read_key(&mut self) -> Result<Option<String>, FrameError> {
        let start = self.pos;
        let mut i = start + 1;
        let mut escaped = false;
        loop {
            let Some(&b) = self.buf.get(i) else {
                if self.finished_input {
                    return Err(FrameError::Truncated);
                }
                if i - start > self.max_value {
                    return Err(FrameError::ValueTooLarge);
                }
                return Ok(None);
            };
            i += 1;
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                break;
            }
        }
        let raw = self.buf.get(start..i).ok_or(FrameError::Malformed)?;
        let key = super::scan::string_text(raw).ok_or(FrameError::Malformed)?;
        self.pos = i;
        Ok(Some(key))
    }

    fn start_cut(&mut self, what: Cut) {
        let scan = Scan {
            start: self.pos,
            pos: self.pos,
            ..Scan::default()
        };
        self.state = State::Cut { what, scan };
    }

    /// Continues cutting out the current value.
    fn cut(&mut self) -> Result<Option<Event>, FrameError> {
        let State::Cut { scan, .. } = &mut self.state else {
            return Err(FrameError::Malformed);
        };
        let mut end = None;
        if scan.pos == scan.start {
            match self.buf.get(scan.pos) {
                None => return Ok(None),
                Some(b'{' | b'[') => {}
                Some(b'"') => {
                    scan.in_string = true;
                    scan.pos += 1;
                }
                Some(&b) if is_value_start(b) => scan.scalar = true,
                Some(_) => return Err(FrameError::Malformed),
            }
        }
        while let Some(&b) = self.buf.get(scan.pos) {
            if scan.in_string {
                scan.pos += 1;
                if scan.escaped {
                    scan.escaped = false;
                } else if b == b'\\' {
                    scan.escaped = true;
                } else if b == b'"' {
                    scan.in_string = false;
                    if scan.depth == 0 {
                        end = Some(scan.pos);
                        break;
                    }
                }
                continue;
            }
            if scan.scalar {
                if matches!(b, b',' | b'}' | b']') || is_ws(b) {
                    end = Some(scan.pos);
                    break;
                }
                scan.pos += 1;
                continue;
            }
            scan.pos += 1;
            match b {
                b'"' => scan.in_string = true,
                b'{' | b'[' => {
                    scan.depth += 1;
                    if scan.depth > self.max_depth {
                        return Err(FrameError::TooDeep);
                    }
                }
                b'}' | b']' => {
                    scan.depth = scan.depth.saturating_sub(1);
                    if scan.depth == 0 {
                        end = Some(scan.pos);
                        break;
                    }
                }
                _ => {}
            }
        }
        let end = match end {
            Some(end) => end,
            None if scan.scalar && self.finished_input => scan.pos,
            None if self.finished_input => return Err(FrameError::Truncated),
            None => {
                if scan.pos - scan.start > self.max_value {
                    return Err(FrameError::ValueTooLarge);
                }
                return Ok(None);
            }
        };
        if end - scan.start > self.max_value {
            return Err(FrameError::ValueTooLarge);
        }
        let range = scan.start..end;
        let State::Cut { what, .. } = std::mem::replace(&mut self.state, State::Root) else {
            return Err(FrameError::Malformed);
        };
        self.pos = end;
        Ok(Some(match what {
            Cut::Member(key) => {
                self.state = State::AfterMember;
                Event::Member { key, value: range }
            }
            Cut::Record => {
                self.state = State::AfterItem;
                Event::Record(range)
            }
            Cut::Body => {
                self.state = State::Done;
                Event::Body(range)
            }
        }))
    }
}

impl Drop for Framer {
    fn drop(&mut self) {
        spare::give(std::mem::take(&mut self.buf.own));
    }
}

/// What the framer reads: the last chunk pushed as [`Bytes`], in place, while nothing before
/// it is still needed; else the framer's own buffer. At most one of them holds bytes.
#[derive(Debug)]
struct Input {
    own: Vec<u8>,
    chunk: Bytes,
}

impl Input {
    fn bytes(&self) -> &[u8] {
        if self.chunk.is_empty() {
            &self.own
        } else {
            &self.chunk
        }
    }

    #[inline]
    fn get<I: SliceIndex<[u8]>>(&self, index: I) -> Option<&I::Output> {
        self.bytes().get(index)
    }
}

fn is_value_start(b: u8) -> bool {
    matches!(
        b,
        b'{' | b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n'
    )
}

#[cfg(test)]
mod tests;
