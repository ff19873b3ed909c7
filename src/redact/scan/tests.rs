use super::*;
use crate::policy::compiled::Transform;

fn validate(input: &str) -> Result<usize, ScanError> {
    Scanner::new(16)
        .scan(input.as_bytes(), false, None, None, &mut Vec::new())
        .map(|s| s.end)
}

/// A complete document: the value, then only whitespace.
fn accepts(input: &str) -> bool {
    let padded = format!("{input} ");
    match validate(&padded) {
        Ok(end) => padded
            .as_bytes()
            .get(end..)
            .unwrap()
            .iter()
            .all(u8::is_ascii_whitespace),
        Err(_) => false,
    }
}

#[test]
fn accepts_exactly_what_serde_json_accepts() {
    let cases = [
        r#"{"a":1}"#,
        r#"{"a":[1,2,{"b":null}],"c":true,"d":false}"#,
        r#"  { "a" : "x" , "b" : [ ] , "c" : { } }  "#,
        r#""\u00e9\ud83e\udd80\n\t\"\\\/""#,
        "\"é☃🦀\"",
        "-0",
        "0.5e-10",
        "1E+2",
        "123456789012345678901234567890",
        r#"{"a":01}"#,
        r#"{"a":1.}"#,
        r#"{"a":.5}"#,
        r#"{"a":-}"#,
        r#"{"a":1e}"#,
        r#"{"a":+1}"#,
        r#"{"a":NaN}"#,
        r#"{"a":Infinity}"#,
        r#"{"a":tru}"#,
        r#"{"a":nul}"#,
        r#"{"a":"\x"}"#,
        r#"{"a":"\u12"}"#,
        r#"{"a":"\ud800"}"#,
        r#"{"a":"\udc00"}"#,
        r#"{"a":"\ud800\u0041"}"#,
        "{\"a\":\"tab\there\"}",
        "{\"a\":\"nl\nhere\"}",
        r#"{"a":1,}"#,
        r#"[1,]"#,
        r#"{,}"#,
        r#"{"a" 1}"#,
        r#"{"a":1 "b":2}"#,
        r#"{1:2}"#,
        r#"'a'"#,
        r#"{"a":[1 2]}"#,
        "{\"a\":1}}",
    ];
    for case in cases {
        let want = serde_json::from_str::<serde_json::Value>(case).is_ok();
        assert_eq!(accepts(case), want, "{case}");
    }
}

#[test]
fn refuses_invalid_utf8_in_strings() {
    for bytes in [
        &b"\"\xff\""[..],
        b"\"\xc0\xae\"",
        b"\"\xed\xa0\x80\"",
        b"{\"\xe9\":1}",
    ] {
        let got = Scanner::new(8).scan(bytes, false, None, None, &mut Vec::new());
        assert_eq!(got.map(|s| s.end), Err(ScanError::Malformed), "{bytes:?}");
    }
}

#[test]
fn every_prefix_of_a_value_is_incomplete_never_wrong() {
    let doc = r#"{"id":"10\u00e9","n":-12.5e+3,"t":true,"a":[null,{"x":"\ud83e\udd80"}]}"#;
    for cut in 0..doc.len() {
        let prefix = &doc.as_bytes()[..cut];
        let got = Scanner::new(8).scan(prefix, false, None, None, &mut Vec::new());
        assert_eq!(
            got.map(|s| s.end),
            Err(ScanError::Incomplete),
            "cut at {cut}"
        );
    }
    assert_eq!(validate(doc), Ok(doc.len()));
}

#[test]
fn duplicate_keys_are_found_escaped_or_not_small_or_large() {
    assert_eq!(validate(r#"{"a":1,"a":2}"#), Err(ScanError::DuplicateKey));
    assert_eq!(
        validate(r#"{"a":1,"\u0061":2}"#),
        Err(ScanError::DuplicateKey)
    );
    assert!(validate(r#"{"a":{"b":1},"c":{"b":1}}"#).is_ok());
    assert!(validate(r#"[{"a":1},{"a":1}]"#).is_ok());
    let many: Vec<String> = (0..100).map(|i| format!("\"k{i}\":{i}")).collect();
    let ok = format!("{{{}}}", many.join(","));
    assert!(validate(&ok).is_ok());
    let dup = format!("{{{},\"k\\u0035\":1}}", many.join(","));
    assert_eq!(validate(&dup), Err(ScanError::DuplicateKey));
}

#[test]
fn depth_is_bounded() {
    let deep = format!("{}{}", "[".repeat(17), "]".repeat(17));
    assert_eq!(validate(&deep), Err(ScanError::TooDeep));
    let ok = format!("{}{}", "[".repeat(16), "]".repeat(16));
    assert!(validate(&ok).is_ok());
}

fn plan_keep(fields: &[&str]) -> ValuePlan {
    let fields = fields
        .iter()
        .map(|f| ((*f).into(), ValuePlan::Keep))
        .collect();
    ValuePlan::Object(ObjectPlan::new(fields, None))
}

fn write(input: &str, plan: &ValuePlan, subject: Option<&[Box<str>]>) -> (String, Option<String>) {
    let mut out = Vec::new();
    let s = Scanner::new(16)
        .scan(input.as_bytes(), true, Some(plan), subject, &mut out)
        .unwrap();
    let subject = s
        .subject
        .map(|r| subject_text(&input.as_bytes()[r]).unwrap().into_owned());
    (String::from_utf8(out).unwrap(), subject)
}

#[test]
fn writes_kept_members_byte_for_byte_and_drops_the_rest() {
    let plan = plan_keep(&["id", "name", "tags"]);
    let path: Vec<Box<str>> = vec!["id".into()];
    let (out, subject) = write(
        r#"{"id": "7", "secret":{"x":"s3cr3t"}, "name":"A\u00e9", "tags":[1, 2.50]}"#,
        &plan,
        Some(&path),
    );
    // Consecutive kept members are copied in one piece, the whitespace between them too.
    assert_eq!(out, r#"{"id": "7","name":"A\u00e9", "tags":[1, 2.50]}"#);
    assert_eq!(subject.as_deref(), Some("7"));
}

#[test]
fn escaped_keys_match_their_plan_and_keep_their_spelling() {
    let plan = plan_keep(&["health_notes"]);
    let (out, _) = write(r#"{"health\u005fnotes":"x","other":1}"#, &plan, None);
    assert_eq!(out, r#"{"health\u005fnotes":"x"}"#);
    let plan = plan_keep(&["name"]);
    let (out, _) = write(r#"{"health\u005fnotes":"x"}"#, &plan, None);
    assert_eq!(out, "{}");
}

#[test]
fn subjects_are_found_when_dropped_or_nested() {
    let plan = plan_keep(&["name"]);
    let path: Vec<Box<str>> = vec!["properties".into(), "hs_object_id".into()];
    let (out, subject) = write(
        r#"{"name":"a","properties":{"x":1,"hs_object_id":12345678901234567890123}}"#,
        &plan,
        Some(&path),
    );
    assert_eq!(out, r#"{"name":"a"}"#);
    assert_eq!(subject.as_deref(), Some("12345678901234567890123"));
    assert_eq!(subject_text(b"1.5"), None);
    assert_eq!(subject_text(b"\"\""), None);
    assert_eq!(subject_text(b"null"), None);
    assert_eq!(subject_text(b"-0").as_deref(), Some("-0"));
    assert_eq!(subject_text(br#""a\"b""#).as_deref(), Some("a\"b"));
}

#[test]
fn shapes_other_than_planned_are_dropped_and_transforms_write_text() {
    let plan = ValuePlan::Object(ObjectPlan::new(
        vec![
            ("a".into(), plan_keep(&["x"])),
            (
                "p".into(),
                ValuePlan::Transform(Transform::Mask {
                    first: 0,
                    last: 2,
                    with: '*',
                }),
            ),
        ],
        None,
    ));
    let (out, _) = write(r#"{"a":"not an object","p":"a\"bcd"}"#, &plan, None);
    assert_eq!(out, r#"{"p":"***cd"}"#);
    let (out, _) = write(r#"{"a":{"x":1,"y":2},"p":{"o":1}}"#, &plan, None);
    assert_eq!(out, r#"{"a":{"x":1},"p":null}"#);
}

#[test]
fn a_number_ending_a_complete_input_is_whole() {
    let got = Scanner::new(4).scan(b"12", true, None, None, &mut Vec::new());
    assert_eq!(got.map(|s| s.end), Ok(2));
    let got = Scanner::new(4).scan(b"12", false, None, None, &mut Vec::new());
    assert_eq!(got.map(|s| s.end), Err(ScanError::Incomplete));
    let got = Scanner::new(4).scan(b"1.", true, None, None, &mut Vec::new());
    assert_eq!(got.map(|s| s.end), Err(ScanError::Malformed));
}

#[test]
fn keep_scalar_passes_values_and_nulls_structures() {
    let plan = ValuePlan::Object(ObjectPlan::new(
        vec![
            ("a".into(), ValuePlan::KeepScalar),
            ("b".into(), ValuePlan::KeepScalar),
            ("c".into(), ValuePlan::KeepScalar),
            ("d".into(), ValuePlan::KeepScalar),
        ],
        None,
    ));
    let (out, _) = write(
        r#"{"a":"x\"{","b":[1,["y{"]],"c":{"secret":1},"d":[1,{"secret":2}]}"#,
        &plan,
        None,
    );
    assert_eq!(out, r#"{"a":"x\"{","b":[1,["y{"]],"c":null,"d":null}"#);
}

/// Scans `input` completely with `scanner` through `plan`, the subject at `id`: what a caller
/// sees, the written text or the error.
fn outcome(scanner: &mut Scanner, input: &str, plan: &ValuePlan) -> Result<String, ScanError> {
    let path: Vec<Box<str>> = vec!["id".into()];
    let mut out = Vec::new();
    scanner
        .scan(input.as_bytes(), true, Some(plan), Some(&path), &mut out)
        .map(|s| format!("{} {:?}", String::from_utf8_lossy(&out), s))
}

#[test]
fn a_learnt_member_order_never_changes_what_is_written_or_refused() {
    // Fields `id`, `a` (kept), `n` (kept, nested) and two longer names, no wildcard: `x` and
    // `y` are dropped names outside it. Each member is a way to meet or break a guess: the
    // names as is, escaped, repeated, a prefix or extension of a guessed name, an unquoted
    // name.
    let plan = ValuePlan::Object(ObjectPlan::new(
        vec![
            ("id".into(), ValuePlan::Keep),
            ("a".into(), ValuePlan::Keep),
            ("n".into(), plan_keep(&["a", "b"])),
            // Names compared in one step (14 bytes, 16 quoted) and in pieces.
            ("lifecyclestage".into(), ValuePlan::Keep),
            ("a_name_longer_than_sixteen".into(), ValuePlan::Keep),
        ],
        None,
    ));
    let members = [
        r#""lifecyclestage":"lead""#,
        r#""a_name_longer_than_sixteen":0"#,
        r#""a_name_longer_than_sixteen_":0"#,
        r#""id":"1""#,
        r#""a":1"#,
        r#""x":2"#,
        r#""y":[3]"#,
        r#""\u0061":4"#,
        r#""\u0078":5"#,
        r#""ab":6"#,
        r#""":7"#,
        r#""n":{"a":1,"b":2,"x":3}"#,
        r#""n":{"b":1,"a":2,"a":3}"#,
        r#""a" 8"#,
        r#""a""#,
    ];
    // Every sequence of up to three members, scanned one after the other by one scanner
    // (which learns the order of each) and each by one that never guesses.
    let mut learning = Scanner::new(8);
    let mut sequences: Vec<Vec<usize>> = vec![vec![]];
    for _ in 0..3 {
        let longer: Vec<Vec<usize>> = sequences
            .iter()
            .filter(|s| s.len() == sequences.last().map_or(0, Vec::len))
            .flat_map(|s| {
                (0..members.len()).map(move |m| {
                    let mut s = s.clone();
                    s.push(m);
                    s
                })
            })
            .collect();
        sequences.extend(longer);
    }
    let mut refused = 0;
    for seq in &sequences {
        let body: Vec<&str> = seq.iter().map(|&m| members[m]).collect();
        let input = format!("{{{}}}", body.join(","));
        let fresh = outcome(&mut Scanner::without_guesses(8), &input, &plan);
        assert_eq!(outcome(&mut learning, &input, &plan), fresh, "{input}");
        refused += usize::from(fresh.is_err());
        // Cut short, the same input is read the same way: incomplete, or refused for what
        // came before the cut.
        let cut = &input[..input.len() - 1];
        let partial = |s: &mut Scanner| {
            s.scan(cut.as_bytes(), false, Some(&plan), None, &mut Vec::new())
                .map(|s| s.end)
        };
        assert_eq!(
            partial(&mut learning),
            partial(&mut Scanner::without_guesses(8)),
            "{cut}"
        );
    }
    // The sequences hold both kinds of outcome.
    assert!(refused > 0 && refused < sequences.len(), "{refused}");
    // A repeated name is refused whether it was guessed or not, spelt as is or escaped.
    for input in [
        r#"{"id":"1","a":1,"x":2}"#,
        r#"{"id":"1","a":1,"a":2}"#,
        r#"{"id":"1","a":1,"\u0061":2}"#,
        r#"{"id":"1","a":1,"x":2,"x":3}"#,
        r#"{"id":"1","a":1,"x":2,"\u0078":3}"#,
    ]
    .iter()
    .skip(1)
    {
        outcome(&mut learning, r#"{"id":"1","a":1,"x":2}"#, &plan).unwrap();
        assert_eq!(
            outcome(&mut learning, input, &plan),
            Err(ScanError::DuplicateKey),
            "{input}"
        );
    }
}

#[test]
fn orders_of_many_plans_replace_each_other_without_changing_any_outcome() {
    // More plans than a thread keeps orders for, met in turn; names outside the fields longer
    // than those remembered.
    let plans: Vec<ValuePlan> = (0..100)
        .map(|i| plan_keep(&["id", if i % 2 == 0 { "a" } else { "b" }]))
        .collect();
    let long = "l".repeat(100);
    let inputs = [
        format!(r#"{{"id":"1","a":1,"{long}":2,"b":3}}"#),
        format!(r#"{{"id":"1","{long}":2,"{long}":2}}"#),
        r#"{"id":"1","b":1,"a":2,"b":3}"#.to_owned(),
    ];
    let mut learning = Scanner::new(8);
    for round in 0..3 {
        for plan in &plans {
            for input in &inputs {
                assert_eq!(
                    outcome(&mut learning, input, plan),
                    outcome(&mut Scanner::without_guesses(8), input, plan),
                    "round {round}: {input}"
                );
            }
        }
    }
}

#[test]
fn an_order_given_to_another_plan_while_its_object_is_open_is_not_used() {
    // Q: `a` kept, `email` dropped, other names kept. P: `k00` is a Q, and 63 more members
    // each of a plan of its own: met first, they fill the thread's orders, so that Q's order
    // takes the place of P's while a P is read. A P that held `email` (outside its fields)
    // must not teach Q that `email` is outside Q's fields.
    std::thread::spawn(|| {
        let q = ValuePlan::Object(ObjectPlan::new(
            vec![
                ("a".into(), ValuePlan::Keep),
                ("email".into(), ValuePlan::Drop),
            ],
            Some(Box::new(ValuePlan::Keep)),
        ));
        let mut fields: Vec<(Box<str>, ValuePlan)> = vec![("k00".into(), q)];
        for i in 1..=63 {
            fields.push((format!("k{i:02}").into(), plan_keep(&["z"])));
        }
        let plan = ValuePlan::Array(Box::new(ValuePlan::Object(ObjectPlan::new(fields, None))));
        let mut first = String::from("{");
        for i in 1..=63 {
            first.push_str(&format!(r#""k{i:02}":{{"z":1}},"#));
        }
        first.push_str(r#""k00":{"z":1},"email":"x"}"#);
        for second in [
            r#"{"k00":{"a":1,"email":"secret"}}"#,
            r#"{"k00":{"a":1,"email":"s1","email":"s2"}}"#,
        ] {
            let input = format!("[{first},{second}]");
            let run = |s: &mut Scanner| {
                let mut out = Vec::new();
                s.scan(input.as_bytes(), true, Some(&plan), None, &mut out)
                    .map(|_| String::from_utf8(out).unwrap())
            };
            let want = run(&mut Scanner::without_guesses(8));
            assert!(
                !want.as_deref().unwrap_or_default().contains('s'),
                "{want:?}"
            );
            assert_eq!(run(&mut Scanner::new(8)), want, "{second}");
            assert_eq!(run(&mut Scanner::new(8)), want, "{second}, learnt");
        }
    })
    .join()
    .unwrap();
}
