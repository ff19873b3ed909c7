//! A strict DOM reference of the redaction engine, and the loop that drives the engine, for
//! the differential fuzz target ([`super::engine_differential`]) and the property tests
//! (`props.rs`): the one copy both check the engine against.
//!
//! The whole body is parsed at once by a strict parser (RFC 8259 grammar, duplicate keys
//! refused, number text kept exactly as written, nesting bounded by [`MAX_PARSE_DEPTH`]) and
//! the view is applied by a direct recursive walk that follows `docs/policy-language.md` and
//! the docs of the compiled plan types. Leaf transforms reuse
//! [`crate::redact::transform::write`], which is unit-tested on its own; everything else
//! (minimisation, plan shapes, envelope, subjects, lawful-basis outcomes) is reimplemented
//! here.

use std::sync::Arc;

use crate::policy::compiled::{
    ObjectPlan, RecordsAt, SubjectAt, Transform, ValuePlan, View, WithoutBasis,
};
use crate::redact::{Counts, Limits, RedactError, Redactor};

// ------------------------------------------------------------------------------------------
// A JSON tree that keeps number text exactly and object members in order (duplicates included,
// so that the generators can write bodies with duplicate keys).

#[derive(Clone, Debug, PartialEq)]
pub enum J {
    Null,
    Bool(bool),
    /// The number's text as written.
    Num(String),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

impl J {
    /// The member `key` of an object (the first, if the tree holds duplicates).
    pub fn get(&self, key: &str) -> Option<&J> {
        match self {
            J::Obj(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

/// Strict parse of a whole document: RFC 8259 grammar, valid UTF-8, no lone surrogates, no
/// duplicate keys (compared unescaped), nothing but whitespace after the value.
pub fn parse_strict(bytes: &[u8]) -> Result<J, String> {
    let mut p = Parser {
        b: bytes,
        i: 0,
        depth: 0,
    };
    p.ws();
    let v = p.value()?;
    p.ws();
    if p.i != bytes.len() {
        return Err(format!("trailing bytes at {}", p.i));
    }
    Ok(v)
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
    /// Containers open: the walk is recursive, so it is bounded.
    depth: usize,
}

/// Nesting the reference parser allows (the engine's limits are far below): the parser is
/// recursive, and a fuzz input may be nested as deep as it is long.
pub const MAX_PARSE_DEPTH: usize = 256;

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Result<(), String> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!("expected {:?} at {}", c as char, self.i))
        }
    }

    fn literal(&mut self, text: &str, v: J) -> Result<J, String> {
        if self.b[self.i..].starts_with(text.as_bytes()) {
            self.i += text.len();
            Ok(v)
        } else {
            Err(format!("bad literal at {}", self.i))
        }
    }

    fn value(&mut self) -> Result<J, String> {
        match self.peek() {
            Some(b'{' | b'[') if self.depth >= MAX_PARSE_DEPTH => Err("too deep".into()),
            Some(b'{') => {
                self.depth += 1;
                let v = self.object();
                self.depth -= 1;
                v
            }
            Some(b'[') => {
                self.depth += 1;
                let v = self.array();
                self.depth -= 1;
                v
            }
            Some(b'"') => self.string().map(J::Str),
            Some(b't') => self.literal("true", J::Bool(true)),
            Some(b'f') => self.literal("false", J::Bool(false)),
            Some(b'n') => self.literal("null", J::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(format!("no value at {}", self.i)),
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> Result<J, String> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(format!("bad number at {start}")),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(format!("bad fraction at {start}"));
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(format!("bad exponent at {start}"));
            }
        }
        let text = std::str::from_utf8(&self.b[start..self.i]).map_err(|e| e.to_string())?;
        Ok(J::Num(text.to_owned()))
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let h = self.b.get(self.i..self.i + 4).ok_or("short \\u escape")?;
        let h = std::str::from_utf8(h).map_err(|e| e.to_string())?;
        if !h.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!("bad \\u escape at {}", self.i));
        }
        self.i += 4;
        u32::from_str_radix(h, 16).map_err(|e| e.to_string())
    }

    fn string(&mut self) -> Result<String, String> {
        self.eat(b'"')?;
        let mut out = Vec::new();
        loop {
            let c = self.peek().ok_or("unterminated string")?;
            self.i += 1;
            match c {
                b'"' => break,
                0..=0x1f => return Err(format!("control character at {}", self.i - 1)),
                b'\\' => {
                    let e = self.peek().ok_or("unterminated escape")?;
                    self.i += 1;
                    let ch = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&hi) {
                                if !self.b[self.i..].starts_with(b"\\u") {
                                    return Err("lone high surrogate".into());
                                }
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err("bad low surrogate".into());
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else if (0xDC00..0xE000).contains(&hi) {
                                return Err("lone low surrogate".into());
                            } else {
                                hi
                            };
                            char::from_u32(code).ok_or("bad code point")?
                        }
                        _ => return Err(format!("bad escape at {}", self.i - 1)),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                _ => out.push(c),
            }
        }
        String::from_utf8(out).map_err(|e| e.to_string())
    }

    fn array(&mut self) -> Result<J, String> {
        self.eat(b'[')?;
        self.ws();
        let mut items = Vec::new();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(J::Arr(items));
        }
        loop {
            self.ws();
            items.push(self.value()?);
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(J::Arr(items));
                }
                _ => return Err(format!("bad array at {}", self.i)),
            }
        }
    }

    fn object(&mut self) -> Result<J, String> {
        self.eat(b'{')?;
        self.ws();
        let mut members: Vec<(String, J)> = Vec::new();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(J::Obj(members));
        }
        loop {
            self.ws();
            let key = self.string()?;
            if members.iter().any(|(k, _)| *k == key) {
                return Err(format!("duplicate key {key:?}"));
            }
            self.ws();
            self.eat(b':')?;
            self.ws();
            let v = self.value()?;
            members.push((key, v));
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(J::Obj(members));
                }
                _ => return Err(format!("bad object at {}", self.i)),
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// The reference: a DOM walk over the strictly parsed body.

/// Why the reference refuses a body.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    Unreadable(String),
    Shape,
    NoSubject,
    SubjectMismatch,
    NoLawfulBasis,
}

/// Consent per subject: granted iff a keyed hash of the subject falls under `threshold` of 4.
#[derive(Debug, Clone, Copy)]
pub struct Consent {
    pub seed: u64,
    pub threshold: u64,
}

impl Consent {
    pub fn granted(&self, subject: &str) -> bool {
        // FNV-1a, keyed by the seed.
        let mut h = 0xcbf2_9ce4_8422_2325_u64 ^ self.seed;
        for b in subject.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        (h >> 7) % 4 < self.threshold
    }
}

#[derive(Debug, Clone)]
pub struct Case {
    pub records: RecordsAt,
    pub subject: SubjectAt,
    pub without_basis: WithoutBasis,
    pub view: View,
    pub path_subject: Option<String>,
    pub consent: Consent,
}

/// The plan for a member: exact name first, else the wildcard (a linear search, independent of
/// the engine's binary search over sorted fields).
pub fn member_plan<'p>(plan: &'p ObjectPlan, key: &str) -> Option<&'p ValuePlan> {
    plan.fields()
        .iter()
        .find(|(k, _)| **k == *key)
        .map(|(_, p)| p)
        .or(plan.others())
}

fn transform_leaf(t: &Transform, v: &J) -> J {
    let value = match v {
        J::Str(s) => crate::redact::transform::Scalar::Str(std::borrow::Cow::Borrowed(s)),
        J::Num(t) => crate::redact::transform::Scalar::Num(t),
        _ => crate::redact::transform::Scalar::Other,
    };
    let mut out = Vec::new();
    crate::redact::transform::write(t, &value, &mut out);
    // A transform that does not write JSON is a finding of its own.
    match parse_strict(&out) {
        Ok(v) => v,
        Err(e) => unreachable_json(&out, &e),
    }
}

/// True if `v` is or holds an object.
pub fn holds_object(v: &J) -> bool {
    match v {
        J::Obj(_) => true,
        J::Arr(items) => items.iter().any(holds_object),
        _ => false,
    }
}

/// `plan` applied to `v`; `None`: dropped.
fn apply(plan: &ValuePlan, v: &J) -> Option<J> {
    match plan {
        ValuePlan::Drop => None,
        ValuePlan::Keep => Some(v.clone()),
        ValuePlan::KeepScalar => Some(if holds_object(v) { J::Null } else { v.clone() }),
        ValuePlan::Transform(t) => Some(transform_leaf(t, v)),
        ValuePlan::Object(o) => match v {
            J::Obj(members) => Some(J::Obj(apply_members(o, members))),
            _ => None,
        },
        ValuePlan::Array(p) => match v {
            J::Arr(items) => Some(J::Arr(items.iter().filter_map(|i| apply(p, i)).collect())),
            _ => None,
        },
    }
}

fn apply_members(plan: &ObjectPlan, members: &[(String, J)]) -> Vec<(String, J)> {
    members
        .iter()
        .filter_map(|(k, v)| {
            let p = member_plan(plan, k)?;
            Some((k.clone(), apply(p, v)?))
        })
        .collect()
}

/// The subject id at a key path: a non-empty string's contents or an integer's digits.
fn field_id(record: &J, path: &[Box<str>]) -> Option<String> {
    let mut at = record;
    for key in path {
        at = at.get(key)?;
    }
    match at {
        J::Str(s) if !s.is_empty() => Some(s.clone()),
        J::Num(t) if !t.contains(['.', 'e', 'E']) => Some(t.clone()),
        _ => None,
    }
}

pub fn subject_of(c: &Case, record: &J) -> Result<String, Refusal> {
    match &c.subject {
        SubjectAt::Param(_) => c.path_subject.clone().ok_or(Refusal::NoSubject),
        SubjectAt::Field(path) => field_id(record, path).ok_or(Refusal::NoSubject),
        SubjectAt::ParamAndField(_, path) => {
            let id = field_id(record, path).ok_or(Refusal::NoSubject)?;
            if c.path_subject
                .as_deref()
                .is_some_and(|path| crate::redact::subject::same_subject(path, &id))
            {
                Ok(id)
            } else {
                Err(Refusal::SubjectMismatch)
            }
        }
    }
}

/// The plan a record is written with; `None`: left out.
fn record_plan<'c>(
    c: &'c Case,
    record: &J,
    single: bool,
    counts: &mut Counts,
) -> Result<Option<&'c ValuePlan>, Refusal> {
    let subject = subject_of(c, record)?;
    if c.consent.granted(&subject) {
        counts.kept += 1;
        return Ok(Some(&c.view.record));
    }
    match c.without_basis {
        WithoutBasis::Omit if !single => {
            counts.omitted += 1;
            Ok(None)
        }
        WithoutBasis::Omit | WithoutBasis::Refuse => Err(Refusal::NoLawfulBasis),
        WithoutBasis::NonPersonal => {
            counts.reduced += 1;
            Ok(Some(&c.view.non_personal))
        }
    }
}

fn records_ref(c: &Case, v: &J, counts: &mut Counts) -> Result<J, Refusal> {
    let J::Arr(items) = v else {
        return Err(Refusal::Shape);
    };
    let mut out = Vec::new();
    for item in items {
        if let Some(plan) = record_plan(c, item, false, counts)? {
            out.extend(apply(plan, item));
        }
    }
    Ok(J::Arr(out))
}

/// An envelope object on the way to the records: members off the path go through the envelope
/// plan; the member on the path is written whatever the plan says (an object on the way is
/// minimised by the plan's object plan for it, if any), and the records are handled per record.
fn envelope_ref(
    c: &Case,
    plan: Option<&ObjectPlan>,
    members: &[(String, J)],
    path: &[Box<str>],
    counts: &mut Counts,
) -> Result<J, Refusal> {
    let mut out = Vec::new();
    for (k, v) in members {
        if *k == *path[0] {
            if path.len() == 1 {
                out.push((k.clone(), records_ref(c, v, counts)?));
            } else {
                let J::Obj(inner) = v else {
                    return Err(Refusal::Shape);
                };
                let inner_plan = plan.and_then(|p| match member_plan(p, k) {
                    Some(ValuePlan::Object(o)) => Some(o),
                    _ => None,
                });
                out.push((
                    k.clone(),
                    envelope_ref(c, inner_plan, inner, &path[1..], counts)?,
                ));
            }
        } else if let Some(kept) = plan
            .and_then(|p| member_plan(p, k))
            .and_then(|p| apply(p, v))
        {
            out.push((k.clone(), kept));
        }
    }
    Ok(J::Obj(out))
}

pub fn reference(c: &Case, body: &[u8]) -> Result<(J, Counts), Refusal> {
    let root = parse_strict(body).map_err(Refusal::Unreadable)?;
    let mut counts = Counts::default();
    let out = match &c.records {
        RecordsAt::Body => match record_plan(c, &root, true, &mut counts)? {
            // A single record that the plan drops whole is still an answer: `{}`.
            Some(plan) => apply(plan, &root).unwrap_or(J::Obj(Vec::new())),
            None => return Err(Refusal::NoLawfulBasis),
        },
        RecordsAt::List(path) if path.is_empty() => records_ref(c, &root, &mut counts)?,
        RecordsAt::List(path) => match &root {
            J::Obj(members) => envelope_ref(c, Some(&c.view.envelope), members, path, &mut counts)?,
            _ => return Err(Refusal::Shape),
        },
    };
    Ok((out, counts))
}

fn unreachable_json(out: &[u8], e: &str) -> J {
    panic!(
        "a transform wrote invalid JSON ({e}): {}",
        String::from_utf8_lossy(out)
    )
}

/// Deepest nesting of arrays and objects in `v` (a scalar: 0).
pub fn depth(v: &J) -> usize {
    match v {
        J::Arr(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        J::Obj(members) => 1 + members.iter().map(|(_, m)| depth(m)).max().unwrap_or(0),
        _ => 0,
    }
}

// ------------------------------------------------------------------------------------------
// Driving the engine.

/// What the engine made of a body.
pub struct Run {
    pub result: Result<Counts, RedactError>,
    /// Everything taken from the engine, including output written before a refusal.
    pub output: Vec<u8>,
}

/// Answers the engine's pending consent questions with `consent` until none are left.
fn drain(r: &mut Redactor, consent: Consent) -> Result<(), RedactError> {
    while r.has_pending() {
        let lawful: Vec<bool> = r.pending_subjects().map(|s| consent.granted(s)).collect();
        r.resolve(&lawful)?;
    }
    Ok(())
}

/// The case's body, in `chunks`, through the streaming engine under `limits`, consent
/// resolved batch by batch as the engine asks for it.
pub fn run_engine(c: &Case, chunks: &[&[u8]], limits: Limits) -> Run {
    let mut r = Redactor::new(
        &c.records,
        &c.subject,
        c.without_basis,
        Arc::new(c.view.clone()),
        c.path_subject.as_deref(),
        limits,
    );
    let mut output = Vec::new();
    let mut go = || -> Result<Counts, RedactError> {
        for chunk in chunks {
            // Both ways of pushing, mixed by the chunks' lengths: copied, or kept and read in
            // place.
            let pushed = if chunk.len() % 3 == 0 {
                r.push(chunk)
            } else {
                r.push_bytes(bytes::Bytes::copy_from_slice(chunk))
            };
            let pushed = pushed.and_then(|()| drain(&mut r, c.consent));
            output.extend(r.take_output());
            pushed?;
        }
        let finished = r.finish().and_then(|()| drain(&mut r, c.consent));
        output.extend(r.take_output());
        finished?;
        assert!(
            r.is_complete(),
            "finish succeeded but the body is not complete"
        );
        Ok(r.counts())
    };
    let result = go();
    Run { result, output }
}
