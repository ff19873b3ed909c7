//! Differential checks of the gateway: the entry points of the fuzz targets in `fuzz/`, the
//! strict DOM reference of the redaction engine they share with the property tests, and the
//! property tests themselves (`props.rs`, under `cfg(test)`).
//!
//! Compiled only under `cfg(fuzzing)` (set by `cargo fuzz`) and `cfg(test)`, so that the
//! property tests run with a plain `cargo test` and clippy sees the fuzz entry points too.
//!
//! Each entry point takes the fuzzer's bytes and panics on a finding: a panic of the code under
//! test, or a property that does not hold.

#![allow(
    clippy::panic,
    reason = "the fuzz entry points report a finding by panicking"
)]

#[cfg(test)]
mod props;
mod reference;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use crate::policy::CompiledPolicy;
use crate::policy::compiled::{
    ObjectPlan, RecordsAt, SubjectAt, Transform, ValuePlan, View, WithoutBasis,
};
use crate::policy::matcher::Matched;
use crate::proxy::path::{NormalPath, normalise};
use crate::redact::{Limits, RedactError};

use reference::{Case, Consent, parse_strict, run_engine};

// ------------------------------------------------------------------------------------------
// policy_compile

/// One or two policy files (split at the first NUL byte) into the compiler: it returns a
/// policy or errors, never panics; errors render.
pub fn policy_compile(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Secrets may name files: keep the fuzzer away from devices that never end.
    if ["/dev", "/proc", "/sys"].iter().any(|d| text.contains(d)) {
        return;
    }
    // A directory that does not exist: relative secret files are not found.
    let dir = PathBuf::from("/nonexistent-consentry-fuzz");
    let sources: Vec<(PathBuf, String)> = match text.split_once('\0') {
        Some((a, b)) => vec![
            (dir.join("a.yaml"), a.to_owned()),
            (dir.join("b.yaml"), b.to_owned()),
        ],
        None => vec![(dir.join("policy.yaml"), text.to_owned())],
    };
    match crate::policy::compile_sources(&sources) {
        Ok(policy) => {
            assert!(!policy.revision.is_empty());
        }
        Err(errors) => {
            assert!(!errors.errors.is_empty(), "an error result without errors");
            let _ = errors.render();
        }
    }
}

// ------------------------------------------------------------------------------------------
// path_normalise

/// The example policy of the repository (its routes are what paths are matched against).
fn example_policy() -> &'static CompiledPolicy {
    static POLICY: OnceLock<CompiledPolicy> = OnceLock::new();
    POLICY.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies/examples");
        match crate::policy::load_dir(&dir) {
            Ok(policy) => policy,
            Err(e) => panic!("the example policy does not compile:\n{}", e.render()),
        }
    })
}

/// What a path matches in the example policy, comparable.
fn matched(policy: &CompiledPolicy, segments: &[String]) -> (Option<String>, Vec<String>, u8) {
    match policy.match_path(&http::Method::GET, segments) {
        Matched::Route(_, route, params) => (
            Some(route.name.to_string()),
            params.into_iter().map(str::to_owned).collect(),
            0,
        ),
        Matched::Passthrough => (None, Vec::new(), 1),
        Matched::None => (None, Vec::new(), 2),
    }
}

/// A path into the normaliser: no panic; the normal form is its own normal form; it holds no
/// empty, `.` or `..` segment, no separator or NUL, raw or encoded; and it matches the same
/// route of the example policy as its renormalised form.
pub fn path_normalise(data: &[u8]) {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    check_path(path);
    if !path.starts_with('/') {
        check_path(&format!("/{path}"));
    }
}

fn check_path(path: &str) {
    let Ok(normal) = normalise(path) else {
        return;
    };
    let NormalPath { text, segments } = &normal;
    assert!(text.starts_with('/'), "{path:?} -> {text:?}");
    let again = normalise(text);
    assert_eq!(
        again.as_ref(),
        Ok(&normal),
        "not idempotent: {path:?} -> {text:?}"
    );
    let inner: Vec<&str> = text.split('/').skip(1).collect();
    let last = inner.len().saturating_sub(1);
    for (i, seg) in inner.iter().enumerate() {
        assert!(
            !seg.is_empty() || i == last,
            "empty segment: {path:?} -> {text:?}"
        );
        assert!(
            *seg != "." && *seg != "..",
            "dot segment: {path:?} -> {text:?}"
        );
    }
    let upper = text.to_ascii_uppercase();
    for bad in ["//", "/./", "/../", "%2F", "%5C", "%00", "\\", "\0"] {
        assert!(!upper.contains(bad), "{bad:?} in {path:?} -> {text:?}");
    }
    assert!(
        !text.ends_with("/.") && !text.ends_with("/.."),
        "{path:?} -> {text:?}"
    );
    for seg in segments {
        assert!(
            !seg.contains(['/', '\\', '\0']),
            "separator in segment {seg:?}: {path:?}"
        );
    }
    if let Ok(again) = again {
        let policy = example_policy();
        assert_eq!(
            matched(policy, segments),
            matched(policy, &again.segments),
            "{path:?} -> {text:?}"
        );
    }
}

// ------------------------------------------------------------------------------------------
// engine_differential

/// Member names of records, envelopes and plans.
const KEYS: &[&str] = &[
    "id",
    "properties",
    "results",
    "paging",
    "email",
    "firstname",
    "city",
    "phone",
    "hs_object_id",
    "data",
    "items",
    "name",
    "a",
    "é",
    "k\"q",
    "",
    "next",
    "createdAt",
];

fn transform_of(b: u8) -> Transform {
    match b % 12 {
        0 => Transform::Null,
        1 => Transform::Constant("\"x\"".into()),
        2 => Transform::Constant("{\"a\":[1,null]}".into()),
        3 => Transform::Mask {
            first: 0,
            last: 4,
            with: '*',
        },
        4 => Transform::Mask {
            first: usize::from(b >> 6),
            last: usize::from((b >> 4) & 3),
            with: 'é',
        },
        5 => Transform::Hash {
            key: Arc::from(&b"pseudonym-key"[..]),
        },
        6 => Transform::DateToYear,
        7 => Transform::DateToMonth,
        8 => Transform::Prefix(usize::from(b >> 5)),
        9 => Transform::Range { width: 10 },
        10 => Transform::Range { width: 0 },
        _ => Transform::Range { width: u64::MAX },
    }
}

/// Reads plans from a few bytes; past their end, plans are `Keep`.
struct PlanBytes<'a> {
    bytes: &'a [u8],
}

impl PlanBytes<'_> {
    fn next(&mut self) -> Option<u8> {
        let (&b, rest) = self.bytes.split_first()?;
        self.bytes = rest;
        Some(b)
    }

    fn plan(&mut self, depth: usize) -> ValuePlan {
        let Some(b) = self.next() else {
            return ValuePlan::Keep;
        };
        match b % 8 {
            0 => ValuePlan::Drop,
            1 => ValuePlan::Keep,
            2 => ValuePlan::KeepScalar,
            3 => ValuePlan::Transform(transform_of(b >> 3)),
            4..=6 if depth < 3 => ValuePlan::Object(self.object(depth + 1)),
            7 if depth < 3 => ValuePlan::Array(Box::new(self.plan(depth + 1))),
            _ => ValuePlan::Keep,
        }
    }

    fn object(&mut self, depth: usize) -> ObjectPlan {
        let head = self.next().unwrap_or(0);
        let mut fields: Vec<(Box<str>, ValuePlan)> = Vec::new();
        for _ in 0..(head % 8) {
            let key = KEYS[usize::from(self.next().unwrap_or(0)) % KEYS.len()];
            fields.push((key.into(), self.plan(depth)));
        }
        let others = (head & 0x80 != 0).then(|| Box::new(self.plan(depth)));
        ObjectPlan::new(fields, others)
    }

    fn record_plan(&mut self) -> ValuePlan {
        match self.next() {
            Some(b) if b % 4 == 0 => self.plan(1),
            _ => ValuePlan::Object(self.object(1)),
        }
    }
}

/// The fuzz input, decoded.
struct Input<'a> {
    case: Case,
    batch: usize,
    cuts: Vec<usize>,
    body: &'a [u8],
}

/// Layout: `[setup, consent, plan_len, cuts, plan bytes.., cut bytes (2 each).., body..]`.
fn decode(data: &[u8]) -> Option<Input<'_>> {
    let (&[setup, consent, plan_len, cuts], rest) = data.split_first_chunk::<4>()?;
    let plan_len = usize::from(plan_len % 32).min(rest.len());
    let (plan, rest) = rest.split_at(plan_len);
    let ncuts = usize::from(cuts % 5);
    let cut_len = (2 * ncuts).min(rest.len());
    let (cut_bytes, body) = rest.split_at(cut_len);
    let records = match setup % 4 {
        0 => RecordsAt::Body,
        1 => RecordsAt::List(Vec::new()),
        2 => RecordsAt::List(vec!["results".into()]),
        _ => RecordsAt::List(vec!["data".into(), "items".into()]),
    };
    let id = vec![Box::<str>::from("id")];
    let subject = match (setup >> 2) % 5 {
        0 => SubjectAt::Param(0),
        1 | 2 => SubjectAt::Field(id),
        3 => SubjectAt::Field(vec!["properties".into(), "hs_object_id".into()]),
        _ => SubjectAt::ParamAndField(0, id),
    };
    let without_basis = match (setup >> 5) % 3 {
        0 => WithoutBasis::Omit,
        1 => WithoutBasis::Refuse,
        _ => WithoutBasis::NonPersonal,
    };
    let path_subject = [None, Some("1000"), Some("1001"), Some("abc")][usize::from(consent >> 6)]
        .map(str::to_owned);
    let mut pb = PlanBytes { bytes: plan };
    let view = View {
        record: pb.record_plan(),
        non_personal: pb.record_plan(),
        envelope: pb.object(1),
    };
    let mut cut_points: Vec<usize> = cut_bytes
        .chunks(2)
        .map(|c| {
            usize::from(u16::from_le_bytes([c[0], *c.get(1).unwrap_or(&0)])) % (body.len() + 1)
        })
        .collect();
    cut_points.sort_unstable();
    Some(Input {
        case: Case {
            records,
            subject,
            without_basis,
            view,
            path_subject,
            consent: Consent {
                seed: u64::from(consent & 0x0f),
                threshold: u64::from((consent >> 4) & 3) + u64::from(consent & 0x30 == 0x30),
            },
        },
        batch: usize::from(cuts >> 3) % 4 + 1,
        cuts: cut_points,
        body,
    })
}

const MAX_DEPTH: usize = 16;

/// The engine's limits in the fuzz target: a nesting limit low enough that the fuzzer reaches
/// it.
fn limits(batch: usize) -> Limits {
    Limits {
        batch,
        max_depth: MAX_DEPTH,
        ..Limits::default()
    }
}

/// A view and a body: the streaming engine, fed in chunks and whole, against the DOM reference.
/// Same parsed output and counts, or both refuse; chunked output is the whole-body output.
pub fn engine_differential(data: &[u8]) {
    let Some(input) = decode(data) else {
        return;
    };
    let Input {
        case,
        batch,
        cuts,
        body,
    } = input;
    let show = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let expected = reference::reference(&case, body);
    let whole = run_engine(&case, &[body], limits(Limits::default().batch));
    match (&expected, &whole.result) {
        (Ok((tree, counts)), Ok(got_counts)) => {
            let got = parse_strict(&whole.output);
            assert_eq!(
                got.as_ref().ok(),
                Some(tree),
                "output differs\nbody: {}\noutput: {}",
                show(body),
                show(&whole.output)
            );
            assert_eq!(counts, got_counts, "counts differ\nbody: {}", show(body));
        }
        (Err(_), Err(_)) => {}
        // The reference allows far deeper nesting (`MAX_PARSE_DEPTH`) than the engine here: the
        // engine may refuse a body nested deeper than its limit.
        (Ok(_), Err(RedactError::Unreadable(crate::redact::frame::FrameError::TooDeep)))
            if parse_strict(body).is_ok_and(|t| reference::depth(&t) > MAX_DEPTH) => {}
        (e, g) => panic!(
            "reference {e:?} but engine {g:?}\ncase: {case:?}\nbody: {}\noutput: {}",
            show(body),
            show(&whole.output)
        ),
    }
    let mut chunks = Vec::with_capacity(cuts.len() + 1);
    let mut from = 0;
    for p in cuts {
        chunks.push(&body[from..p]);
        from = p;
    }
    chunks.push(&body[from..]);
    let chunked = run_engine(&case, &chunks, limits(batch));
    assert_eq!(
        chunked.result.is_ok(),
        whole.result.is_ok(),
        "chunked {:?} whole {:?}\nbody: {}",
        chunked.result,
        whole.result,
        show(body)
    );
    if whole.result.is_ok() {
        assert_eq!(
            show(&chunked.output),
            show(&whole.output),
            "chunked output differs"
        );
        assert_eq!(chunked.result, whole.result);
    }
}
