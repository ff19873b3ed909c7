//! One pass over one JSON value: validate it completely and, at the same time, write it
//! through a [`ValuePlan`].
//!
//! The scanner is the engine's parser. It reads bytes, never builds a tree, never allocates on
//! the common path, and copies kept values byte for byte (their validity checked on the way).
//! It accepts exactly RFC 8259 JSON: no comments, no trailing commas, no NaN, no control
//! characters or invalid UTF-8 in strings, no lone surrogates in escapes; and it refuses an
//! object holding a key twice (compared after unescaping) and nesting deeper than the limit.
//! A value that ends before its input does is reported as [`ScanError::Incomplete`] so the
//! caller can wait for more bytes.

use std::borrow::Cow;
use std::collections::HashSet;
use std::ops::Range;

use crate::policy::compiled::{Member, NameHead, ObjectPlan, ValuePlan};

use super::order::{Known, Orders};
use super::transform::{self, Scalar};

/// Why a value could not be scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanError {
    /// The input ended inside the value.
    Incomplete,
    /// Not JSON.
    Malformed,
    /// An object holds the same key twice.
    DuplicateKey,
    /// Nested deeper than the limit.
    TooDeep,
}

/// What a scan found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scanned {
    /// Offset just past the value.
    pub end: usize,
    /// Raw span of the value at the subject path, if the path was given and found.
    pub subject: Option<Range<usize>>,
    /// True when the plan wrote something (false: the value is dropped).
    pub written: bool,
}

/// Keys objects above allow before their duplicate check switches from pairwise comparison to
/// a hash set.
const PAIRWISE_KEYS: usize = 24;

/// A reusable scanner; holds scratch space so that scans do not allocate.
#[derive(Debug)]
pub struct Scanner {
    max_depth: usize,
    /// Keys of the objects being scanned, innermost last.
    keys: Vec<Key>,
    /// The order in which members came in the last object of each plan, to guess the next:
    /// the thread's, lent for the length of a scan.
    orders: Orders,
    /// False: guess nothing, learn nothing (a reference for tests).
    guess: bool,
}

#[derive(Debug, Clone, Copy)]
struct Key {
    start: usize,
    end: usize,
    escaped: bool,
    /// Head and last byte of the unescaped key: keys whose tags differ differ.
    tag: u64,
}

/// The plan in force at a value: a plan, or none (validate only).
type Plan<'p> = Option<&'p ValuePlan>;

impl Scanner {
    /// A scanner refusing nesting deeper than `max_depth`.
    pub fn new(max_depth: usize) -> Self {
        Self {
            max_depth,
            // Allocated on the first key outside a plan's fields: many bodies have none.
            keys: Vec::new(),
            orders: Orders::default(),
            guess: true,
        }
    }

    /// A scanner that reads every member name as a string, never from a learnt order.
    #[cfg(test)]
    pub(crate) fn without_guesses(max_depth: usize) -> Self {
        Self {
            guess: false,
            ..Self::new(max_depth)
        }
    }

    /// Scans the value at the start of `input` (leading whitespace allowed), writing it
    /// through `plan` to `out` (`None`: validate only). `subject`: a key path whose value's
    /// span to report. `complete`: the input ends where the value ends (a number running to
    /// the end is then whole, not cut short). On error, `out` may hold a partial write: the
    /// caller truncates.
    pub fn scan(
        &mut self,
        input: &[u8],
        complete: bool,
        plan: Plan<'_>,
        subject: Option<&[Box<str>]>,
        out: &mut Vec<u8>,
    ) -> Result<Scanned, ScanError> {
        self.keys.clear();
        let mut cx = Cx {
            input,
            pos: 0,
            subject: None,
            complete,
        };
        if self.guess {
            self.orders = Orders::borrow();
        }
        let written = self.value(&mut cx, plan, subject, 0, out);
        if self.guess {
            std::mem::take(&mut self.orders).give_back();
        }
        let written = written?;
        Ok(Scanned {
            end: cx.pos,
            subject: cx.subject,
            written,
        })
    }

    fn value(
        &mut self,
        cx: &mut Cx<'_>,
        plan: Plan<'_>,
        subject: Option<&[Box<str>]>,
        depth: usize,
        out: &mut Vec<u8>,
    ) -> Result<bool, ScanError> {
        let byte = cx.skip_ws()?;
        let start = cx.pos;
        let written = match plan {
            None | Some(ValuePlan::Drop) => {
                self.skip(cx, byte, subject, depth)?;
                false
            }
            Some(ValuePlan::Keep) => {
                self.skip(cx, byte, subject, depth)?;
                out.extend_from_slice(cx.input.get(start..cx.pos).ok_or(ScanError::Malformed)?);
                true
            }
            Some(ValuePlan::KeepScalar) => {
                self.skip(cx, byte, subject, depth)?;
                let raw = cx.input.get(start..cx.pos).ok_or(ScanError::Malformed)?;
                if byte == b'{' || (byte == b'[' && holds_object(raw)) {
                    out.extend_from_slice(b"null");
                } else {
                    out.extend_from_slice(raw);
                }
                true
            }
            Some(ValuePlan::Transform(t)) => {
                // `None`: written already.
                let scalar = match byte {
                    b'"' => {
                        let (raw, escaped, ascii) = cx.string_parts()?;
                        // ASCII without escapes: validated bytes that need neither decoding nor
                        // escaping again.
                        if ascii && !escaped && transform::write_plain_ascii(t, raw, out) {
                            None
                        } else {
                            Some(Scalar::Str(text_of(raw, escaped)?))
                        }
                    }
                    b'-' | b'0'..=b'9' => {
                        let raw = cx.number()?;
                        let text = std::str::from_utf8(raw).map_err(|_| ScanError::Malformed)?;
                        Some(Scalar::Num(text))
                    }
                    _ => {
                        self.skip(cx, byte, subject, depth)?;
                        Some(Scalar::Other)
                    }
                };
                if let Some(scalar) = scalar {
                    transform::write(t, &scalar, out);
                }
                true
            }
            Some(ValuePlan::Object(members)) if byte == b'{' => {
                self.object(cx, Some(members), subject, depth, out)?;
                true
            }
            Some(ValuePlan::Array(items)) if byte == b'[' => {
                self.array(cx, Some(items), depth, out)?;
                true
            }
            // A value of another shape than the plan expects carries unknown data: dropped.
            Some(ValuePlan::Object(_) | ValuePlan::Array(_)) => {
                self.skip(cx, byte, subject, depth)?;
                false
            }
        };
        if subject.is_some_and(<[Box<str>]>::is_empty) {
            cx.subject = Some(start..cx.pos);
        }
        Ok(written)
    }

    /// Validates a value without writing it.
    fn skip(
        &mut self,
        cx: &mut Cx<'_>,
        byte: u8,
        subject: Option<&[Box<str>]>,
        depth: usize,
    ) -> Result<(), ScanError> {
        match byte {
            b'{' => self.object_skip(cx, subject, depth),
            b'[' => self.array(cx, None, depth, &mut Vec::new()),
            b'"' => cx.string().map(|_| ()),
            b'-' | b'0'..=b'9' => cx.number().map(|_| ()),
            b't' => cx.literal(b"true"),
            b'f' => cx.literal(b"false"),
            b'n' => cx.literal(b"null"),
            _ => Err(ScanError::Malformed),
        }
    }

    fn object_skip(
        &mut self,
        cx: &mut Cx<'_>,
        subject: Option<&[Box<str>]>,
        depth: usize,
    ) -> Result<(), ScanError> {
        self.object(cx, None, subject, depth, &mut Vec::new())
    }

    /// An object at `cx.pos` (on its `{`): members written through `plan` (`None`: validate
    /// only).
    fn object<'i>(
        &mut self,
        cx: &mut Cx<'i>,
        plan: Option<&ObjectPlan>,
        subject: Option<&[Box<str>]>,
        depth: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), ScanError> {
        if depth >= self.max_depth {
            return Err(ScanError::TooDeep);
        }
        cx.pos += 1;
        if plan.is_some() {
            out.push(b'{');
        }
        let keys_from = self.keys.len();
        let mut set: Option<HashSet<Cow<'i, [u8]>>> = None;
        // Names of the plan's first 64 fields seen in this object, by index.
        let mut seen = 0u64;
        // Kept members not copied yet: a span of the input, its leading comma already written.
        let mut kept: Option<Range<usize>> = None;
        let mut first_out = true;
        let mut byte = cx.skip_ws()?;
        if byte == b'}' {
            cx.pos += 1;
            if plan.is_some() {
                out.push(b'}');
            }
            return Ok(());
        }
        let order = plan.filter(|_| self.guess).and_then(|p| self.orders.of(p));
        // Where the previous member stands in the order: the object's start at first.
        let mut previous = order.and_then(|slot| self.orders.start(slot));
        loop {
            if byte != b'"' {
                return Err(ScanError::Malformed);
            }
            let key_start = cx.pos + 1;
            let (guessed, known) = match (order, previous) {
                (Some(slot), Some(at)) => {
                    let input = cx.input.get(cx.pos..).unwrap_or_default();
                    self.orders.guess(slot, at, input)
                }
                _ => (None, None),
            };
            let (raw, escaped, name, head, member) = match known {
                // The guess holds: the name is the guessed one, as is.
                Some(Known { len, member }) => {
                    let raw = cx
                        .input
                        .get(key_start..cx.pos + len - 1)
                        .ok_or(ScanError::Malformed)?;
                    cx.pos += len;
                    previous = guessed;
                    (raw, false, Cow::Borrowed(raw), None, member)
                }
                None => {
                    let (raw, escaped) = cx.string()?;
                    let name: Cow<'_, [u8]> = if escaped {
                        Cow::Owned(unescape(raw)?.into_bytes())
                    } else {
                        Cow::Borrowed(raw)
                    };
                    let head = if escaped {
                        NameHead::of(&name)
                    } else {
                        NameHead::at(cx.input.get(key_start..).unwrap_or_default(), raw.len())
                    };
                    let member = match plan {
                        Some(p) => p.lookup(&name, head),
                        None => Member::Unplanned,
                    };
                    if let (Some(slot), Some(at)) = (order, previous) {
                        previous = self.orders.learn(slot, at, guessed, member, raw, escaped);
                    }
                    (raw, escaped, name, Some(head), member)
                }
            };
            match member {
                // A name of the plan: its index says whether the object held it before.
                Member::Field(i, _) if i < 64 => {
                    let bit = 1u64 << i;
                    if seen & bit != 0 {
                        return Err(ScanError::DuplicateKey);
                    }
                    seen |= bit;
                }
                // Any other name can only repeat another name outside the plan.
                _ => {
                    let key = Key {
                        start: key_start,
                        end: key_start + raw.len(),
                        escaped,
                        tag: head
                            .unwrap_or_else(|| NameHead::of(&name))
                            .tag(name.last().copied().unwrap_or_default()),
                    };
                    let earlier = self.keys.get(keys_from..).unwrap_or_default();
                    if set.is_none()
                        && earlier.len() < PAIRWISE_KEYS
                        && earlier.iter().all(|k| k.tag != key.tag)
                    {
                        // The common case: no earlier key even shares the fingerprint.
                    } else {
                        self.check_duplicate(cx.input, key, keys_from, &mut set)?;
                    }
                    self.keys.push(key);
                }
            }
            if cx.skip_ws()? != b':' {
                return Err(ScanError::Malformed);
            }
            // Nothing stands between the key's closing quote and the colon.
            let colon_next = cx.pos == key_start + raw.len() + 1;
            let colon_at = cx.pos;
            cx.pos += 1;
            let first = cx.skip_ws()?;
            let member_subject = match subject {
                Some([head, rest @ ..]) if head.as_bytes() == &*name => Some(rest),
                _ => None,
            };
            let member_plan = member.plan();
            // A value copied as it came: any kept value, and a scalar where only scalars are.
            let whole = match member_plan {
                Some(ValuePlan::Keep) => true,
                Some(ValuePlan::KeepScalar) => !matches!(first, b'{' | b'['),
                _ => false,
            };
            match member_plan {
                _ if whole => {
                    // Key, colon and value are copied in one piece, as they came.
                    let value_start = cx.pos;
                    if first == b'"' {
                        cx.string()?;
                    } else {
                        self.skip(cx, first, member_subject, depth + 1)?;
                    }
                    if member_subject.is_some_and(<[Box<str>]>::is_empty) {
                        cx.subject = Some(value_start..cx.pos);
                    }
                    let piece_start = key_start - 1;
                    match &mut kept {
                        // Right after the previous kept member, its comma and whitespace
                        // between (a member between would hold a quote): one copy for both.
                        Some(run)
                            if cx
                                .input
                                .get(run.end..piece_start)
                                .is_some_and(|gap| gap.iter().all(|&b| b == b',' || is_ws(b))) =>
                        {
                            run.end = cx.pos;
                        }
                        _ => {
                            copy_kept(&mut kept, cx.input, out)?;
                            if !first_out {
                                out.push(b',');
                            }
                            kept = Some(piece_start..cx.pos);
                        }
                    }
                    first_out = false;
                }
                None | Some(ValuePlan::Drop) => {
                    // Dropped strings, the bulk of most records, are validated in place.
                    if member_subject.is_none() && first == b'"' {
                        cx.string()?;
                    } else {
                        self.value(cx, None, member_subject, depth + 1, out)?;
                    }
                }
                Some(member) => {
                    copy_kept(&mut kept, cx.input, out)?;
                    let mark = out.len();
                    if !first_out {
                        out.push(b',');
                    }
                    // The key as written, quotes and colon included, when nothing stands
                    // between them.
                    let key_piece = colon_next
                        .then(|| cx.input.get(key_start - 1..=colon_at))
                        .flatten();
                    match key_piece {
                        Some(piece) => out.extend_from_slice(piece),
                        None => {
                            out.push(b'"');
                            out.extend_from_slice(raw);
                            out.extend_from_slice(b"\":");
                        }
                    }
                    if self.value(cx, Some(member), member_subject, depth + 1, out)? {
                        first_out = false;
                    } else {
                        out.truncate(mark);
                    }
                }
            }
            match cx.skip_ws()? {
                b',' => {
                    cx.pos += 1;
                    byte = cx.skip_ws()?;
                }
                b'}' => {
                    cx.pos += 1;
                    break;
                }
                _ => return Err(ScanError::Malformed),
            }
        }
        copy_kept(&mut kept, cx.input, out)?;
        self.keys.truncate(keys_from);
        if plan.is_some() {
            out.push(b'}');
        }
        Ok(())
    }

    /// An array at `cx.pos` (on its `[`): elements written through `plan` (`None`: validate
    /// only).
    fn array(
        &mut self,
        cx: &mut Cx<'_>,
        plan: Option<&ValuePlan>,
        depth: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), ScanError> {
        if depth >= self.max_depth {
            return Err(ScanError::TooDeep);
        }
        cx.pos += 1;
        if plan.is_some() {
            out.push(b'[');
        }
        let mut first_out = true;
        if cx.skip_ws()? == b']' {
            cx.pos += 1;
        } else {
            loop {
                match plan {
                    None => {
                        self.value(cx, None, None, depth + 1, out)?;
                    }
                    Some(item) => {
                        let mark = out.len();
                        if !first_out {
                            out.push(b',');
                        }
                        if self.value(cx, Some(item), None, depth + 1, out)? {
                            first_out = false;
                        } else {
                            out.truncate(mark);
                        }
                    }
                }
                match cx.skip_ws()? {
                    b',' => cx.pos += 1,
                    b']' => {
                        cx.pos += 1;
                        break;
                    }
                    _ => return Err(ScanError::Malformed),
                }
            }
        }
        if plan.is_some() {
            out.push(b']');
        }
        Ok(())
    }

    /// Refuses `key` if the object whose keys start at `from` already holds it.
    fn check_duplicate<'i>(
        &self,
        input: &'i [u8],
        key: Key,
        from: usize,
        set: &mut Option<HashSet<Cow<'i, [u8]>>>,
    ) -> Result<(), ScanError> {
        let earlier = self.keys.get(from..).unwrap_or_default();
        let bytes = |k: &Key| input.get(k.start..k.end).unwrap_or_default();
        let unescaped = |k: &Key| -> Result<Cow<'i, [u8]>, ScanError> {
            let raw = input.get(k.start..k.end).unwrap_or_default();
            Ok(if k.escaped {
                Cow::Owned(unescape(raw)?.into_bytes())
            } else {
                Cow::Borrowed(raw)
            })
        };
        if let Some(set) = set {
            return if set.insert(unescaped(&key)?) {
                Ok(())
            } else {
                Err(ScanError::DuplicateKey)
            };
        }
        if earlier.len() >= PAIRWISE_KEYS {
            let mut s = HashSet::with_capacity(earlier.len() * 2);
            for k in earlier {
                s.insert(unescaped(k)?);
            }
            let fresh = s.insert(unescaped(&key)?);
            *set = Some(s);
            return if fresh {
                Ok(())
            } else {
                Err(ScanError::DuplicateKey)
            };
        }
        let this = bytes(&key);
        for k in earlier {
            if k.tag != key.tag {
                continue;
            }
            let same = if !k.escaped && !key.escaped {
                bytes(k) == this
            } else {
                unescaped(k)? == unescaped(&key)?
            };
            if same {
                return Err(ScanError::DuplicateKey);
            }
        }
        Ok(())
    }
}

/// A cursor over the input of one scan.
struct Cx<'i> {
    input: &'i [u8],
    pos: usize,
    subject: Option<Range<usize>>,
    complete: bool,
}

impl<'i> Cx<'i> {
    /// Skips whitespace; returns the next byte without consuming it.
    #[inline(always)]
    fn skip_ws(&mut self) -> Result<u8, ScanError> {
        // Every byte above the space is no whitespace: one compare for the common case.
        match self.input.get(self.pos) {
            Some(&b) if b > b' ' => return Ok(b),
            _ => {}
        }
        while let Some(&b) = self.input.get(self.pos) {
            if is_ws(b) {
                self.pos += 1;
            } else {
                return Ok(b);
            }
        }
        Err(ScanError::Incomplete)
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), ScanError> {
        let end = self.pos + word.len();
        match self.input.get(self.pos..end) {
            Some(w) if w == word => {
                self.pos = end;
                Ok(())
            }
            Some(_) => Err(ScanError::Malformed),
            None => {
                let rest = self.input.get(self.pos..).unwrap_or_default();
                if word.starts_with(rest) {
                    Err(ScanError::Incomplete)
                } else {
                    Err(ScanError::Malformed)
                }
            }
        }
    }

    /// A number at `pos`: its raw text. A number that reaches the end of the input is
    /// incomplete (more digits may follow).
    fn number(&mut self) -> Result<&'i [u8], ScanError> {
        let input = self.input;
        let start = self.pos;
        let mut i = start;
        let at = |i: usize| input.get(i).copied();
        if at(i) == Some(b'-') {
            i += 1;
        }
        match at(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => {
                while matches!(at(i), Some(b'0'..=b'9')) {
                    i += 1;
                }
            }
            None if !self.complete => return Err(ScanError::Incomplete),
            None | Some(_) => return Err(ScanError::Malformed),
        }
        if at(i) == Some(b'.') {
            i += 1;
            let digits = i;
            while matches!(at(i), Some(b'0'..=b'9')) {
                i += 1;
            }
            if i == digits {
                return Err(if at(i).is_none() && !self.complete {
                    ScanError::Incomplete
                } else {
                    ScanError::Malformed
                });
            }
        }
        if matches!(at(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(at(i), Some(b'+' | b'-')) {
                i += 1;
            }
            let digits = i;
            while matches!(at(i), Some(b'0'..=b'9')) {
                i += 1;
            }
            if i == digits {
                return Err(if at(i).is_none() && !self.complete {
                    ScanError::Incomplete
                } else {
                    ScanError::Malformed
                });
            }
        }
        match at(i) {
            None if !self.complete => Err(ScanError::Incomplete),
            None => {
                self.pos = i;
                input.get(start..i).ok_or(ScanError::Malformed)
            }
            // A number runs into a letter or another number part: not JSON.
            Some(b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-' | b'a'..=b'z' | b'A'..=b'Z') => {
                Err(ScanError::Malformed)
            }
            Some(_) => {
                self.pos = i;
                input.get(start..i).ok_or(ScanError::Malformed)
            }
        }
    }

    /// A string at `pos` (on its opening quote): its raw contents between the quotes, and
    /// whether they hold escapes. Escapes, control characters and UTF-8 are validated.
    #[inline(always)]
    fn string(&mut self) -> Result<(&'i [u8], bool), ScanError> {
        self.string_parts().map(|(raw, escaped, _)| (raw, escaped))
    }

    /// As [`Self::string`], and whether the contents are all ASCII (false may be said of some
    /// ASCII strings; true is exact).
    #[inline(always)]
    fn string_parts(&mut self) -> Result<(&'i [u8], bool, bool), ScanError> {
        let input = self.input;
        let start = self.pos + 1;
        let mut i = start;
        let mut escaped = false;
        // The bytes read, words eight at a time and single bytes, or-ed: their high bits say
        // whether any was not ASCII.
        let mut high = 0u64;
        loop {
            // Eight bytes at a time: jump straight to the first special byte of a word.
            while let Some(word) = input.get(i..).and_then(<[u8]>::first_chunk::<8>) {
                let w = u64::from_le_bytes(*word);
                high |= w;
                let mask = special(w);
                if mask != 0 {
                    // INVARIANT: the lowest flagged byte is a true special byte (borrows only
                    // flag bytes above it).
                    i += (mask.trailing_zeros() / 8) as usize;
                    break;
                }
                i += 8;
            }
            let Some(&b) = input.get(i) else {
                return Err(ScanError::Incomplete);
            };
            match b {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    i = escape(input, i)?;
                }
                0..=0x1f => return Err(ScanError::Malformed),
                0x80.. => {
                    high |= u64::from(b);
                    i += 1;
                }
                _ => i += 1,
            }
        }
        let raw = input.get(start..i).ok_or(ScanError::Malformed)?;
        let ascii = high & HIGH == 0;
        if !ascii && std::str::from_utf8(raw).is_err() {
            return Err(ScanError::Malformed);
        }
        self.pos = i + 1;
        Ok((raw, escaped, ascii))
    }
}

/// JSON's whitespace (RFC 8259 §2): space, tab, line feed, carriage return.
#[inline(always)]
pub(super) fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `w` that is `"`, `\` or a control character; the lowest set
/// bit is exact, bits above it may be spurious.
#[inline(always)]
fn special(w: u64) -> u64 {
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let quote = has_zero(w ^ (ONES * u64::from(b'"')));
    let backslash = has_zero(w ^ (ONES * u64::from(b'\\')));
    // Bytes below 0x20 (the high bit of bytes >= 0x80 is masked out by `!w`).
    let control = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    quote | backslash | control
}

/// Copies the pending span of kept members, if any, to `out`.
#[inline(always)]
fn copy_kept(
    kept: &mut Option<Range<usize>>,
    input: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), ScanError> {
    if let Some(run) = kept.take() {
        out.extend_from_slice(input.get(run).ok_or(ScanError::Malformed)?);
    }
    Ok(())
}

/// True if a validated JSON value holds an object anywhere (a `{` outside strings).
fn holds_object(raw: &[u8]) -> bool {
    let mut in_string = false;
    let mut escaped = false;
    for &b in raw {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if b == b'{' {
            return true;
        }
    }
    false
}

/// Validates the escape at `i` (on its backslash); returns the offset after it.
fn escape(input: &[u8], i: usize) -> Result<usize, ScanError> {
    let Some(&kind) = input.get(i + 1) else {
        return Err(ScanError::Incomplete);
    };
    match kind {
        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Ok(i + 2),
        b'u' => {
            let unit = hex4(input, i + 2)?;
            match unit {
                0xD800..=0xDBFF => {
                    // A high surrogate must be followed by an escaped low one.
                    match input.get(i + 6..i + 8) {
                        Some(b"\\u") => {}
                        Some(_) => return Err(ScanError::Malformed),
                        None => {
                            return match input.get(i + 6) {
                                None | Some(b'\\') => Err(ScanError::Incomplete),
                                Some(_) => Err(ScanError::Malformed),
                            };
                        }
                    }
                    let low = hex4(input, i + 8)?;
                    if (0xDC00..=0xDFFF).contains(&low) {
                        Ok(i + 12)
                    } else {
                        Err(ScanError::Malformed)
                    }
                }
                0xDC00..=0xDFFF => Err(ScanError::Malformed),
                _ => Ok(i + 6),
            }
        }
        _ => Err(ScanError::Malformed),
    }
}

fn hex4(input: &[u8], at: usize) -> Result<u32, ScanError> {
    let mut unit = 0u32;
    for k in 0..4 {
        let Some(&h) = input.get(at + k) else {
            return Err(ScanError::Incomplete);
        };
        let digit = char::from(h).to_digit(16).ok_or(ScanError::Malformed)?;
        unit = unit * 16 + digit;
    }
    Ok(unit)
}

/// The text of a validated string's raw contents.
fn text_of(raw: &[u8], escaped: bool) -> Result<Cow<'_, str>, ScanError> {
    if escaped {
        Ok(Cow::Owned(unescape(raw)?))
    } else {
        std::str::from_utf8(raw)
            .map(Cow::Borrowed)
            .map_err(|_| ScanError::Malformed)
    }
}

/// Unescapes a string's raw contents (already validated).
pub fn unescape(raw: &[u8]) -> Result<String, ScanError> {
    let mut out = String::with_capacity(raw.len());
    let text = std::str::from_utf8(raw).map_err(|_| ScanError::Malformed)?;
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let Some((_, kind)) = chars.next() else {
            return Err(ScanError::Malformed);
        };
        let plain = match kind {
            '"' => '"',
            '\\' => '\\',
            '/' => '/',
            'b' => '\u{8}',
            'f' => '\u{c}',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'u' => {
                let unit = hex4(raw, i + 2)?;
                for _ in 0..4 {
                    chars.next();
                }
                let code = if (0xD800..=0xDBFF).contains(&unit) {
                    let low = hex4(raw, i + 8)?;
                    for _ in 0..6 {
                        chars.next();
                    }
                    0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
                } else {
                    unit
                };
                char::from_u32(code).ok_or(ScanError::Malformed)?
            }
            _ => return Err(ScanError::Malformed),
        };
        out.push(plain);
    }
    Ok(out)
}

/// The string whose opening quote is at `at` in `input`, validated: the offset of its closing
/// quote, and whether it holds escapes; `None` if no complete string is there.
pub(super) fn string_at(input: &[u8], at: usize) -> Option<(usize, bool)> {
    if input.get(at) != Some(&b'"') {
        return None;
    }
    let mut cx = Cx {
        input,
        pos: at,
        subject: None,
        complete: true,
    };
    let (_, escaped) = cx.string().ok()?;
    Some((cx.pos - 1, escaped))
}

/// The text of a complete JSON string (quotes included), validated; `None` if it is not one.
pub fn string_text(raw: &[u8]) -> Option<String> {
    let mut cx = Cx {
        input: raw,
        pos: 0,
        subject: None,
        complete: true,
    };
    if raw.first() != Some(&b'"') {
        return None;
    }
    let (inner, escaped) = cx.string().ok()?;
    if cx.pos != raw.len() {
        return None;
    }
    text_of(inner, escaped).ok().map(Cow::into_owned)
}

/// The subject id in a raw value span: a string's text, or an integer's digits.
pub fn subject_text(raw: &[u8]) -> Option<Cow<'_, str>> {
    match raw.first() {
        Some(b'"') => {
            let inner = raw.get(1..raw.len().saturating_sub(1))?;
            let text = text_of(inner, inner.contains(&b'\\')).ok()?;
            (!text.is_empty()).then_some(text)
        }
        Some(b'-' | b'0'..=b'9') => {
            let digits = raw.strip_prefix(b"-").unwrap_or(raw);
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            std::str::from_utf8(raw).ok().map(Cow::Borrowed)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests;
