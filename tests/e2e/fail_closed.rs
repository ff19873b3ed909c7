//! Failing closed: whatever the gateway cannot examine is refused before the head, or breaks
//! the transfer after it; never passed on.

use std::time::Duration;

use serde_json::{Value, json};

use crate::both;
use crate::support::{Proto, Reply, Upstream, contact, contacts, gateway, gzip};

const LIST: &str = "/crm/v3/objects/contacts";

/// The support view of a contact: everything but the unreleased special category and the
/// undeclared top-level member.
fn support_view(id: &str) -> Value {
    let mut v = contact(id);
    v["properties"].as_object_mut().unwrap().remove("ethnicity");
    v.as_object_mut().unwrap().remove("archived");
    v
}

fn support_list(ids: &[&str]) -> Value {
    json!({
        "results": ids.iter().map(|id| support_view(id)).collect::<Vec<_>>(),
        "paging": { "next": { "after": "abc" } }
    })
}

async fn decodes(proto: Proto, coding: &str) {
    let up = Upstream::replying(Reply::coded(&contacts(&["1", "2"]), coding)).await;
    let gw = gateway(&up).start().await;
    let rsp = gw.get(LIST).purpose("support").over(proto).send().await;
    assert_eq!(rsp.ok_json(), support_list(&["1", "2"]), "{coding}");
    assert_eq!(rsp.header("content-encoding"), None);
    // The gateway asks for an unencoded body; it decodes what it gets anyway.
    assert_eq!(up.last().header("accept-encoding"), Some("identity"));
}

both!(gzip_is_decoded_and_redacted);
async fn gzip_is_decoded_and_redacted(proto: Proto) {
    decodes(proto, "gzip").await;
}

both!(deflate_is_decoded_and_redacted);
async fn deflate_is_decoded_and_redacted(proto: Proto) {
    decodes(proto, "deflate").await;
}

both!(brotli_is_decoded_and_redacted);
async fn brotli_is_decoded_and_redacted(proto: Proto) {
    decodes(proto, "br").await;
}

both!(zstd_is_decoded_and_redacted);
async fn zstd_is_decoded_and_redacted(proto: Proto) {
    decodes(proto, "zstd").await;
}

#[tokio::test]
async fn a_coded_body_arriving_in_small_parts_is_decoded() {
    let reply = Reply::coded(&contacts(&["1", "2", "3"]), "gzip").in_parts(7, Duration::ZERO);
    let up = Upstream::replying(reply).await;
    let gw = gateway(&up).start().await;
    let rsp = gw.get(LIST).purpose("support").send().await;
    assert_eq!(rsp.ok_json(), support_list(&["1", "2", "3"]));
}

/// A body the gateway must refuse as unreadable, whatever the protocol.
async fn refused_as(proto: Proto, reply: Reply, path: &str, status: u16, reason: &str) {
    let up = Upstream::replying(reply).await;
    let gw = gateway(&up).start().await;
    let rsp = gw.get(path).purpose("support").over(proto).send().await;
    rsp.assert_refused(status, reason);
    for leaked in ["Lovelace", "example.com", "asthma", "secret"] {
        assert!(!rsp.text().contains(leaked), "{leaked} in {}", rsp.text());
    }
}

fn list_text() -> String {
    contacts(&["1", "2"]).to_string()
}

both!(codings_and_types_that_cannot_be_examined);
async fn codings_and_types_that_cannot_be_examined(proto: Proto) {
    let json = |v: &str| Reply::bytes(list_text()).header("content-type", v);
    let cases = [
        (
            "unknown coding",
            json("application/json").header("content-encoding", "compress"),
        ),
        (
            "stacked codings in one value",
            Reply::bytes(gzip(&gzip(list_text().as_bytes())))
                .header("content-type", "application/json")
                .header("content-encoding", "gzip, gzip"),
        ),
        (
            "stacked codings in two lines",
            Reply::bytes(gzip(&gzip(list_text().as_bytes())))
                .header("content-type", "application/json")
                .header("content-encoding", "gzip")
                .header("content-encoding", "gzip"),
        ),
        (
            "a coding that does not decode",
            json("application/json").header("content-encoding", "gzip"),
        ),
        ("html", json("text/html")),
        ("text", json("text/plain")),
        ("no content type", Reply::bytes(list_text())),
        ("latin-1", json("application/json; charset=iso-8859-1")),
        ("utf-16", json("application/json; charset=utf-16")),
        (
            "two content types",
            json("application/json").header("content-type", "text/html"),
        ),
    ];
    for (what, reply) in cases {
        println!("case: {what}");
        refused_as(proto, reply, LIST, 502, "upstream_unreadable").await;
    }
}

both!(a_json_subtype_with_utf8_is_examined);
async fn a_json_subtype_with_utf8_is_examined(proto: Proto) {
    let up = Upstream::replying(
        Reply::bytes(list_text()).header("content-type", "application/vnd.crm+json; charset=UTF-8"),
    )
    .await;
    let gw = gateway(&up).start().await;
    let rsp = gw.get(LIST).purpose("support").over(proto).send().await;
    assert_eq!(rsp.ok_json(), support_list(&["1", "2"]));
}

fn json_text(text: &str) -> Reply {
    Reply::bytes(text.to_owned()).header("content-type", "application/json")
}

both!(bodies_that_are_not_unambiguous_json_are_refused);
async fn bodies_that_are_not_unambiguous_json_are_refused(proto: Proto) {
    let cases = [
        (
            "invalid JSON",
            r#"{"results":[{"id":"1","properties":{"email":"secret@example.com",}}]}"#,
        ),
        (
            "cut short",
            r#"{"results":[{"id":"1","properties":{"email":"secret@example.com""#,
        ),
        ("not an object", r#"["secret@example.com"]"#),
        (
            "trailing data",
            r#"{"results":[]} {"email":"secret@example.com"}"#,
        ),
        (
            "duplicate key in a record",
            r#"{"results":[{"id":"1","properties":{"email":"a@x","email":"secret@example.com"}}]}"#,
        ),
        (
            "escaped duplicate of a kept key",
            r#"{"results":[{"id":"1","properties":{"email":"a@x","\u0065mail":"secret@example.com"}}]}"#,
        ),
        (
            "duplicate subject id",
            r#"{"results":[{"id":"1","id":"2","properties":{"email":"secret@example.com"}}]}"#,
        ),
        (
            "duplicate kept envelope member",
            r#"{"results":[],"paging":{"after":"1"},"paging":{"after":"secret"}}"#,
        ),
        (
            "escaped duplicate of the records member",
            r#"{"results":[],"r\u0065sults":[{"id":"1","properties":{"email":"secret@example.com"}}]}"#,
        ),
        (
            "duplicate dropped envelope member",
            r#"{"results":[],"debug":1,"debug":"secret"}"#,
        ),
        (
            "record without subject id",
            r#"{"results":[{"properties":{"email":"secret@example.com"}}]}"#,
        ),
        (
            "subject id is an object",
            r#"{"results":[{"id":{"v":"1"},"properties":{"email":"secret@example.com"}}]}"#,
        ),
        (
            "subject id is null",
            r#"{"results":[{"id":null,"properties":{"email":"secret@example.com"}}]}"#,
        ),
        (
            "records are not an array",
            r#"{"results":{"id":"1","properties":{"email":"secret@example.com"}}}"#,
        ),
    ];
    for (what, body) in cases {
        println!("case: {what}");
        refused_as(proto, json_text(body), LIST, 502, "upstream_unreadable").await;
    }
}

both!(an_escaped_spelling_of_a_dropped_key_is_still_dropped);
async fn an_escaped_spelling_of_a_dropped_key_is_still_dropped(proto: Proto) {
    // `audit` keeps the properties subtree but not the special category inside it.
    let body = r#"{"id":"1","properties":{"city":"Paris","health\u005fnotes":"diabetic","\u0065thnicity":"x-secret"}}"#;
    let up = Upstream::replying(json_text(body)).await;
    let gw = gateway(&up).start().await;
    let rsp = gw
        .get("/crm/v3/objects/contacts/1")
        .purpose("audit")
        .over(proto)
        .send()
        .await;
    assert_eq!(
        rsp.ok_json(),
        json!({ "id": "1", "properties": { "city": "Paris" } })
    );
    assert!(!rsp.text().contains("diabetic") && !rsp.text().contains("x-secret"));
    // And an escaped spelling of a kept key is the kept key.
    let body =
        r#"{"\u0069d":"1","properties":{"\u0065mail":"ada@example.com","phone":"+1 555 0100"}}"#;
    let up = Upstream::replying(json_text(body)).await;
    let gw = gateway(&up).start().await;
    gw.grant("1", "marketing").await;
    let rsp = gw
        .get("/crm/v3/objects/contacts/1")
        .purpose("marketing")
        .over(proto)
        .send()
        .await;
    assert_eq!(
        rsp.ok_json(),
        json!({ "id": "1", "properties": { "email": "ada@example.com", "phone": "*******0100" } })
    );
}

both!(a_record_of_another_subject_than_the_path_names_is_refused);
async fn a_record_of_another_subject_than_the_path_names_is_refused(proto: Proto) {
    let reply = Reply::json(&contact("2"));
    refused_as(
        proto,
        reply,
        "/crm/v3/objects/contacts/1",
        502,
        "subject_mismatch",
    )
    .await;
}

both!(statuses_whose_body_cannot_be_examined_are_refused);
async fn statuses_whose_body_cannot_be_examined_are_refused(proto: Proto) {
    let partial =
        Reply::bytes(r#"{"results":[{"id":"1","properties":{"email":"secret@example.com"}}"#)
            .status(206)
            .header("content-type", "application/json")
            .header("content-range", "bytes 0-60/200");
    refused_as(proto, partial, LIST, 502, "upstream_error").await;
    let not_modified = Reply::bytes("").status(304).header("etag", "\"secret\"");
    refused_as(proto, not_modified, LIST, 502, "upstream_error").await;
    for status in [301, 302, 303, 307, 308] {
        let redirect = json_text(r#"{"email":"secret@example.com"}"#)
            .status(status)
            .header("location", "http://crm.example/secret");
        let up = Upstream::replying(redirect).await;
        let gw = gateway(&up).start().await;
        let rsp = gw.get(LIST).purpose("support").over(proto).send().await;
        rsp.assert_refused(502, "upstream_error");
        assert_eq!(rsp.header("location"), None);
        assert!(!rsp.text().contains("secret"));
    }
}

both!(upstream_errors_keep_their_status_but_not_their_body);
async fn upstream_errors_keep_their_status_but_not_their_body(proto: Proto) {
    for status in [400, 401, 404, 409, 429, 500, 503] {
        let reply = json_text(
            r#"{"message":"contact secret@example.com (Ada Lovelace, asthma) not found"}"#,
        )
        .status(status)
        .header("x-crm-debug", "secret");
        let up = Upstream::replying(reply).await;
        let gw = gateway(&up).start().await;
        let rsp = gw
            .get("/crm/v3/objects/contacts/1")
            .purpose("support")
            .over(proto)
            .send()
            .await;
        rsp.assert_refused(status, "upstream_error");
        assert!(!rsp.text().contains("secret") && !rsp.text().contains("Lovelace"));
        assert_eq!(rsp.header("x-crm-debug"), None);
    }
}

fn small_limit(c: &mut consentry::config::Config) {
    c.limits.max_body_bytes = 2048;
}

both!(an_oversized_body_is_refused);
async fn an_oversized_body_is_refused(proto: Proto) {
    let ids: Vec<String> = (1..=12).map(|i| i.to_string()).collect();
    let big = contacts(&ids.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(big.to_string().len() > 4096);
    assert!(gzip(big.to_string().as_bytes()).len() < 2048);
    let cases = [
        ("with a length", Reply::json(&big)),
        ("chunked", Reply::json(&big).in_parts(512, Duration::ZERO)),
        ("compressed below the limit", Reply::coded(&big, "gzip")),
    ];
    for (what, reply) in cases {
        println!("case: {what}");
        let up = Upstream::replying(reply).await;
        let gw = gateway(&up).config(small_limit).start().await;
        let rsp = gw.get(LIST).purpose("support").over(proto).send().await;
        rsp.assert_refused(502, "body_too_large");
        assert!(!rsp.text().contains("Lovelace"));
    }
    // Under the limit, the same gateway serves.
    let up = Upstream::replying(Reply::json(&contacts(&["1"]))).await;
    let gw = gateway(&up).config(small_limit).start().await;
    let rsp = gw.get(LIST).purpose("support").over(proto).send().await;
    assert_eq!(rsp.ok_json(), support_list(&["1"]));
}

both!(headers_of_the_unredacted_body_are_not_passed);
async fn headers_of_the_unredacted_body_are_not_passed(proto: Proto) {
    let reply = Reply::json(&contacts(&["1", "2"]))
        .header("etag", "\"unredacted\"")
        .header("content-md5", "Q2hlY2sgSW50ZWdyaXR5IQ==")
        .header(
            "digest",
            "sha-256=X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=",
        )
        .header(
            "content-digest",
            "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:",
        )
        .header("content-range", "bytes 0-10/11")
        .header("last-modified", "Tue, 01 Apr 2025 00:00:00 GMT")
        .header("cache-control", "public, max-age=3600")
        .header("vary", "Accept-Encoding")
        .header("x-request-id", "r-1");
    let up = Upstream::replying(reply).await;
    let gw = gateway(&up).start().await;
    let rsp = gw.get(LIST).purpose("support").over(proto).send().await;
    let body = rsp.ok_json();
    assert_eq!(body, support_list(&["1", "2"]));
    for name in [
        "etag",
        "content-md5",
        "digest",
        "content-digest",
        "content-range",
        "last-modified",
    ] {
        assert_eq!(rsp.header(name), None, "{name}");
    }
    if let Some(len) = rsp.header("content-length") {
        assert_eq!(
            len,
            rsp.body.len().to_string(),
            "the length of the redacted body"
        );
    }
    let cache = rsp.header("cache-control").unwrap();
    assert!(
        cache.contains("private") && !cache.contains("public"),
        "{cache}"
    );
    let vary = rsp.header("vary").unwrap().to_ascii_lowercase();
    assert!(
        vary.contains("x-api-key") && vary.contains("x-purpose"),
        "{vary}"
    );
    // End-to-end headers that say nothing about the body pass.
    assert_eq!(rsp.header("x-request-id"), Some("r-1"));
}

/// A list large enough that the gateway streams it (its redacted form is well over the 32 KiB held back before the head).
pub fn large_list() -> String {
    list_of(600)
}

/// A list of `n` contacts, ids 1 to n.
pub fn list_of(n: usize) -> String {
    let ids: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    contacts(&ids).to_string()
}

/// A raw response head and the first `keep` bytes of `body`, announcing all of it.
fn cut_with_length(body: &str, keep: usize) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body.as_bytes()[..keep]);
    out
}

/// A raw chunked response of the first `keep` bytes of `body`, without the last chunk.
fn cut_chunked(body: &str, keep: usize) -> Vec<u8> {
    let mut out =
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
            .to_vec();
    for part in body.as_bytes()[..keep].chunks(4096) {
        out.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
    out
}

both!(a_body_cut_short_before_output_is_refused);
async fn a_body_cut_short_before_output_is_refused(proto: Proto) {
    let body = contacts(&["1", "2", "3"]).to_string();
    for raw in [
        cut_with_length(&body, body.len() / 2),
        cut_chunked(&body, body.len() / 2),
    ] {
        let up = Upstream::raw(raw).await;
        let gw = gateway(&up).start().await;
        let rsp = gw.get(LIST).purpose("support").over(proto).send().await;
        rsp.assert_refused(502, "upstream_unreadable");
    }
}

both!(a_body_cut_short_after_output_started_breaks_the_transfer);
async fn a_body_cut_short_after_output_started_breaks_the_transfer(proto: Proto) {
    let body = large_list();
    let keep = body.len() * 3 / 4;
    for raw in [cut_with_length(&body, keep), cut_chunked(&body, keep)] {
        let up = Upstream::raw(raw).await;
        let gw = gateway(&up).start().await;
        let (status, _, result) = gw.get(LIST).purpose("support").over(proto).exchange().await;
        // The head went out before the upstream broke off; the body must not look complete.
        assert_eq!(status, 200);
        assert!(result.is_err(), "a complete body from a broken upstream");
    }
}

#[tokio::test]
async fn a_large_list_that_completes_streams_whole() {
    let body = large_list();
    let up = Upstream::replying(
        Reply::bytes(body)
            .header("content-type", "application/json")
            .in_parts(8192, Duration::ZERO),
    )
    .await;
    let gw = gateway(&up).start().await;
    let rsp = gw.get(LIST).purpose("support").send().await;
    let json = rsp.ok_json();
    assert_eq!(json["results"].as_array().unwrap().len(), 600);
    assert_eq!(json["results"][599], support_view("600"));
    assert!(rsp.body.len() > 64 * 1024);
}

both!(more_bodies_that_cannot_be_examined);
async fn more_bodies_that_cannot_be_examined(proto: Proto) {
    let list_cases = [
        ("empty body", ""),
        ("null", "null"),
        (
            "records are null",
            r#"{"results":null,"email":"secret@example.com"}"#,
        ),
        ("a bare string", r#""secret@example.com""#),
        (
            "unpaired surrogate in a key",
            r#"{"results":[{"id":"1","properties":{"\ud800email":"secret@example.com"}}]}"#,
        ),
        (
            "a raw control character in a string",
            "{\"results\":[{\"id\":\"1\",\"properties\":{\"email\":\"secret\u{0}\"}}]}",
        ),
    ];
    for (what, body) in list_cases {
        println!("case: {what}");
        refused_as(proto, json_text(body), LIST, 502, "upstream_unreadable").await;
    }
    let one_cases = [
        (
            "a list where a record is expected",
            r#"[{"id":"1","properties":{"email":"secret@example.com"}}]"#,
        ),
        (
            "no subject id",
            r#"{"properties":{"email":"secret@example.com"}}"#,
        ),
    ];
    for (what, body) in one_cases {
        println!("case: {what}");
        let up = Upstream::replying(json_text(body)).await;
        let gw = gateway(&up).start().await;
        let rsp = gw
            .get("/crm/v3/objects/contacts/1")
            .purpose("support")
            .over(proto)
            .send()
            .await;
        assert!(rsp.status == 502, "{what}: {} {}", rsp.status, rsp.text());
        assert!(!rsp.text().contains("secret"), "{what}");
    }
}

both!(an_escaped_spelling_of_an_envelope_member_is_that_member);
async fn an_escaped_spelling_of_an_envelope_member_is_that_member(proto: Proto) {
    let body = r#"{"r\u0065sults":[],"p\u0061ging":{"next":{"after":"abc"}},"tot\u0061l":1}"#;
    let up = Upstream::replying(json_text(body)).await;
    let gw = gateway(&up).start().await;
    let rsp = gw.get(LIST).purpose("support").over(proto).send().await;
    assert_eq!(
        rsp.ok_json(),
        json!({ "results": [], "paging": { "next": { "after": "abc" } } })
    );
}

both!(an_unreachable_upstream_is_a_bad_gateway);
async fn an_unreachable_upstream_is_a_bad_gateway(proto: Proto) {
    let up = Upstream::replying(Reply::json(&contacts(&["1"]))).await;
    let url = {
        // A port nothing listens on any more.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let gw = gateway(&up).config(|c| c.upstream = url).start().await;
    let rsp = gw.get(LIST).purpose("support").over(proto).send().await;
    rsp.assert_refused(502, "upstream_unavailable");
}

both!(a_slow_upstream_body_times_out);
async fn a_slow_upstream_body_times_out(proto: Proto) {
    let reply = Reply::json(&contacts(&["1"])).in_parts(64, Duration::from_millis(100));
    let up = Upstream::replying(reply).await;
    let gw = gateway(&up)
        .config(|c| c.timeouts.total_ms = 300)
        .start()
        .await;
    let rsp = gw.get(LIST).purpose("support").over(proto).send().await;
    rsp.assert_refused(504, "upstream_timeout");
    assert!(!rsp.text().contains("Lovelace"));
}

both!(a_no_content_answer_passes_without_a_body);
async fn a_no_content_answer_passes_without_a_body(proto: Proto) {
    let up = Upstream::replying(Reply::bytes("").status(204).header("etag", "\"x\"")).await;
    let gw = gateway(&up).start().await;
    let rsp = gw.get(LIST).purpose("support").over(proto).send().await;
    assert_eq!(rsp.status, 204);
    assert!(rsp.body.is_empty());
    assert_eq!(rsp.header("etag"), None);
}

both!(invalid_utf8_is_refused);
async fn invalid_utf8_is_refused(proto: Proto) {
    let mut body = br#"{"results":[{"id":"1","properties":{"email":"secret"#.to_vec();
    body.extend_from_slice(b"\xff\xfe@example.com\"}}]}");
    let reply = Reply::bytes(body).header("content-type", "application/json");
    refused_as(proto, reply, LIST, 502, "upstream_unreadable").await;
}

both!(coded_bodies_cut_short_or_with_trailing_bytes_are_refused);
async fn coded_bodies_cut_short_or_with_trailing_bytes_are_refused(proto: Proto) {
    let plain = contacts(&["1", "2"]).to_string().into_bytes();
    for coding in ["gzip", "deflate", "br", "zstd"] {
        let coded = match coding {
            "gzip" => gzip(&plain),
            "deflate" => crate::support::deflate(&plain),
            "br" => crate::support::brotli(&plain),
            _ => crate::support::zstd(&plain),
        };
        // Cut in the middle, and cut by only the last few bytes (an integrity trailer or the
        // end-of-stream marker), where the JSON inside may already be complete.
        let half = coded[..coded.len() / 2].to_vec();
        let tail = coded[..coded.len() - 4].to_vec();
        let mut trailing = coded.clone();
        trailing.extend_from_slice(br#"{"email":"secret@example.com"}"#);
        for (what, body) in [("half", half), ("tail", tail), ("trailing", trailing)] {
            println!("case: {coding} {what}");
            let reply = Reply::bytes(body)
                .header("content-type", "application/json")
                .header("content-encoding", coding);
            refused_as(proto, reply, LIST, 502, "upstream_unreadable").await;
        }
    }
    // A second gzip member is part of the body (RFC 1952): examined, not ignored.
    let mut two = gzip(&plain);
    two.extend_from_slice(&gzip(br#"{"email":"secret@example.com"}"#));
    let reply = Reply::bytes(two)
        .header("content-type", "application/json")
        .header("content-encoding", "gzip");
    refused_as(proto, reply, LIST, 502, "upstream_unreadable").await;
    let (a, b) = plain.split_at(plain.len() / 2);
    let mut split = gzip(a);
    split.extend_from_slice(&gzip(b));
    let up = Upstream::replying(
        Reply::bytes(split)
            .header("content-type", "application/json")
            .header("content-encoding", "gzip"),
    )
    .await;
    let gw = gateway(&up).start().await;
    let rsp = gw.get(LIST).purpose("support").over(proto).send().await;
    assert_eq!(rsp.ok_json(), support_list(&["1", "2"]));
}
