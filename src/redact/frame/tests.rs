use super::*;

fn events(path: &[&str], single: bool, chunks: &[&[u8]]) -> Result<Vec<String>, FrameError> {
    let mut f = Framer::new(
        path.iter().map(|k| (*k).into()).collect(),
        single,
        8,
        1 << 20,
    );
    let mut out = Vec::new();
    let n = chunks.len();
    for (i, chunk) in chunks.iter().enumerate() {
        // Both ways of pushing: copied, or kept and read in place.
        if i % 2 == 0 {
            f.push_bytes(Bytes::copy_from_slice(chunk));
        } else {
            f.push(chunk);
        }
        if i + 1 == n {
            f.finish();
        }
        while let Some(e) = f.next_event()? {
            if let Event::RecordAt(_) | Event::BodyAt(_) = e {
                // Exercise the cutting path: the caller does not scan eagerly here.
                f.value_incomplete()?;
                continue;
            }
            out.push(match e {
                Event::Member { key, value } => {
                    format!("member {key}={}", String::from_utf8_lossy(f.slice(value)))
                }
                Event::Record(r) => format!("record {}", String::from_utf8_lossy(f.slice(r))),
                Event::Body(r) => format!("body {}", String::from_utf8_lossy(f.slice(r))),
                other => format!("{other:?}"),
            });
        }
    }
    Ok(out)
}

#[test]
fn frames_records_and_envelope_in_any_chunking() {
    let body = br#" {"paging": {"next": 1}, "results" : [ {"id":"1","a":[1,{"b":"]}"}]} , {"id":2} ], "total": 2 } "#;
    let whole = events(&["results"], false, &[body]).unwrap();
    assert_eq!(
        whole,
        vec![
            "OpenRoot",
            r#"member paging={"next": 1}"#,
            "OpenRecords { key: Some(\"results\") }",
            r#"record {"id":"1","a":[1,{"b":"]}"}]}"#,
            r#"record {"id":2}"#,
            "CloseRecords",
            "member total=2",
            "CloseObject",
            "End",
        ]
    );
    for split in 1..body.len() {
        let (a, b) = body.split_at(split);
        assert_eq!(
            events(&["results"], false, &[a, b]).unwrap(),
            whole,
            "split at {split}"
        );
    }
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    assert_eq!(events(&["results"], false, &bytes).unwrap(), whole);
}

#[test]
fn keys_are_compared_unescaped() {
    let got = events(&["results"], false, &[br#"{"res\u0075lts":[{"id":1}]}"#]).unwrap();
    assert!(got.contains(&"record {\"id\":1}".to_owned()), "{got:?}");
    let dup = events(
        &["results"],
        false,
        &[br#"{"results":[],"res\u0075lts":[{"id":1}]}"#],
    );
    assert_eq!(dup, Err(FrameError::DuplicateKey));
}

#[test]
fn refuses_what_it_cannot_frame() {
    let cases: &[(&[u8], FrameError)] = &[
        (br#"{"results":[{"id":1}"#, FrameError::Truncated),
        (br#"{"results":[{"id":1}]"#, FrameError::Truncated),
        (br#"{"results":[{"id":1},]}"#, FrameError::Malformed),
        (br#"{"results":{"id":1}}"#, FrameError::UnexpectedShape),
        (br#"[{"id":1}]"#, FrameError::UnexpectedShape),
        (br#"{"results":[]} x"#, FrameError::Malformed),
        (br#"{"results":[]}{}"#, FrameError::Malformed),
        (br#"{"results" [] }"#, FrameError::Malformed),
        (b"", FrameError::Truncated),
        (br#"{"a":1 "b":2}"#, FrameError::Malformed),
        (br#"{"results":[[[[[[[[[[1]]]]]]]]]]}"#, FrameError::TooDeep),
        ("\u{feff}{\"results\":[]}".as_bytes(), FrameError::Malformed),
    ];
    for (body, want) in cases {
        assert_eq!(
            events(&["results"], false, &[body]),
            Err(*want),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn nested_paths_bare_arrays_and_single_bodies() {
    let got = events(
        &["data", "items"],
        false,
        &[br#"{"data":{"items":[1],"n":2},"x":3}"#],
    )
    .unwrap();
    assert_eq!(
        got,
        vec![
            "OpenRoot",
            "OpenObject { key: \"data\" }",
            "OpenRecords { key: Some(\"items\") }",
            "record 1",
            "CloseRecords",
            "member n=2",
            "CloseObject",
            "member x=3",
            "CloseObject",
            "End",
        ]
    );
    let bare = events(&[], false, &[br#"[{"id":1},{"id":2}]"#]).unwrap();
    assert_eq!(bare.len(), 5);
    let one = events(&[], true, &[br#" {"id":1} "#]).unwrap();
    assert_eq!(one, vec!["body {\"id\":1}", "End"]);
    assert_eq!(
        events(&[], true, &[br#"{"id":1}"#, b"{}"]),
        Err(FrameError::Malformed)
    );
}

#[test]
fn a_value_over_the_limit_is_refused_before_it_completes() {
    let mut f = Framer::new(vec!["r".into()], false, 8, 64);
    f.push(br#"{"r":[{"id":""#);
    while let Some(e) = f.next_event().unwrap() {
        if let Event::RecordAt(_) = e {
            f.value_incomplete().unwrap();
        }
    }
    f.push(&[b'a'; 100]);
    assert_eq!(f.next_event(), Err(FrameError::ValueTooLarge));
}
