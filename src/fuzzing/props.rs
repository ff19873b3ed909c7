//! Property tests of the streaming redaction engine ([`crate::redact`]).
//!
//! The engine is checked against the strict DOM reference of [`super::reference`], the one the
//! differential fuzz target uses too. This module adds what only the property tests need: the
//! generators of views, cases and bodies, and a writer of JSON in a random but valid style.
//!
//! Properties:
//! - the engine's output equals the reference's, or both refuse; any chunking of the body and any
//!   consent batch size give byte-identical output;
//! - no value that the view does not keep reaches the output, even in the output written before a
//!   refusal;
//! - a Keep/Drop-only view applied twice equals the view applied once;
//! - the output is strict JSON without duplicate keys;
//! - a body cut short is refused, unless only trailing whitespace was cut.

use proptest::prelude::*;
use proptest::sample::Index;

use super::reference::{
    Case, Consent, J, Run, holds_object, member_plan, parse_strict, reference, run_engine,
    subject_of,
};
use crate::policy::compiled::{
    ObjectPlan, RecordsAt, SubjectAt, Transform, ValuePlan, View, WithoutBasis,
};
use crate::redact::{Counts, Limits};

// ------------------------------------------------------------------------------------------
// Writing JSON: compact and plain, or in a random but valid style (whitespace, \u escapes,
// surrogate pairs, `\/`), driven by a seed.

struct Style(u64);

impl Style {
    fn next(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.0 | 1;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32
    }

    fn ws(&mut self, out: &mut String) {
        const WS: [&str; 4] = [" ", "\n", "\t ", "\r\n  "];
        if self.next().is_multiple_of(4) {
            out.push_str(WS[(self.next() % 4) as usize]);
        }
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.next().is_multiple_of(one_in)
    }
}

fn write_str(s: &str, style: &mut Option<Style>, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        let fancy = style.as_mut().is_some_and(|st| st.chance(4));
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' if !fancy => out.push_str("\\t"),
            '/' if fancy => out.push_str("\\/"),
            c if (c as u32) < 0x20 || fancy => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{:04x}", u));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_json(v: &J, style: &mut Option<Style>, out: &mut String) {
    let ws = |style: &mut Option<Style>, out: &mut String| {
        if let Some(st) = style.as_mut() {
            st.ws(out);
        }
    };
    match v {
        J::Null => out.push_str("null"),
        J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        J::Num(t) => out.push_str(t),
        J::Str(s) => write_str(s, style, out),
        J::Arr(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                ws(style, out);
                write_json(item, style, out);
                ws(style, out);
            }
            out.push(']');
        }
        J::Obj(members) => {
            out.push('{');
            for (i, (k, item)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                ws(style, out);
                write_str(k, style, out);
                ws(style, out);
                out.push(':');
                ws(style, out);
                write_json(item, style, out);
                ws(style, out);
            }
            out.push('}');
        }
    }
}

fn to_text(v: &J) -> String {
    let mut out = String::new();
    write_json(v, &mut None, &mut out);
    out
}

fn to_styled_text(v: &J, seed: u64) -> String {
    let mut style = Some(Style(seed));
    let mut out = String::new();
    if let Some(st) = style.as_mut() {
        st.ws(&mut out);
    }
    write_json(v, &mut style, &mut out);
    if let Some(st) = style.as_mut() {
        st.ws(&mut out);
    }
    out
}

// ------------------------------------------------------------------------------------------
// Driving the engine (see `reference::run_engine`).

/// The engine's default limits, but for the consent batch size.
fn batched(batch: usize) -> Limits {
    Limits {
        batch,
        ..Limits::default()
    }
}

fn run_whole(c: &Case, body: &[u8]) -> Run {
    run_engine(c, &[body], Limits::default())
}

/// Splits `body` at the given points (sorted; repeated points give empty chunks).
fn split<'b>(body: &'b [u8], cuts: &[Index]) -> Vec<&'b [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|i| i.index(body.len() + 1)).collect();
    points.sort_unstable();
    let mut chunks = Vec::new();
    let mut from = 0;
    for p in points {
        chunks.push(&body[from..p]);
        from = p;
    }
    chunks.push(&body[from..]);
    chunks
}

// ------------------------------------------------------------------------------------------
// Generators.

/// Member names of records, envelopes and plans: plain, escaped when written, unicode, and the
/// names of the records path, so that they also turn up where they mean nothing.
const KEYS: &[&str] = &[
    "id",
    "name",
    "email",
    "properties",
    "a",
    "b",
    "é",
    "k\"q",
    "back\\slash",
    "tab\tkey",
    "x/y",
    "\u{1F600}",
    "",
    "ctl\u{1}",
    "results",
    "data",
    "items",
    "paging",
    "total",
];

const STRINGS: &[&str] = &[
    "",
    "ada@example.com",
    "+1-555-123-4567",
    "1987-05-12",
    "1987-05",
    "May 1987",
    "75012",
    "]}\"{[",
    "\\",
    "\"",
    "line\nbreak",
    "tab\there",
    "ünïcødé",
    "日本語",
    "\u{1F600}\u{1F680}",
    "\u{7f}\u{1}\u{1f}",
    "</script>",
    "1000",
    "results",
];

const NUMBERS: &[&str] = &[
    "0",
    "-0",
    "1",
    "-17",
    "1234",
    "12.5",
    "-0.25",
    "1e3",
    "1E-2",
    "-1.5e+3",
    "12.50",
    "1e400",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775809",
    "123456789012345678901234567890",
    "0.1000000000000000055511151231257827",
];

/// Bytes that mutations write: structure, string and number syntax, controls, invalid UTF-8.
const MUTATION_BYTES: &[u8] = b"{}[]\":,\\ /0-.eE+tfnu\x00\x1f\x7f\xff\xc3\xa9\x80a";

fn key() -> impl Strategy<Value = String> {
    prop::sample::select(KEYS).prop_map(str::to_owned)
}

fn number() -> impl Strategy<Value = J> {
    prop_oneof![
        2 => prop::sample::select(NUMBERS).prop_map(|n| J::Num(n.to_owned())),
        1 => any::<i64>().prop_map(|n| J::Num(n.to_string())),
        1 => any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| J::Num(format!("{f:?}"))),
    ]
}

fn string() -> impl Strategy<Value = J> {
    prop_oneof![
        3 => prop::sample::select(STRINGS).prop_map(|s| J::Str(s.to_owned())),
        1 => any::<String>().prop_map(J::Str),
    ]
}

fn leaf() -> impl Strategy<Value = J> {
    prop_oneof![
        1 => Just(J::Null),
        1 => any::<bool>().prop_map(J::Bool),
        3 => number(),
        4 => string(),
    ]
}

fn object_of(members: Vec<(String, J)>) -> J {
    let mut out: Vec<(String, J)> = Vec::new();
    for (k, v) in members {
        if !out.iter().any(|(o, _)| *o == k) {
            out.push((k, v));
        }
    }
    J::Obj(out)
}

fn value() -> impl Strategy<Value = J> {
    leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(J::Arr),
            prop::collection::vec((key(), inner), 0..4).prop_map(object_of),
        ]
    })
}

/// A subject id: usually a string or an integer, sometimes missing, empty or of another type.
fn id() -> impl Strategy<Value = Option<J>> {
    prop_oneof![
        16 => prop::sample::select(&["1000", "1001", "1002", "abc", "1003", "é"][..])
            .prop_map(|s| Some(J::Str(s.to_owned()))),
        16 => prop::sample::select(
            &["1000", "1001", "-5", "0", "9223372036854775807", "18446744073709551615"][..]
        )
        .prop_map(|n| Some(J::Num(n.to_owned()))),
        1 => Just(None),
        2 => prop_oneof![
            Just(J::Null),
            Just(J::Str(String::new())),
            Just(J::Num("1.5".into())),
            Just(J::Num("1e3".into())),
            Just(J::Bool(true)),
            Just(J::Arr(vec![J::Num("1000".into())])),
            Just(J::Obj(vec![("id".into(), J::Num("1000".into()))])),
        ]
        .prop_map(Some),
    ]
}

fn record() -> impl Strategy<Value = J> {
    let object = (
        prop::collection::vec((key(), value()), 0..5),
        id(),
        prop::option::weighted(0.8, prop::collection::vec((key(), value()), 0..4)),
        any::<Index>(),
    )
        .prop_map(|(members, id, properties, at)| {
            let mut members: Vec<(String, J)> =
                members.into_iter().filter(|(k, _)| k != "id").collect();
            if let Some(mut p) = properties {
                // The id is often repeated in the properties (`$.properties.id`); ids come
                // from `id()` only (see `integer_ids_beyond_u64_are_read`).
                p.retain(|(k, _)| k != "id");
                if let Some(id) = id.clone().filter(|_| at.index(8) > 0) {
                    p.insert(0, ("id".into(), id));
                }
                members.retain(|(k, _)| k != "properties");
                members.push(("properties".into(), object_of(p)));
            }
            if let Some(id) = id {
                members.insert(at.index(members.len() + 1), ("id".into(), id));
            }
            object_of(members)
        });
    prop_oneof![19 => object, 1 => value()]
}

/// Envelope members around the records: paging, totals, random members, never the records key
/// of that level.
fn envelope_members(records_key: &'static str) -> impl Strategy<Value = Vec<(String, J)>> {
    (
        prop::collection::vec((key(), value()), 0..4),
        prop::option::of(string()),
        prop::option::of(number()),
    )
        .prop_map(move |(members, after, total)| {
            let mut out: Vec<(String, J)> = Vec::new();
            if let Some(after) = after {
                let next = J::Obj(vec![
                    ("after".into(), after),
                    ("link".into(), J::Str("?after=x".into())),
                ]);
                out.push(("paging".into(), J::Obj(vec![("next".into(), next)])));
            }
            if let Some(total) = total {
                out.push(("total".into(), total));
            }
            out.extend(members.into_iter().filter(|(k, _)| k != records_key));
            match object_of(out) {
                J::Obj(members) => members,
                _ => Vec::new(),
            }
        })
}

/// Records as lists usually hold them: copies of one record, each as it is or with a member
/// left out, repeated or moved (so that what the engine learns of one record's member order is
/// right for the next, or wrong in one place).
fn similar_records() -> impl Strategy<Value = J> {
    (
        record(),
        prop::collection::vec((0u8..4, any::<Index>(), any::<Index>()), 1..6),
    )
        .prop_map(|(base, changes)| {
            let records = changes
                .into_iter()
                .map(|(change, at, to)| {
                    let J::Obj(mut members) = base.clone() else {
                        return base.clone();
                    };
                    if !members.is_empty() {
                        let i = at.index(members.len());
                        match change {
                            1 => {
                                members.remove(i);
                            }
                            2 => members.insert(
                                to.index(members.len() + 1),
                                (members[i].0.clone(), J::Num("7".into())),
                            ),
                            3 => {
                                let m = members.remove(i);
                                members.insert(to.index(members.len() + 1), m);
                            }
                            _ => {}
                        }
                    }
                    J::Obj(members)
                })
                .collect();
            J::Arr(records)
        })
}

/// The records value: usually an array of records, rarely of another shape.
fn records_value() -> impl Strategy<Value = J> {
    prop_oneof![
        15 => prop::collection::vec(record(), 0..6).prop_map(J::Arr),
        15 => similar_records(),
        1 => leaf(),
        1 => Just(J::Obj(Vec::new())),
    ]
}

fn with_member(mut members: Vec<(String, J)>, key: &str, v: Option<J>, at: Index) -> J {
    if let Some(v) = v {
        members.insert(at.index(members.len() + 1), (key.into(), v));
    }
    J::Obj(members)
}

/// A body for the records location, as a tree (which may hold duplicate keys).
fn body_for(records: &RecordsAt) -> BoxedStrategy<J> {
    // The records key is present 19 times in 20.
    let present = || prop::bool::weighted(0.95);
    match records {
        RecordsAt::Body => record().boxed(),
        RecordsAt::List(path) if path.is_empty() => records_value().boxed(),
        RecordsAt::List(path) if path.len() == 1 => (
            envelope_members("results"),
            records_value(),
            present(),
            any::<Index>(),
        )
            .prop_map(|(env, recs, present, at)| {
                with_member(env, "results", present.then_some(recs), at)
            })
            .boxed(),
        RecordsAt::List(_) => (
            envelope_members("data"),
            envelope_members("items"),
            records_value(),
            present(),
            present(),
            any::<Index>(),
            any::<Index>(),
        )
            .prop_map(|(env, inner, recs, p1, p2, at1, at2)| {
                let data = with_member(inner, "items", p2.then_some(recs), at2);
                with_member(env, "data", p1.then_some(data), at1)
            })
            .boxed(),
    }
}

/// Duplicates one member of the `n`-th object of the tree (counting in pre-order), if any.
fn duplicate_member(v: &mut J, n: &mut usize) -> bool {
    match v {
        J::Obj(members) => {
            if *n == 0 && !members.is_empty() {
                let copy = members[0].clone();
                members.push((copy.0, J::Num("7".into())));
                return true;
            }
            *n = n.saturating_sub(1);
            members.iter_mut().any(|(_, m)| duplicate_member(m, n))
        }
        J::Arr(items) => items.iter_mut().any(|i| duplicate_member(i, n)),
        _ => false,
    }
}

fn transform() -> impl Strategy<Value = Transform> {
    prop_oneof![
        Just(Transform::Null),
        prop::sample::select(&["\"x\"", "42", "{\"a\":[1,null]}", "null", "\"é\\n\""][..])
            .prop_map(|c| Transform::Constant(c.into())),
        (
            0usize..4,
            0usize..4,
            prop::sample::select(&['*', 'é', '"', '\\'][..])
        )
            .prop_map(|(first, last, with)| Transform::Mask { first, last, with }),
        Just(Transform::Hash {
            key: std::sync::Arc::from(&b"pseudonym-key"[..])
        }),
        Just(Transform::DateToYear),
        Just(Transform::DateToMonth),
        (0usize..6).prop_map(Transform::Prefix),
        prop::sample::select(&[0u64, 1, 7, 10, 1000, u64::MAX][..])
            .prop_map(|width| Transform::Range { width }),
    ]
}

/// An object plan over the key pool: fields sorted by name, optional wildcard.
fn object_plan_of(fields: Vec<(String, ValuePlan)>, others: Option<ValuePlan>) -> ObjectPlan {
    let fields = fields
        .into_iter()
        .map(|(k, p)| (k.into_boxed_str(), p))
        .collect();
    ObjectPlan::new(fields, others.map(Box::new))
}

fn plan_with(leaves: BoxedStrategy<ValuePlan>) -> BoxedStrategy<ValuePlan> {
    leaves
        .prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                3 => (
                    prop::collection::vec((key(), inner.clone()), 0..6),
                    prop::option::weighted(0.25, inner.clone()),
                )
                    .prop_map(|(f, o)| ValuePlan::Object(object_plan_of(f, o))),
                1 => inner.prop_map(|p| ValuePlan::Array(Box::new(p))),
            ]
        })
        .boxed()
}

fn any_plan() -> BoxedStrategy<ValuePlan> {
    plan_with(
        prop_oneof![
            2 => Just(ValuePlan::Keep),
            1 => Just(ValuePlan::KeepScalar),
            1 => Just(ValuePlan::Drop),
            2 => transform().prop_map(ValuePlan::Transform),
        ]
        .boxed(),
    )
}

fn keep_drop_plan() -> BoxedStrategy<ValuePlan> {
    plan_with(prop_oneof![2 => Just(ValuePlan::Keep), 1 => Just(ValuePlan::Drop)].boxed())
}

/// A record plan: mostly an object plan at the top.
fn record_plan_from(
    plan: impl Strategy<Value = ValuePlan> + Clone,
) -> impl Strategy<Value = ValuePlan> {
    prop_oneof![
        4 => (
            prop::collection::vec((key(), plan.clone()), 2..10),
            prop::option::weighted(0.3, plan.clone()),
        )
            .prop_map(|(f, o)| ValuePlan::Object(object_plan_of(f, o))),
        1 => plan,
    ]
}

fn envelope_plan_from(
    plan: impl Strategy<Value = ValuePlan> + Clone,
) -> impl Strategy<Value = ObjectPlan> {
    (
        prop::collection::vec((key(), plan.clone()), 0..6),
        prop::option::weighted(0.2, plan),
    )
        .prop_map(|(f, o)| object_plan_of(f, o))
}

fn view_from(plan: impl Strategy<Value = ValuePlan> + Clone) -> impl Strategy<Value = View> {
    (
        record_plan_from(plan.clone()),
        record_plan_from(plan.clone()),
        envelope_plan_from(plan),
    )
        .prop_map(|(record, non_personal, envelope)| View {
            record,
            non_personal,
            envelope,
        })
}

fn records_at() -> impl Strategy<Value = RecordsAt> {
    prop_oneof![
        Just(RecordsAt::Body),
        Just(RecordsAt::List(Vec::new())),
        Just(RecordsAt::List(vec!["results".into()])),
        Just(RecordsAt::List(vec!["data".into(), "items".into()])),
    ]
}

fn subject_at() -> impl Strategy<Value = SubjectAt> {
    let id_path = prop_oneof![
        3 => Just(vec![Box::<str>::from("id")]),
        1 => Just(vec![Box::<str>::from("properties"), Box::<str>::from("id")]),
    ];
    prop_oneof![
        1 => Just(SubjectAt::Param(0)),
        4 => id_path.clone().prop_map(SubjectAt::Field),
        1 => id_path.prop_map(|p| SubjectAt::ParamAndField(0, p)),
    ]
}

fn without_basis() -> impl Strategy<Value = WithoutBasis> {
    prop_oneof![
        Just(WithoutBasis::Omit),
        Just(WithoutBasis::Refuse),
        Just(WithoutBasis::NonPersonal),
    ]
}

fn consent() -> impl Strategy<Value = Consent> {
    (any::<u64>(), 0u64..=4).prop_map(|(seed, threshold)| Consent { seed, threshold })
}

fn case_with(view: impl Strategy<Value = View>) -> impl Strategy<Value = Case> {
    (
        records_at(),
        subject_at(),
        without_basis(),
        view,
        prop::option::weighted(
            0.9,
            prop::sample::select(&["1000", "1001", "abc", "-5"][..]).prop_map(str::to_owned),
        ),
        consent(),
    )
        .prop_map(
            |(records, subject, without_basis, view, path_subject, consent)| Case {
                records,
                subject,
                without_basis,
                view,
                path_subject,
                consent,
            },
        )
}

/// A case, its body tree, and the seed of the body's writing style.
fn case_and_body(view: impl Strategy<Value = View>) -> impl Strategy<Value = (Case, J, u64)> {
    case_with(view).prop_flat_map(|c| {
        let body = body_for(&c.records);
        (
            Just(c),
            body,
            prop::option::weighted(0.1, any::<usize>()),
            any::<u64>(),
        )
            .prop_map(|(c, mut body, dup, seed)| {
                if let Some(mut n) = dup {
                    // Pick among the first few objects so that a duplicate usually lands.
                    n %= 4;
                    duplicate_member(&mut body, &mut n);
                }
                (c, body, seed)
            })
    })
}

// ------------------------------------------------------------------------------------------
// Properties.

fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        max_global_rejects: 100_000,
        ..ProptestConfig::default()
    }
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

proptest! {
    #![proptest_config(config())]

    /// The strict parser agrees with serde_json on the generated bodies (serde_json keeps the
    /// last of duplicate keys, so it is only an oracle for bodies without them).
    #[test]
    fn strict_parser_agrees_with_serde_json((_c, body, seed) in case_and_body(view_from(any_plan()))) {
        let text = to_styled_text(&body, seed);
        let ours = parse_strict(text.as_bytes());
        let theirs: Result<serde_json::Value, _> = serde_json::from_str(&text);
        // serde_json refuses numbers beyond f64 (`1e400`); RFC 8259 allows them.
        prop_assume!(!theirs.as_ref().is_err_and(|e| e.to_string().contains("out of range")));
        prop_assert_eq!(theirs.is_ok(), ours.is_ok() || ours.as_ref().is_err_and(|e| e.starts_with("duplicate")));
        if let Ok(tree) = ours {
            prop_assert_eq!(&tree, &body);
            let compact: serde_json::Value = serde_json::from_str(&to_text(&tree)).unwrap();
            prop_assert_eq!(compact, theirs.unwrap());
        }
    }

    /// (a) + (d): the engine's output is the reference's, strict JSON without duplicate keys;
    /// both refuse together; any chunking and any batch size give the same bytes.
    #[test]
    fn engine_matches_reference(
        (c, body, seed) in case_and_body(view_from(any_plan())),
        cuts in prop::collection::vec(any::<Index>(), 0..20),
        batch in 1usize..5,
    ) {
        let text = to_styled_text(&body, seed);
        let bytes = text.as_bytes();
        let expected = reference(&c, bytes);
        let whole = run_whole(&c, bytes);
        match (&expected, &whole.result) {
            (Ok((tree, counts)), Ok(got_counts)) => {
                let got = parse_strict(&whole.output);
                prop_assert!(got.is_ok(), "output is not strict JSON: {:?}: {}", got, show(&whole.output));
                prop_assert_eq!(got.as_ref().ok(), Some(tree), "body: {}\noutput: {}", text, show(&whole.output));
                prop_assert_eq!(counts, got_counts);
            }
            (Err(_), Err(_)) => {}
            (e, g) => prop_assert!(false, "reference {:?} but engine {:?}\nbody: {}\noutput: {}", e, g, text, show(&whole.output)),
        }
        let chunks = split(bytes, &cuts);
        let chunked = run_engine(&c, &chunks, batched(batch));
        prop_assert_eq!(chunked.result.is_ok(), whole.result.is_ok(), "chunked {:?} whole {:?}", chunked.result, whole.result);
        if whole.result.is_ok() {
            prop_assert_eq!(show(&chunked.output), show(&whole.output));
            prop_assert_eq!(chunked.result, whole.result);
        }
    }

    /// (a) on bodies with a few bytes inserted, removed or replaced: the engine accepts exactly
    /// what the strict reference accepts, with the same output.
    #[test]
    fn mutated_bodies_match_reference(
        (c, body, seed) in case_and_body(view_from(any_plan())),
        edits in prop::collection::vec((any::<Index>(), 0u8..3, prop::sample::select(MUTATION_BYTES)), 1..4),
        cuts in prop::collection::vec(any::<Index>(), 0..20),
    ) {
        let mut bytes = to_styled_text(&body, seed).into_bytes();
        for (at, op, byte) in edits {
            let i = at.index(bytes.len() + 1);
            match op {
                0 => bytes.insert(i, byte),
                1 if i < bytes.len() => {
                    bytes.remove(i);
                }
                _ if i < bytes.len() => bytes[i] = byte,
                _ => bytes.push(byte),
            }
        }
        let expected = reference(&c, &bytes);
        for run in [run_whole(&c, &bytes), run_engine(&c, &split(&bytes, &cuts), batched(3))] {
            match (&expected, &run.result) {
                (Ok((tree, _)), Ok(_)) => {
                    let got = parse_strict(&run.output);
                    prop_assert_eq!(got.as_ref().ok(), Some(tree));
                }
                (Err(_), Err(_)) => {}
                (e, g) => prop_assert!(false, "reference {:?} but engine {:?}\nbody: {:?}\noutput: {}", e, g, show(&bytes), show(&run.output)),
            }
        }
    }

    /// (b): every string the view does not keep as it is carries a unique marker; no marker of a
    /// value the view drops (or transforms) shows up in the output, not even in output written
    /// before a refusal.
    #[test]
    fn dropped_values_never_appear(
        (c, mut body, seed) in case_and_body(view_from(any_plan())),
        cuts in prop::collection::vec(any::<Index>(), 0..20),
        batch in 1usize..5,
    ) {
        let mut n = 0;
        mark_strings(&mut body, &mut n);
        let text = to_styled_text(&body, seed);
        let bytes = text.as_bytes();
        let mut released = Vec::new();
        released_markers(&c, &body, &mut released);
        for run in [run_whole(&c, bytes), run_engine(&c, &split(bytes, &cuts), batched(batch))] {
            let out = show(&run.output);
            for m in markers_in(&out) {
                prop_assert!(released.contains(&m), "marker {} leaked\nbody: {}\noutput: {}", m, text, out);
            }
        }
    }

    /// (c): a view of Keep and Drop only is idempotent: its output, redacted again, is the same.
    #[test]
    fn keep_drop_views_are_idempotent(
        (mut c, body, seed) in case_and_body(view_from(keep_drop_plan())),
    ) {
        // The subject comes from the path, so that dropping the id does not change the outcome.
        c.subject = SubjectAt::Param(0);
        c.path_subject = Some("1000".into());
        let text = to_styled_text(&body, seed);
        let once = run_whole(&c, text.as_bytes());
        if once.result.is_ok() {
            let twice = run_whole(&c, &once.output);
            prop_assert!(twice.result.is_ok(), "{:?}", twice.result);
            prop_assert_eq!(show(&twice.output), show(&once.output));
        }
    }

    /// (e): a body cut short is refused, unless only trailing whitespace was cut (then the output
    /// is the same as for the whole body).
    #[test]
    fn truncated_bodies_are_refused(
        (c, body, seed) in case_and_body(view_from(any_plan())),
        cuts in prop::collection::vec(any::<Index>(), 1..8),
        split_at in any::<Index>(),
    ) {
        let text = to_styled_text(&body, seed);
        let bytes = text.as_bytes();
        let whole = run_whole(&c, bytes);
        prop_assume!(whole.result.is_ok());
        for cut in cuts {
            let len = cut.index(bytes.len());
            let prefix = &bytes[..len];
            let only_ws = bytes[len..].iter().all(|b| b" \t\r\n".contains(b));
            // Also fed in two chunks, to cut through the framer's state at another place.
            let at = split_at.index(len + 1);
            for run in [run_whole(&c, prefix), run_engine(&c, &[&prefix[..at], &prefix[at..]], batched(2))] {
                if only_ws {
                    prop_assert!(run.result.is_ok(), "{:?}", run.result);
                    prop_assert_eq!(show(&run.output), show(&whole.output));
                } else if parse_strict(prefix).is_err() {
                    prop_assert!(run.result.is_err(), "truncated at {} of {}: {}", len, bytes.len(), show(prefix));
                }
                // Otherwise the prefix is itself a complete document (a number cut short).
            }
        }
    }
    /// Buffers and learnt member orders kept by a thread carry nothing from one body to the
    /// next: a body redacted after another, even one cut short or refused half-way, comes out
    /// as it does on a thread that never redacted anything.
    #[test]
    fn an_earlier_body_leaves_nothing_in_a_later_one(
        (first_case, mut first, first_seed) in case_and_body(view_from(any_plan())),
        (c, body, seed) in case_and_body(view_from(any_plan())),
        cut in any::<Index>(),
        split_at in any::<Index>(),
    ) {
        let mut n = 0;
        mark_strings(&mut first, &mut n);
        let first_text = to_styled_text(&first, first_seed);
        let first_bytes = first_text.as_bytes();
        let prefix = &first_bytes[..cut.index(first_bytes.len() + 1)];
        let at = split_at.index(prefix.len() + 1);
        let text = to_styled_text(&body, seed);
        let alone = {
            let (c, text) = (c.clone(), text.clone());
            std::thread::spawn(move || run_whole(&c, text.as_bytes()))
                .join()
                .map_err(|_| TestCaseError::fail("the engine panicked"))?
        };
        run_engine(&first_case, &[&prefix[..at], &prefix[at..]], batched(2));
        let after = run_whole(&c, text.as_bytes());
        prop_assert_eq!(&after.result, &alone.result);
        prop_assert_eq!(show(&after.output), show(&alone.output));
        prop_assert!(markers_in(&show(&after.output)).is_empty(), "{}", show(&after.output));
    }
}

/// Replaces every string value (ids excepted) by a unique marker `<secret-N>`.
fn mark_strings(v: &mut J, n: &mut usize) {
    match v {
        J::Str(s) => {
            *s = format!("<secret-{n}>");
            *n += 1;
        }
        J::Arr(items) => items.iter_mut().for_each(|i| mark_strings(i, n)),
        J::Obj(members) => {
            for (k, m) in members.iter_mut() {
                if k != "id" {
                    mark_strings(m, n);
                }
            }
        }
        J::Null | J::Bool(_) | J::Num(_) => {}
    }
}

fn markers_in(out: &str) -> Vec<String> {
    // Kept strings are copied with their escapes as the upstream wrote them: look for markers in
    // the decoded text, so that an escaped spelling cannot hide one.
    let decoded = decode_escapes(out);
    let mut found = Vec::new();
    let mut rest = decoded.as_str();
    while let Some(i) = rest.find("<secret-") {
        let tail = &rest[i..];
        match tail.find('>') {
            Some(end) => found.push(tail[..=end].to_owned()),
            None => found.push(tail.to_owned()),
        }
        rest = &rest[i + 1..];
    }
    found
}

/// `text` with every JSON escape (`\n`, `\u003e`, surrogate pairs) replaced by what it stands
/// for; an escape cut short is left as it is.
fn decode_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let hex4 = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| -> Option<u32> {
        let digits: String = (0..4).filter_map(|_| chars.next()).collect();
        u32::from_str_radix(&digits, 16)
            .ok()
            .filter(|_| digits.len() == 4)
    };
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('u') => match hex4(&mut chars) {
                Some(hi @ 0xD800..=0xDBFF) => {
                    let low = (chars.next() == Some('\\') && chars.next() == Some('u'))
                        .then(|| hex4(&mut chars))
                        .flatten();
                    match low {
                        Some(lo) => out.extend(char::from_u32(
                            0x10000 + ((hi - 0xD800) << 10) + (lo.wrapping_sub(0xDC00) & 0x3FF),
                        )),
                        None => out.push('\u{fffd}'),
                    }
                }
                Some(unit) => out.push(char::from_u32(unit).unwrap_or('\u{fffd}')),
                None => out.push('\u{fffd}'),
            },
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// Every marker under a `Keep` of `plan` in `v`.
fn kept_markers(plan: Option<&ValuePlan>, v: &J, out: &mut Vec<String>) {
    match (plan, v) {
        (Some(ValuePlan::Keep), _) => all_markers(v, out),
        (Some(ValuePlan::KeepScalar), _) if !holds_object(v) => all_markers(v, out),
        (Some(ValuePlan::Object(o)), J::Obj(members)) => {
            for (k, m) in members {
                kept_markers(member_plan(o, k), m, out);
            }
        }
        (Some(ValuePlan::Array(p)), J::Arr(items)) => {
            items.iter().for_each(|i| kept_markers(Some(p), i, out));
        }
        _ => {}
    }
}

fn all_markers(v: &J, out: &mut Vec<String>) {
    match v {
        J::Str(s) => out.push(s.clone()),
        J::Arr(items) => items.iter().for_each(|i| all_markers(i, out)),
        J::Obj(members) => members.iter().for_each(|(_, m)| all_markers(m, out)),
        J::Null | J::Bool(_) | J::Num(_) => {}
    }
}

/// The markers the case may write: those under a `Keep` of the plan each record is written with
/// (given its subject's consent), and of the envelope plan off the records path.
fn released_markers(c: &Case, body: &J, out: &mut Vec<String>) {
    let record = |r: &J, out: &mut Vec<String>| {
        let granted = subject_of(c, r).is_ok_and(|s| c.consent.granted(&s));
        let plan = if granted {
            Some(&c.view.record)
        } else if c.without_basis == WithoutBasis::NonPersonal {
            Some(&c.view.non_personal)
        } else {
            None
        };
        kept_markers(plan, r, out);
    };
    let records = |v: &J, out: &mut Vec<String>| {
        if let J::Arr(items) = v {
            items.iter().for_each(|r| record(r, out));
        }
    };
    match &c.records {
        RecordsAt::Body => record(body, out),
        RecordsAt::List(path) => {
            let mut at = body;
            let mut plan = Some(&c.view.envelope);
            for (depth, key) in path.iter().enumerate() {
                let J::Obj(members) = at else { return };
                for (k, m) in members {
                    if *k != **key {
                        kept_markers(plan.and_then(|p| member_plan(p, k)), m, out);
                    }
                }
                plan = plan.and_then(|p| match member_plan(p, key) {
                    Some(ValuePlan::Object(o)) if depth + 1 < path.len() => Some(o),
                    _ => None,
                });
                match at.get(key) {
                    Some(next) => at = next,
                    None => return,
                }
            }
            records(at, out);
        }
    }
}

// ------------------------------------------------------------------------------------------
// Regressions.

fn single_record_case(subject: SubjectAt, path_subject: Option<&str>) -> Case {
    Case {
        records: RecordsAt::List(vec!["results".into()]),
        subject,
        without_basis: WithoutBasis::Refuse,
        view: View {
            record: ValuePlan::Keep,
            non_personal: ValuePlan::Drop,
            envelope: ObjectPlan::default(),
        },
        path_subject: path_subject.map(str::to_owned),
        consent: Consent {
            seed: 0,
            threshold: 4,
        },
    }
}

/// An integer id is read as its digits, whatever its size (`SubjectAt`: ids are compared as
/// text; `apply::subject_id`: "an integer's digits"), `-0` included.
#[test]
fn integer_ids_beyond_u64_are_read() {
    let c = single_record_case(SubjectAt::Field(vec!["id".into()]), None);
    for id in ["-9223372036854775809", "18446744073709551616", "-0"] {
        let body = format!(r#"{{"results":[{{"id":{id}}}]}}"#);
        assert!(reference(&c, body.as_bytes()).is_ok());
        let run = run_whole(&c, body.as_bytes());
        assert_eq!(
            run.result,
            Ok(Counts {
                kept: 1,
                ..Counts::default()
            }),
            "id {id}"
        );
        assert_eq!(show(&run.output), body);
    }
}
