//! The streaming redactor: bytes of an upstream body in, redacted bytes out, record by record.
//!
//! Sans I/O: the caller pushes chunks, asks which subjects are waiting for a consent decision,
//! answers for the whole batch at once, and takes the output written so far. Records wait for
//! their decision in a bounded batch; nothing of a record is written before its subject's
//! decision is known, and nothing after the records is written before they are.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use crate::policy::compiled::{ObjectPlan, RecordsAt, SubjectAt, ValuePlan, View, WithoutBasis};

use super::frame::{Event, FrameError, Framer};
use super::links::Links;
use super::scan::{self, ScanError, Scanner};
use super::spare;
use super::subject::same_subject;

/// Room reserved for output when a buffer starts.
const OUTPUT_CAPACITY: usize = 16 * 1024;

/// Bounds on what one body may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest record or envelope member, in bytes.
    pub max_record_bytes: usize,
    /// Deepest nesting inside a record.
    pub max_depth: usize,
    /// Records held waiting for one consent batch.
    pub batch: usize,
    /// Most records in one body (each costs a consent decision).
    pub max_records: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_record_bytes: 1024 * 1024,
            max_depth: 64,
            batch: 128,
            max_records: 1_000_000,
        }
    }
}

/// Why a body was refused. Before the first output byte this becomes an error response; after
/// it, the response is aborted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedactError {
    #[error("the upstream body cannot be examined: {0}")]
    Unreadable(#[from] FrameError),
    #[error("a record has no readable subject id")]
    NoSubject,
    #[error("the record's subject id does not match the one in the path")]
    SubjectMismatch,
    #[error("a subject has no lawful basis for the purpose")]
    NoLawfulBasis,
    #[error("the body holds more records than the limit")]
    TooManyRecords,
    #[error("the engine was driven out of order")]
    Protocol,
}

/// Counts for the decision line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Records written with the purpose's view.
    pub kept: u32,
    /// Records written with non-personal fields only.
    pub reduced: u32,
    /// Records left out.
    pub omitted: u32,
}

impl Counts {
    /// Records decided, whatever the outcome.
    pub fn records(&self) -> usize {
        [self.kept, self.reduced, self.omitted]
            .into_iter()
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
            .fold(0, usize::saturating_add)
    }
}

/// A record waiting for its subject's decision. Its raw bytes stay in the framer's buffer
/// (which is not compacted before the batch is resolved) and its output, written with the
/// purpose's view while it was validated, waits in `pending_out`.
struct Pending {
    raw: Range<usize>,
    subject: Range<usize>,
    out: Option<Range<usize>>,
}

/// One level of envelope output.
struct Level {
    /// The key this level was entered by (`None`: the root object).
    key: Option<Box<str>>,
    first: bool,
}

/// Redacts one body through a [`View`] of a route.
pub struct Redactor {
    view: Arc<View>,
    subject: SubjectAt,
    without_basis: WithoutBasis,
    /// The subject id captured from the request path, where the route has one.
    path_subject: Option<Box<str>>,
    limits: Limits,
    framer: Framer,
    single: bool,
    levels: Vec<Level>,
    first_record: bool,
    pending: Vec<Pending>,
    /// Subject ids of the pending records, end to end.
    subjects: String,
    /// Output of the pending records under the purpose's view, end to end.
    pending_out: Vec<u8>,
    scanner: Scanner,
    /// A framer event that must wait until the pending records are written.
    deferred: Option<Event>,
    out: Vec<u8>,
    counts: Counts,
    done: bool,
    /// Links to the upstream in kept envelope members, written to name the gateway.
    links: Option<Links>,
}

impl Redactor {
    /// A redactor for a body of a route whose records are at `records`.
    pub fn new(
        records: &RecordsAt,
        subject: &SubjectAt,
        without_basis: WithoutBasis,
        view: Arc<View>,
        path_subject: Option<&str>,
        limits: Limits,
    ) -> Self {
        let (path, single) = match records {
            RecordsAt::Body => (Vec::new(), true),
            RecordsAt::List(path) => (path.clone(), false),
        };
        Self {
            view,
            subject: subject.clone(),
            without_basis,
            path_subject: path_subject.map(Box::from),
            limits,
            framer: Framer::new(path, single, limits.max_depth, limits.max_record_bytes),
            single,
            levels: Vec::new(),
            first_record: true,
            pending: Vec::with_capacity(if single { 1 } else { limits.batch.min(64) }),
            // An empty buffer is valid UTF-8: `from_utf8` only takes its allocation over.
            subjects: String::from_utf8(spare::take(0)).unwrap_or_default(),
            pending_out: spare::take(0),
            scanner: Scanner::new(limits.max_depth),
            deferred: None,
            out: spare::take(OUTPUT_CAPACITY),
            counts: Counts::default(),
            done: false,
            links: None,
        }
    }

    /// Writes the gateway's origin in place of the upstream's at the start of the strings of
    /// kept envelope members (paging links).
    pub fn with_links(mut self, links: Option<Links>) -> Self {
        self.links = links;
        self
    }

    /// Feeds a chunk of the body. Call [`Self::pending_subjects`] afterwards.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), RedactError> {
        self.expect_input()?;
        self.framer.push(chunk);
        self.run()
    }

    /// As [`Self::push`], for a chunk the redactor may keep: read in place, not copied, when
    /// no record runs into it from the chunk before.
    pub fn push_bytes(&mut self, chunk: Bytes) -> Result<(), RedactError> {
        self.expect_input()?;
        self.framer.push_bytes(chunk);
        self.run()
    }

    /// Marks the end of the body. Call [`Self::pending_subjects`] afterwards, then
    /// [`Self::is_complete`] must hold.
    pub fn finish(&mut self) -> Result<(), RedactError> {
        self.expect_input()?;
        self.framer.finish();
        self.run()
    }

    /// Input is taken only once the pending batch is answered and the deferred event handled:
    /// it may move the bytes their ranges point to.
    fn expect_input(&self) -> Result<(), RedactError> {
        if !self.pending.is_empty() || self.deferred.is_some() {
            return Err(RedactError::Protocol);
        }
        Ok(())
    }

    /// Subjects of the records waiting for a decision, in order.
    pub fn pending_subjects(&self) -> impl ExactSizeIterator<Item = &str> {
        self.pending
            .iter()
            .map(|p| self.subjects.get(p.subject.clone()).unwrap_or_default())
    }

    /// True while records wait for a decision.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Answers the pending batch: `lawful[i]` says whether the i-th pending subject has a
    /// lawful basis for the purpose. Writes the records and goes on with the body.
    pub fn resolve(&mut self, lawful: &[bool]) -> Result<(), RedactError> {
        if lawful.len() != self.pending.len() {
            return Err(RedactError::Protocol);
        }
        let pending = std::mem::take(&mut self.pending);
        for (p, &ok) in pending.iter().zip(lawful) {
            // FAIL-CLOSED: only an explicit `true` releases the purpose's view.
            if ok {
                self.counts.kept += 1;
                let written = p.out.clone().and_then(|r| self.pending_out.get(r));
                write_record(&mut self.out, self.single, &mut self.first_record, written);
                continue;
            }
            match self.without_basis {
                WithoutBasis::Omit if !self.single => self.counts.omitted += 1,
                WithoutBasis::Omit | WithoutBasis::Refuse => {
                    return Err(RedactError::NoLawfulBasis);
                }
                WithoutBasis::NonPersonal => {
                    self.counts.reduced += 1;
                    let mut reduced = Vec::new();
                    let raw = self.framer.slice(p.raw.clone());
                    let scanned = self
                        .scanner
                        .scan(raw, true, Some(&self.view.non_personal), None, &mut reduced)
                        .map_err(unreadable)?;
                    let written = scanned.written.then_some(reduced.as_slice());
                    write_record(&mut self.out, self.single, &mut self.first_record, written);
                }
            }
        }
        self.subjects.clear();
        self.pending_out.clear();
        if let Some(event) = self.deferred.take() {
            self.handle(event)?;
        }
        self.run()
    }

    /// Takes the output written so far.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::replace(&mut self.out, spare::take(OUTPUT_CAPACITY))
    }

    /// Moves the output written so far to the end of `into`.
    pub fn drain_output_into(&mut self, into: &mut Vec<u8>) {
        if into.is_empty() {
            // The buffer changes hands instead of being copied; output goes on in `into`'s.
            std::mem::swap(into, &mut self.out);
            if self.out.capacity() < OUTPUT_CAPACITY {
                spare::give(std::mem::replace(
                    &mut self.out,
                    spare::take(OUTPUT_CAPACITY),
                ));
            }
        } else {
            into.append(&mut self.out);
        }
    }

    /// True once the whole body was framed and written.
    pub fn is_complete(&self) -> bool {
        self.done && self.pending.is_empty() && self.deferred.is_none()
    }

    /// Counts of records so far.
    pub fn counts(&self) -> Counts {
        self.counts
    }

    fn run(&mut self) -> Result<(), RedactError> {
        while self.pending.len() < self.limits.batch && self.deferred.is_none() {
            let Some(event) = self.framer.next_event()? else {
                return Ok(());
            };
            let is_record = matches!(
                event,
                Event::Record(_) | Event::Body(_) | Event::RecordAt(_) | Event::BodyAt(_)
            );
            if !is_record && !self.pending.is_empty() {
                self.deferred = Some(event);
                return Ok(());
            }
            self.handle(event)?;
        }
        Ok(())
    }

    fn handle(&mut self, event: Event) -> Result<(), RedactError> {
        match event {
            Event::OpenRoot => {
                self.out.push(b'{');
                self.levels.push(Level {
                    key: None,
                    first: true,
                });
            }
            Event::Member { key, value } => {
                let view = Arc::clone(&self.view);
                let plan = envelope_plan(&view, &self.levels)
                    .and_then(|p| p.member(&key))
                    .filter(|p| !matches!(p, ValuePlan::Drop));
                let mark = self.out.len();
                let was_first = self.separator();
                if plan.is_some() {
                    write_key(&key, &mut self.out);
                }
                let raw = self.framer.slice(value);
                let scanned = self
                    .scanner
                    .scan(raw, true, plan, None, &mut self.out)
                    .map_err(unreadable)?;
                if scanned.end != raw.len() {
                    return Err(FrameError::Malformed.into());
                }
                if !scanned.written {
                    // Dropped, or dropped after all: so are its key and separator.
                    self.out.truncate(mark);
                    if let Some(level) = self.levels.last_mut() {
                        level.first = was_first;
                    }
                } else if let Some(links) = &self.links {
                    links.rewrite_json(&mut self.out, mark);
                }
            }
            Event::OpenObject { key } => {
                self.separator();
                write_key(&key, &mut self.out);
                self.out.push(b'{');
                self.levels.push(Level {
                    key: Some(key.into()),
                    first: true,
                });
            }
            Event::OpenRecords { key } => {
                if let Some(key) = key {
                    self.separator();
                    write_key(&key, &mut self.out);
                }
                self.out.push(b'[');
                self.first_record = true;
            }
            Event::RecordAt(start) | Event::BodyAt(start) => self.take_record_at(start)?,
            Event::Record(range) | Event::Body(range) => {
                if !self.take_record(range, true)? {
                    return Err(FrameError::Malformed.into());
                }
            }
            Event::CloseRecords => self.out.push(b']'),
            Event::CloseObject => {
                self.levels.pop();
                self.out.push(b'}');
            }
            Event::End => self.done = true,
        }
        Ok(())
    }

    /// A record starts at `start`: scanned in place when the buffer holds all of it (the common
    /// case, one pass), else cut out as more input arrives and scanned then.
    fn take_record_at(&mut self, start: usize) -> Result<(), RedactError> {
        let end = start + self.framer.tail(start).len();
        if self.take_record(start..end, false)? {
            return Ok(());
        }
        self.framer.value_incomplete()?;
        Ok(())
    }

    /// Validates a record, writes it with the purpose's view into the pending output, and
    /// queues it for its subject's decision. `complete`: `range` is exactly the record; else
    /// the record starts at `range.start` and may run past its end, and `Ok(false)` reports
    /// that it does (nothing queued).
    fn take_record(&mut self, range: Range<usize>, complete: bool) -> Result<bool, RedactError> {
        let raw = self.framer.slice(range.clone());
        let path = match &self.subject {
            SubjectAt::Param(_) => None,
            SubjectAt::Field(path) | SubjectAt::ParamAndField(_, path) => Some(path.as_slice()),
        };
        let start = self.pending_out.len();
        let scanned = match self.scanner.scan(
            raw,
            complete,
            Some(&self.view.record),
            path,
            &mut self.pending_out,
        ) {
            Ok(scanned) => scanned,
            Err(ScanError::Incomplete) if !complete => {
                self.pending_out.truncate(start);
                if raw.len() > self.limits.max_record_bytes {
                    return Err(FrameError::ValueTooLarge.into());
                }
                return Ok(false);
            }
            Err(e) => return Err(unreadable(e)),
        };
        if complete && scanned.end != raw.len() {
            return Err(FrameError::Malformed.into());
        }
        let range = range.start..range.start + scanned.end;
        if !complete {
            self.framer.value_done(range.end)?;
        }
        let raw = self.framer.slice(range.clone());
        let in_record = scanned
            .subject
            .and_then(|span| raw.get(span))
            .and_then(scan::subject_text);
        let subject = match self.subject {
            SubjectAt::Param(_) => self.path_subject.as_deref().ok_or(RedactError::NoSubject)?,
            SubjectAt::Field(_) => in_record.as_deref().ok_or(RedactError::NoSubject)?,
            SubjectAt::ParamAndField(..) => {
                let id = in_record.as_deref().ok_or(RedactError::NoSubject)?;
                // A CRM may answer a lookup with a merged or aliased record: the subject the
                // client asked for must be the one whose data comes back (in one of the forms
                // a CRM writes its ids in).
                if !self
                    .path_subject
                    .as_deref()
                    .is_some_and(|path| same_subject(path, id))
                {
                    return Err(RedactError::SubjectMismatch);
                }
                id
            }
        };
        // Records taken so far: those decided, and those waiting for their decision.
        if self.counts.records() + self.pending.len() >= self.limits.max_records {
            return Err(RedactError::TooManyRecords);
        }
        let from = self.subjects.len();
        self.subjects.push_str(subject);
        self.pending.push(Pending {
            raw: range,
            subject: from..self.subjects.len(),
            out: scanned.written.then_some(start..self.pending_out.len()),
        });
        Ok(true)
    }

    /// Writes a comma unless this is the first member of the current level; returns whether
    /// it was the first.
    fn separator(&mut self) -> bool {
        let Some(level) = self.levels.last_mut() else {
            return true;
        };
        let was_first = level.first;
        if !was_first {
            self.out.push(b',');
        }
        level.first = false;
        was_first
    }
}

impl Drop for Redactor {
    fn drop(&mut self) {
        spare::give(std::mem::take(&mut self.out));
        spare::give(std::mem::take(&mut self.pending_out));
        spare::give(std::mem::take(&mut self.subjects).into_bytes());
    }
}

/// The envelope plan at the current level: the view's envelope plan, followed down the keys
/// the levels were entered by (`None`: nothing at this level is kept).
fn envelope_plan<'v>(view: &'v View, levels: &[Level]) -> Option<&'v ObjectPlan> {
    let mut plan = &view.envelope;
    for key in levels.iter().filter_map(|l| l.key.as_deref()) {
        match plan.member(key) {
            Some(ValuePlan::Object(inner)) => plan = inner,
            _ => return None,
        }
    }
    Some(plan)
}

/// Writes one record's output (`None`: the plan dropped it entirely) into a list or as the
/// single body.
fn write_record(out: &mut Vec<u8>, single: bool, first: &mut bool, written: Option<&[u8]>) {
    match written {
        Some(bytes) => {
            if !single && !*first {
                out.push(b',');
            }
            out.extend_from_slice(bytes);
            *first = false;
        }
        // A single record the plan drops entirely is still an answer: an empty object.
        None if single => out.extend_from_slice(b"{}"),
        None => {}
    }
}

/// Writes `"key":`, escaped.
fn write_key(key: &str, out: &mut Vec<u8>) {
    super::transform::write_str(key, out);
    out.push(b':');
}

fn unreadable(e: ScanError) -> RedactError {
    RedactError::Unreadable(match e {
        // The framer hands over complete values only: one that still ends early is malformed.
        ScanError::Incomplete | ScanError::Malformed => FrameError::Malformed,
        ScanError::DuplicateKey => FrameError::DuplicateKey,
        ScanError::TooDeep => FrameError::TooDeep,
    })
}
