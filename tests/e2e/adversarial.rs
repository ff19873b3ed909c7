//! Adversarial cases: a caller holding a valid key for a lesser purpose who wants more data,
//! tricks in headers and in the HTTP/1 framing, a misbehaving upstream, and the limits.
//!
//! Every upstream body carries marker strings the policy removes; none may reach the client.

use std::time::{Duration, Instant};

use http::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::both;
use crate::fail_closed::list_of;
use crate::support::{
    APP_KEY, NEWSLETTER_KEY, Proto, Reply, Upstream, contact, contacts, gateway, raw_exchange,
    raw_read, raw_status, raw_try,
};

const LIST: &str = "/crm/v3/objects/contacts";
const ONE: &str = "/crm/v3/objects/contacts/1";
const SEARCH: &str = "/crm/v3/objects/contacts/search";

/// Values of a contact the marketing view never holds.
const NOT_FOR_MARKETING: &[&str] = &[
    "London",
    "asthma",
    "british",
    "crm-only",
    "1815",
    "1234",
    "lead",
    "+1 555",
    "2024-04-01",
    "SECRET-MARKER",
];

/// The marketing view of a contact.
fn marketing_view(id: &str) -> Value {
    json!({
        "id": id,
        "properties": {
            "firstname": "Ada",
            "lastname": "Lovelace",
            "email": format!("ada{id}@example.com"),
            "phone": "*******0100"
        },
        "createdAt": "2024-03-05T10:00:00Z"
    })
}

fn marketing_list(ids: &[&str]) -> Value {
    json!({
        "results": ids.iter().map(|id| marketing_view(id)).collect::<Vec<_>>(),
        "paging": { "next": { "after": "abc" } }
    })
}

fn assert_no_marketing_leak(text: &str) {
    for leaked in NOT_FOR_MARKETING {
        assert!(!text.contains(leaked), "{leaked} leaked: {text}");
    }
}

/// A 200 `application/json` with this exact text as body.
fn json_text(body: impl Into<bytes::Bytes>) -> Reply {
    Reply::bytes(body).header("content-type", "application/json")
}

/// The body of the first response in `raw` (the gateway's responses carry a length).
fn raw_body(raw: &[u8]) -> &[u8] {
    let at = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head: {}", String::from_utf8_lossy(raw)));
    &raw[at + 4..]
}

fn raw_json(raw: &[u8]) -> Value {
    serde_json::from_slice(raw_body(raw))
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(raw)))
}

/// How many response heads `raw` holds.
fn responses(raw: &[u8]) -> usize {
    String::from_utf8_lossy(raw).matches("HTTP/1.").count()
}

/// A raw request head with the newsletter key declaring marketing, and `extra` header lines.
fn marketing_head(method: &str, target: &str, version: &str, extra: &str) -> String {
    format!(
        "{method} {target} {version}\r\n{extra}x-api-key: {NEWSLETTER_KEY}\r\n\
         x-purpose: marketing\r\n\r\n"
    )
}

// ------------------------------------------------------------------------------------------
// Header tricks.

both!(purpose_header_tricks_are_refused);
async fn purpose_header_tricks_are_refused(proto: Proto) {
    let up = Upstream::replying(Reply::json(&contact("1"))).await;
    let gw = gateway(&up).start().await;
    gw.grant("1", "marketing").await;
    let cases: &[(&[&str], u16, &str)] = &[
        (&["support, marketing"], 400, "purpose_ambiguous"),
        (&["marketing, support"], 400, "purpose_ambiguous"),
        (&["marketing,"], 400, "purpose_ambiguous"),
        (&["marketing", "support"], 400, "purpose_ambiguous"),
        (&["support", "marketing"], 400, "purpose_ambiguous"),
        (&["marketing", "marketing"], 400, "purpose_ambiguous"),
        (&["MARKETING"], 403, "purpose_unknown"),
        (&["Marketing"], 403, "purpose_unknown"),
        (&["marketing;q=1"], 403, "purpose_unknown"),
        (&["marketing support"], 403, "purpose_unknown"),
        (&["*"], 403, "purpose_unknown"),
        (&[""], 403, "purpose_unknown"),
        (&["support"], 403, "purpose_not_allowed"),
        (&["audit"], 403, "purpose_not_allowed"),
    ];
    for (purposes, status, reason) in cases {
        let mut call = gw.get(ONE).over(proto).header("x-api-key", NEWSLETTER_KEY);
        for p in *purposes {
            call = call.header("x-purpose", p);
        }
        let rsp = call.send().await;
        println!("case: {purposes:?}");
        rsp.assert_refused(*status, reason);
        assert!(!rsp.text().contains("Lovelace"));
    }
    assert!(up.seen().is_empty(), "nothing went upstream");
}

#[tokio::test]
async fn purpose_whitespace_and_header_name_case_over_http1() {
    let up = Upstream::replying(Reply::json(&contact("1"))).await;
    let gw = gateway(&up).start().await;
    gw.grant("1", "marketing").await;
    // Whitespace around a field value is not part of it (RFC 9110 §5.5): still marketing.
    let head = format!(
        "GET {ONE} HTTP/1.1\r\nhost: gw\r\nconnection: close\r\nX-API-KEY: {NEWSLETTER_KEY}\r\n\
         x-PURPOSE: \t marketing \t\r\n\r\n"
    );
    let rsp = raw_exchange(gw.addr, head.as_bytes()).await;
    assert_eq!(raw_status(&rsp), 200, "{}", String::from_utf8_lossy(&rsp));
    assert_eq!(raw_json(&rsp), marketing_view("1"));
    assert_no_marketing_leak(&String::from_utf8_lossy(&rsp));

    let refusals = [
        // Two spellings of the same header name are two values of one header.
        (
            format!(
                "x-API-key: {NEWSLETTER_KEY}\r\nX-Api-Key: {APP_KEY}\r\nx-purpose: support\r\n"
            ),
            401,
            "ambiguous_credentials",
        ),
        (
            format!(
                "x-api-key: {NEWSLETTER_KEY}\r\nX-Purpose: marketing\r\nx-purpose: support\r\n"
            ),
            400,
            "purpose_ambiguous",
        ),
        // The lesser key under any spelling of the name is still the lesser key.
        (
            format!("X-API-KEY: {NEWSLETTER_KEY}\r\nX-PURPOSE: support\r\n"),
            403,
            "purpose_not_allowed",
        ),
        // Bytes that are not UTF-8 in the purpose.
        (
            format!("x-api-key: {NEWSLETTER_KEY}\r\nx-purpose: marketing\u{e9}\r\n"),
            403,
            "purpose_unknown",
        ),
    ];
    for (lines, status, reason) in refusals {
        let head = format!("GET {ONE} HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n{lines}\r\n");
        let rsp = raw_exchange(gw.addr, head.as_bytes()).await;
        let text = String::from_utf8_lossy(&rsp);
        assert_eq!(raw_status(&rsp), status, "{lines}: {text}");
        assert_eq!(raw_json(&rsp)["reason"], reason, "{lines}: {text}");
        assert!(!text.contains("Lovelace"));
    }
    // An obs-folded purpose (a continuation line) is not accepted as one purpose.
    let folded = format!(
        "GET {ONE} HTTP/1.1\r\nhost: gw\r\nconnection: close\r\nx-api-key: {NEWSLETTER_KEY}\r\n\
         x-purpose: marketing\r\n support\r\n\r\n"
    );
    let rsp = raw_exchange(gw.addr, folded.as_bytes()).await;
    assert!(
        rsp.is_empty() || raw_status(&rsp) == 400,
        "{}",
        String::from_utf8_lossy(&rsp)
    );
    assert_eq!(up.seen().len(), 1, "only the valid request went upstream");
}

both!(api_key_tricks_are_refused);
async fn api_key_tricks_are_refused(proto: Proto) {
    let up = Upstream::replying(Reply::json(&contact("1"))).await;
    let gw = gateway(&up).start().await;
    let joined = format!("{NEWSLETTER_KEY},{APP_KEY}");
    let joined_spaced = format!("{APP_KEY}, {NEWSLETTER_KEY}");
    let longer = format!("{APP_KEY}x");
    let upper = APP_KEY.to_uppercase();
    let bearer = format!("Bearer {APP_KEY}");
    type Case<'a> = (Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (vec![("x-api-key", &joined)], 401, "ambiguous_credentials"),
        (
            vec![("x-api-key", &joined_spaced)],
            401,
            "ambiguous_credentials",
        ),
        (vec![("x-api-key", &longer)], 401, "unknown_caller"),
        (vec![("x-api-key", &upper)], 401, "unknown_caller"),
        // Only X-Api-Key identifies: another credential header does not lift the lesser key.
        (
            vec![("x-api-key", NEWSLETTER_KEY), ("authorization", &bearer)],
            403,
            "purpose_not_allowed",
        ),
        (vec![("authorization", &bearer)], 401, "unknown_caller"),
    ];
    for (headers, status, reason) in cases {
        let mut call = gw.get(ONE).over(proto).header("x-purpose", "support");
        for (name, value) in &headers {
            call = call.header(name, value);
        }
        let rsp = call.send().await;
        println!("case: {headers:?}");
        rsp.assert_refused(status, reason);
        assert!(!rsp.text().contains("Lovelace"));
    }
    // A key in the query is not a key.
    let rsp = gw
        .get(&format!("{ONE}?x-api-key={APP_KEY}&api_key={APP_KEY}"))
        .header("x-purpose", "support")
        .over(proto)
        .send()
        .await;
    rsp.assert_refused(401, "unknown_caller");
    assert!(up.seen().is_empty(), "nothing went upstream");
}

both!(rewrite_override_and_forwarding_headers_do_not_reach_the_upstream);
async fn rewrite_override_and_forwarding_headers_do_not_reach_the_upstream(proto: Proto) {
    let up = Upstream::replying(Reply::json(&contacts(&["1"]))).await;
    let gw = gateway(&up).start().await;
    gw.grant("1", "marketing").await;
    let tricks = [
        ("x-original-url", "/crm/v3/objects/tickets?all=1"),
        ("x-rewrite-url", "/crm/v3/objects/tickets?all=1"),
        ("x-original-uri", "/crm/v3/objects/tickets?all=1"),
        ("x-http-method-override", "DELETE"),
        ("x-http-method", "DELETE"),
        ("x-method-override", "PUT"),
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-prefix", "/admin"),
        ("x-forwarded-port", "8443"),
        ("x-real-ip", "10.0.0.1"),
        ("forwarded", "for=10.0.0.1;host=evil.example"),
    ];
    for path in [LIST, "/health"] {
        let mut call = gw.get(path).over(proto);
        if path == LIST {
            call = call
                .header("x-api-key", NEWSLETTER_KEY)
                .header("x-purpose", "marketing");
        }
        for (name, value) in tricks {
            call = call.header(name, value);
        }
        let rsp = call.send().await;
        if path == LIST {
            assert_eq!(rsp.ok_json(), marketing_list(&["1"]));
            assert_no_marketing_leak(&rsp.text());
        }
        let seen = up.last();
        assert_eq!(seen.method, "GET", "{path}");
        assert_eq!(
            seen.target, path,
            "the upstream sees the examined path only"
        );
        for (name, _) in tricks {
            if name == "x-forwarded-host" {
                continue;
            }
            assert_eq!(seen.header(name), None, "{name} went upstream on {path}");
        }
        assert_eq!(seen.header("host"), Some(up.addr.to_string().as_str()));
        assert_eq!(
            seen.header("x-forwarded-host"),
            Some(gw.addr.to_string().as_str())
        );
        assert_eq!(seen.headers.get_all("x-forwarded-host").iter().count(), 1);
        assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    }
}

/// The variable a CGI or WSGI server makes of a header field (RFC 3875 §4.1.18): upper-cased,
/// `-` turned into `_`, so that `X_Original_URL` and `X-Original-URL` are one variable there.
fn cgi_name(name: &str) -> String {
    format!("HTTP_{}", name.to_ascii_uppercase().replace('-', "_"))
}

both!(underscore_spellings_of_removed_headers_do_not_reach_the_upstream);
async fn underscore_spellings_of_removed_headers_do_not_reach_the_upstream(proto: Proto) {
    // An upstream that reads its header fields as CGI variables and honours a rewrite header,
    // as IIS and some PHP frameworks do: it answers the URL that header names.
    let up = Upstream::serve(|seen| {
        let rewritten = seen
            .headers
            .keys()
            .any(|name| cgi_name(name.as_str()) == "HTTP_X_ORIGINAL_URL");
        if rewritten {
            Reply::json(&contact("1"))
        } else {
            Reply::json(&json!({ "status": "ok" }))
        }
    })
    .await;
    let gw = gateway(&up).start().await;
    gw.grant("1", "marketing").await;
    let tricks = [
        ("x_original_url", ONE),
        ("X_Rewrite_URL", ONE),
        ("x-original_uri", ONE),
        ("x_http_method_override", "DELETE"),
        ("x_http_method", "DELETE"),
        ("x_method_override", "PUT"),
        ("x_forwarded_for", "10.0.0.1"),
        ("x_forwarded_host", "evil.example"),
        ("x_forwarded_prefix", "/admin"),
        ("x_real_ip", "10.0.0.1"),
        ("x_api_key", APP_KEY),
        ("x_purpose", "support"),
    ];
    let mut health = gw.get("/health").over(proto);
    for (name, value) in tricks {
        health = health.header(name, value);
    }
    let rsp = health.send().await;
    // A passthrough route answers as the upstream does: never with a contact.
    assert_eq!(rsp.ok_json(), json!({ "status": "ok" }), "{}", rsp.text());
    let mut list = gw
        .get(LIST)
        .over(proto)
        .header("x-api-key", NEWSLETTER_KEY)
        .header("x-purpose", "marketing");
    for (name, value) in tricks {
        list = list.header(name, value);
    }
    // A validator in any spelling could still draw a 304 on a protected route.
    let rsp = list.header("if_none_match", "\"x\"").send().await;
    assert_eq!(rsp.ok_json(), json!({}), "{}", rsp.text());
    assert_eq!(up.last().header("if_none_match"), None);
    for seen in up.seen() {
        let variables: Vec<String> = seen.headers.keys().map(|n| cgi_name(n.as_str())).collect();
        for (name, _) in tricks {
            assert_eq!(seen.header(name), None, "{name} went upstream");
        }
        for variable in ["HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_HOST"] {
            let count = variables.iter().filter(|v| *v == variable).count();
            assert_eq!(count, 1, "{variable} is the gateway's alone");
        }
    }
}

#[tokio::test]
async fn a_spoofed_host_goes_upstream_as_the_upstream_host() {
    let up = Upstream::replying(Reply::json(&contacts(&["1"]))).await;
    let gw = gateway(&up).start().await;
    gw.grant("1", "marketing").await;
    let head = marketing_head(
        "GET",
        LIST,
        "HTTP/1.1",
        "host: crm.internal.example\r\nx-forwarded-host: admin.example\r\nconnection: close\r\n",
    );
    let rsp = raw_exchange(gw.addr, head.as_bytes()).await;
    assert_eq!(raw_json(&rsp), marketing_list(&["1"]));
    let seen = up.last();
    assert_eq!(seen.header("host"), Some(up.addr.to_string().as_str()));
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some("crm.internal.example")
    );
}

// ------------------------------------------------------------------------------------------
// Protocol tricks over raw TCP.

#[tokio::test]
async fn http10_requests_are_redacted() {
    let up = Upstream::replying(Reply::json(&contacts(&["1", "2"]))).await;
    let gw = gateway(&up).start().await;
    gw.grant("1", "marketing").await;
    for extra in ["host: gw\r\n", ""] {
        let head = marketing_head("GET", LIST, "HTTP/1.0", extra);
        let rsp = raw_exchange(gw.addr, head.as_bytes()).await;
        let text = String::from_utf8_lossy(&rsp);
        assert_eq!(raw_status(&rsp), 200, "{text}");
        assert_eq!(raw_json(&rsp), marketing_list(&["1"]), "{text}");
        assert_no_marketing_leak(&text);
        assert!(!text.contains("ada2@"), "no consent for 2");
    }
    assert_eq!(up.seen().len(), 2);
}

#[tokio::test]
async fn pipelined_requests_are_each_redacted() {
    let up = Upstream::serve(|seen| {
        if seen.target == LIST {
            Reply::json(&contacts(&["1", "2"]))
        } else {
            Reply::json(&contact("1"))
        }
    })
    .await;
    let gw = gateway(&up).start().await;
    gw.grant("1", "marketing").await;
    let mut both = marketing_head("GET", LIST, "HTTP/1.1", "host: gw\r\n");
    both.push_str(&marketing_head(
        "GET",
        ONE,
        "HTTP/1.1",
        "host: gw\r\nconnection: close\r\n",
    ));
    let rsp = raw_exchange(gw.addr, both.as_bytes()).await;
    let text = String::from_utf8_lossy(&rsp);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    assert_no_marketing_leak(&text);
    assert!(!text.contains("ada2@"), "{text}");
    let second = text.rfind("HTTP/1.1 200").unwrap();
    assert_eq!(raw_json(&rsp[..second]), marketing_list(&["1"]));
    assert_eq!(raw_json(&rsp[second..]), marketing_view("1"));
    let targets: Vec<String> = up.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(targets, [LIST, ONE]);
}

/// A request the attacker tries to smuggle past the gateway's examination.
fn smuggled() -> String {
    format!(
        "GET /crm/v3/objects/contacts/1?smuggled=1 HTTP/1.1\r\nhost: gw\r\n\
         x-api-key: {APP_KEY}\r\nx-purpose: support\r\n\r\n"
    )
}

#[tokio::test]
async fn the_body_of_a_refused_request_is_not_read_as_a_request() {
    let up = Upstream::replying(Reply::json(&contact("1"))).await;
    let gw = gateway(&up).start().await;
    let body = smuggled();
    let request = format!(
        "POST {SEARCH} HTTP/1.1\r\nhost: gw\r\nx-api-key: {NEWSLETTER_KEY}\r\nx-purpose: support\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    let (rsp, _) = raw_try(gw.addr, request.as_bytes(), Duration::from_millis(700)).await;
    let text = String::from_utf8_lossy(&rsp);
    assert_eq!(responses(&rsp), 1, "{text}");
    assert_eq!(raw_status(&rsp), 403, "{text}");
    assert!(!text.contains("Lovelace"));
    assert!(up.seen().is_empty(), "{:?}", up.seen());
}

#[tokio::test]
async fn request_smuggling_attempts_are_rejected() {
    let up = Upstream::replying(Reply::json(&contacts(&["1"]))).await;
    let gw = gateway(&up).start().await;
    let auth = format!("x-api-key: {APP_KEY}\r\nx-purpose: support\r\n");
    let s = smuggled();
    let chunk_then_smuggled = format!("0\r\n\r\n{s}");
    let cases: Vec<(&str, String)> = vec![
        (
            "CL.TE",
            format!(
                "POST {SEARCH} HTTP/1.1\r\nhost: gw\r\n{auth}content-length: {}\r\n\
                 transfer-encoding: chunked\r\n\r\n{chunk_then_smuggled}",
                chunk_then_smuggled.len()
            ),
        ),
        (
            "TE.CL",
            format!(
                "POST {SEARCH} HTTP/1.1\r\nhost: gw\r\n{auth}transfer-encoding: chunked\r\n\
                 content-length: 4\r\n\r\n{:x}\r\n{s}\r\n0\r\n\r\n",
                s.len()
            ),
        ),
        (
            "chunked, identity",
            format!(
                "POST {SEARCH} HTTP/1.1\r\nhost: gw\r\n{auth}transfer-encoding: chunked, identity\r\n\
                 \r\n{chunk_then_smuggled}"
            ),
        ),
        (
            "space before the colon",
            format!(
                "POST {SEARCH} HTTP/1.1\r\nhost: gw\r\n{auth}transfer-encoding : chunked\r\n\
                 content-length: {}\r\n\r\n{chunk_then_smuggled}",
                chunk_then_smuggled.len()
            ),
        ),
        (
            "xchunked",
            format!(
                "POST {SEARCH} HTTP/1.1\r\nhost: gw\r\n{auth}transfer-encoding: xchunked\r\n\
                 content-length: 5\r\n\r\n{chunk_then_smuggled}"
            ),
        ),
        (
            "two transfer-encoding lines",
            format!(
                "POST {SEARCH} HTTP/1.1\r\nhost: gw\r\n{auth}transfer-encoding: chunked\r\n\
                 transfer-encoding: identity\r\n\r\n{chunk_then_smuggled}"
            ),
        ),
        (
            "two content-length values",
            format!(
                "POST {SEARCH} HTTP/1.1\r\nhost: gw\r\n{auth}content-length: 5\r\n\
                 content-length: {}\r\n\r\n{chunk_then_smuggled}",
                chunk_then_smuggled.len()
            ),
        ),
        (
            "content-length list",
            format!(
                "POST {SEARCH} HTTP/1.1\r\nhost: gw\r\n{auth}content-length: 5, {}\r\n\
                 \r\n{chunk_then_smuggled}",
                chunk_then_smuggled.len()
            ),
        ),
    ];
    for (what, request) in cases {
        let before = up.seen().len();
        let (rsp, closed) = raw_try(gw.addr, request.as_bytes(), Duration::from_millis(700)).await;
        let text = String::from_utf8_lossy(&rsp);
        let after = up.seen();
        println!("case {what}: closed {closed}: {text}");
        assert!(
            !after.iter().any(|s| s.target.contains("smuggled")),
            "{what}: a request was smuggled upstream"
        );
        assert!(after.len() - before <= 1, "{what}: {after:?}");
        assert!(responses(&rsp) <= 1, "{what}: a second response: {text}");
        if rsp.is_empty() {
            assert!(closed, "{what}: neither answered nor closed");
        } else if raw_status(&rsp) == 200 {
            // RFC 9112 §6.1: framed by Transfer-Encoding alone, and the connection closed.
            assert!(closed, "{what}: kept open after an ambiguous frame");
            assert!(text.contains("connection: close"), "{what}: {text}");
            let forwarded = after.last().unwrap();
            // Forwarded with one framing only: whatever the chunks held is body, not a request.
            assert!(
                forwarded.body.is_empty() || forwarded.body == s.as_bytes(),
                "{what}: {forwarded:?}"
            );
            assert_eq!(forwarded.header("content-length"), None, "{what}");
            assert_eq!(
                forwarded.header("transfer-encoding"),
                Some("chunked"),
                "{what}"
            );
        } else {
            assert_eq!(raw_status(&rsp), 400, "{what}: {text}");
        }
    }
    // Still serving.
    let rsp = gw.get(LIST).purpose("support").send().await;
    assert_eq!(rsp.status, 200);
}

#[tokio::test]
async fn upgrade_requests_get_the_redacted_response() {
    let up = Upstream::replying(Reply::json(&contacts(&["1"]))).await;
    let gw = gateway(&up).start().await;
    gw.grant("1", "marketing").await;
    for extra in [
        "host: gw\r\nconnection: Upgrade, HTTP2-Settings, close\r\nupgrade: h2c\r\n\
         http2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
        "host: gw\r\nconnection: Upgrade, close\r\nupgrade: websocket\r\n\
         sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    ] {
        let head = marketing_head("GET", LIST, "HTTP/1.1", extra);
        let rsp = raw_exchange(gw.addr, head.as_bytes()).await;
        let text = String::from_utf8_lossy(&rsp);
        assert_eq!(raw_status(&rsp), 200, "{text}");
        assert!(!text.to_ascii_lowercase().contains("upgrade:"), "{text}");
        assert_eq!(raw_json(&rsp), marketing_list(&["1"]));
        assert_no_marketing_leak(&text);
        let seen = up.last();
        assert_eq!(seen.header("upgrade"), None);
        assert_eq!(seen.header("http2-settings"), None);
        assert!(
            !seen
                .header("connection")
                .unwrap_or("")
                .to_ascii_lowercase()
                .contains("upgrade")
        );
    }
}

#[tokio::test]
async fn expect_continue_is_answered_by_the_gateway() {
    let up = Upstream::replying(Reply::json(&contacts(&["1"]))).await;
    let gw = gateway(&up).start().await;
    gw.grant("1", "marketing").await;
    let head = format!(
        "POST {SEARCH} HTTP/1.1\r\nhost: gw\r\nconnection: close\r\nexpect: 100-continue\r\n\
         content-type: application/json\r\ncontent-length: 2\r\nx-api-key: {NEWSLETTER_KEY}\r\n\
         x-purpose: marketing\r\n\r\n"
    );
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(Duration::from_secs(5), async {
        while !String::from_utf8_lossy(&got).contains("100 Continue\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before 100 Continue");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("100 Continue in time");
    stream.write_all(b"{}").await.unwrap();
    let (rest, closed) = raw_read(&mut stream, Duration::from_secs(5)).await;
    assert!(closed);
    assert_eq!(raw_status(&rest), 200, "{}", String::from_utf8_lossy(&rest));
    // The search route keeps no envelope.
    assert_eq!(raw_json(&rest), json!({ "results": [marketing_view("1")] }));
    let seen = up.last();
    assert_eq!(seen.body.as_ref(), b"{}");
    assert_eq!(seen.header("expect"), None);

    // A refused request gets its refusal, not an invitation to send the body.
    let head = head.replace("x-purpose: marketing", "x-purpose: support");
    let (rsp, _) = raw_try(gw.addr, head.as_bytes(), Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&rsp);
    assert!(!text.contains("100 Continue"), "{text}");
    assert_eq!(raw_status(&rsp), 403, "{text}");
    assert_eq!(up.seen().len(), 1);
}

both!(range_and_validators_still_get_the_whole_redacted_body);
async fn range_and_validators_still_get_the_whole_redacted_body(proto: Proto) {
    let up = Upstream::replying(Reply::json(&contacts(&["1"])).header("etag", "\"raw\"")).await;
    let gw = gateway(&up).start().await;
    gw.grant("1", "marketing").await;
    let rsp = gw
        .get(LIST)
        .header("x-api-key", NEWSLETTER_KEY)
        .header("x-purpose", "marketing")
        .header("range", "bytes=0-20")
        .header("if-range", "\"raw\"")
        .header("if-none-match", "\"raw\"")
        .header("if-modified-since", "Tue, 01 Apr 2025 00:00:00 GMT")
        .over(proto)
        .send()
        .await;
    assert_eq!(rsp.ok_json(), marketing_list(&["1"]));
    assert_eq!(rsp.header("content-range"), None);
    assert_eq!(rsp.header("etag"), None);
    let seen = up.last();
    for name in ["range", "if-range", "if-none-match", "if-modified-since"] {
        assert_eq!(seen.header(name), None, "{name} went upstream");
    }
}

// ------------------------------------------------------------------------------------------
// Upstream tricks.

/// What the marketing caller gets for a list body the upstream sends as `reply`.
async fn marketing_sees(proto: Proto, reply: Reply) -> crate::support::Resp {
    let up = Upstream::replying(reply).await;
    let gw = gateway(&up).start().await;
    for id in ["1", "2", "3"] {
        gw.grant(id, "marketing").await;
    }
    let rsp = gw
        .get(LIST)
        .header("x-api-key", NEWSLETTER_KEY)
        .header("x-purpose", "marketing")
        .over(proto)
        .send()
        .await;
    assert_no_marketing_leak(&rsp.text());
    rsp
}

both!(bodies_in_other_encodings_are_refused);
async fn bodies_in_other_encodings_are_refused(proto: Proto) {
    let text = contacts(&["1"]).to_string();
    let utf16: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let mut utf16_bom = vec![0xff, 0xfe];
    utf16_bom.extend_from_slice(&utf16);
    let mut utf8_bom = vec![0xef, 0xbb, 0xbf];
    utf8_bom.extend_from_slice(text.as_bytes());
    let html = "<html><body><h1>500</h1><pre>ada1@example.com asthma London</pre></body></html>";
    let cases: Vec<(&str, Reply)> = vec![
        (
            "UTF-16 declared",
            Reply::bytes(utf16.clone()).header("content-type", "application/json; charset=utf-16"),
        ),
        ("UTF-16 undeclared", json_text(utf16)),
        ("UTF-16 with BOM", json_text(utf16_bom)),
        // RFC 8259 §8.1: no BOM in JSON text sent; a parser may ignore one, this gateway does not.
        ("UTF-8 BOM", json_text(utf8_bom)),
        ("HTML labelled JSON", json_text(html)),
    ];
    for (what, reply) in cases {
        println!("case: {what}");
        let rsp = marketing_sees(proto, reply).await;
        rsp.assert_refused(502, "upstream_unreadable");
        assert!(!rsp.text().contains("example.com"), "{what}");
    }
}

both!(numeric_and_string_ids_in_one_list_are_different_subjects);
async fn numeric_and_string_ids_in_one_list_are_different_subjects(proto: Proto) {
    let record = |id: Value| {
        let mut c = contact("1");
        c["id"] = id;
        c
    };
    let body = json!({
        "results": [
            record(json!(1)),
            record(json!("1")),
            record(json!(2)),
            record(json!("01")),
            record(json!(4)),
        ],
        "paging": { "next": { "after": "abc" } }
    });
    // Consent for 1 and 2 only ("01" is another subject; 4 has none).
    let rsp = marketing_sees(proto, Reply::json(&body)).await;
    let got = rsp.ok_json();
    let ids: Vec<&Value> = got["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["id"])
        .collect();
    assert_eq!(ids, [&json!(1), &json!("1"), &json!(2)]);
    assert!(
        rsp.text().contains(r#""id":1,"#),
        "the number stays a number"
    );
}

both!(personal_data_in_unexpected_places_is_minimised);
async fn personal_data_in_unexpected_places_is_minimised(proto: Proto) {
    let mut c = contact("1");
    c["properties"]["phone"] = json!({ "number": "+1 555 0100", "ssn": "SECRET-MARKER-SSN" });
    c["properties"]["nested"] = json!({ "email": "SECRET-MARKER@example.org" });
    c["meta"] = json!({ "properties": { "health_notes": "asthma" } });
    c["properties"]["firstname_extra"] = json!(["SECRET-MARKER"]);
    let body = json!({
        "results": [c],
        "paging": { "next": { "after": "abc" } },
        "included": [{ "email": "SECRET-MARKER-top@example.org" }],
        "errors": { "detail": "SECRET-MARKER for ada1@example.com" },
        "results_v2": [contact("1")]
    });
    let rsp = marketing_sees(proto, Reply::json(&body)).await;
    let mut want = marketing_list(&["1"]);
    // A mask applied to an object yields null, never the object.
    want["results"][0]["properties"]["phone"] = Value::Null;
    assert_eq!(rsp.ok_json(), want);
}

both!(non_json_literals_are_refused);
async fn non_json_literals_are_refused(proto: Proto) {
    let list = contacts(&["1"]).to_string();
    let cases = [
        list.replace("1234", "NaN"),
        list.replace("1234", "Infinity"),
        list.replace("\"crm-only\"", "-Infinity"),
        list.replace(r#""total":1"#, r#""total":NaN"#),
        list.replace(r#""after":"abc""#, r#""after":NaN"#),
        list.replace("1234", "0x10"),
        list.replace("1234", "+1"),
        list.replace("1234", "01"),
        list.replace("1234", "1."),
        list.replace("1234", ".5"),
        list.replace("1234", "-"),
        list.replace("1234", "1e"),
        list.replace("\"crm-only\"", "\"\\x41\""),
        list.replace("\"crm-only\"", "'crm-only'"),
        list.replace("\"crm-only\"", "/* c */ \"crm-only\""),
        list.replace(",\"paging\"", ",\u{b}\"paging\""),
        list.replace(",\"paging\"", ",\u{a0}\"paging\""),
        list.replace("\"crm-only\"", "true1"),
    ];
    for body in cases {
        assert_ne!(body, list, "the case changes the body");
        let rsp = marketing_sees(proto, json_text(body)).await;
        rsp.assert_refused(502, "upstream_unreadable");
    }
}

both!(huge_numbers_are_kept_byte_for_byte);
async fn huge_numbers_are_kept_byte_for_byte(proto: Proto) {
    let big = "1234567890123456789012345678901234567890";
    let body = format!(
        r#"{{"results":[{{"id":{big},"properties":{{"points":1e400,"internal":-0.0,"city":1E+2,"email":0.1000000000000000055511151231257827,"phone":-{big}}}}}]}}"#
    );
    let up = Upstream::replying(json_text(body)).await;
    let gw = gateway(&up).start().await;
    gw.grant(big, "marketing").await;
    let rsp = gw.get(LIST).purpose("support").over(proto).send().await;
    assert_eq!(
        rsp.text(),
        format!(
            r#"{{"results":[{{"id":{big},"properties":{{"points":1e400,"internal":-0.0,"city":1E+2,"email":0.1000000000000000055511151231257827,"phone":-{big}}}}}]}}"#
        )
    );
    // Marketing: the id is looked up by its digits and kept as it is; the phone (a number) is
    // masked as its text.
    let rsp = gw
        .get(LIST)
        .header("x-api-key", NEWSLETTER_KEY)
        .header("x-purpose", "marketing")
        .over(proto)
        .send()
        .await;
    assert_eq!(
        rsp.text(),
        format!(
            r#"{{"results":[{{"id":{big},"properties":{{"email":0.1000000000000000055511151231257827,"phone":"{}7890"}}}}]}}"#,
            "*".repeat(37)
        )
    );
}

both!(deep_nesting_is_refused_and_the_gateway_keeps_serving);
async fn deep_nesting_is_refused_and_the_gateway_keeps_serving(proto: Proto) {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let unclosed = "[".repeat(10_000);
    let bodies = [
        contacts(&["1"]).to_string().replace("\"crm-only\"", &deep),
        contacts(&["1"])
            .to_string()
            .replace(r#""debug":{"#, &format!(r#""deep":{deep},"debug":{{"#)),
        contacts(&["1"])
            .to_string()
            .replace(r#""after":"abc""#, &format!(r#""after":{deep}"#)),
        format!(r#"{{"results":{unclosed}"#),
        format!(r#"{{"x":{unclosed}"#),
    ];
    let up = Upstream::serve(move |seen| {
        let case = seen
            .target
            .rsplit('=')
            .next()
            .and_then(|n| n.parse::<usize>().ok());
        match case {
            Some(i) => json_text(bodies[i].clone()),
            None => Reply::json(&contacts(&["1"])),
        }
    })
    .await;
    let gw = gateway(&up).start().await;
    for i in 0..5 {
        let rsp = gw
            .get(&format!("{LIST}?case={i}"))
            .purpose("support")
            .over(proto)
            .send()
            .await;
        println!("case {i}: {}", rsp.text());
        assert_eq!(rsp.status, 502, "case {i}: {}", rsp.text());
        assert!(!rsp.text().contains("Lovelace"));
    }
    let rsp = gw.get(LIST).purpose("support").over(proto).send().await;
    assert_eq!(rsp.status, 200, "still serving");
}

#[tokio::test]
async fn a_stalled_upstream_body_is_cut_off_while_others_are_served() {
    let big = list_of(600);
    let up = Upstream::serve(move |seen| {
        if seen.target.ends_with("stall=small") {
            json_text(contacts(&["1", "2"]).to_string()).stall_after(40)
        } else if seen.target.ends_with("stall=large") {
            json_text(big.clone()).stall_after(big.len() - 100)
        } else {
            Reply::json(&contacts(&["1"]))
        }
    })
    .await;
    let gw = gateway(&up)
        .config(|c| c.timeouts.total_ms = 800)
        .start()
        .await;
    let started = Instant::now();
    let small = gw.get(&format!("{LIST}?stall=small")).purpose("support");
    let large = gw.get(&format!("{LIST}?stall=large")).purpose("support");
    let small = tokio::spawn(small.exchange());
    let large = tokio::spawn(large.exchange());
    up.wait_for(2).await;
    // Meanwhile, another client is served at once.
    let other = gw.get(LIST).purpose("support").send().await;
    assert_eq!(other.status, 200);
    assert!(started.elapsed() < Duration::from_millis(700));
    assert!(!small.is_finished() || !large.is_finished());

    let (status, _, body) = small.await.unwrap();
    assert_eq!(status, 504);
    let body = body.unwrap();
    assert!(String::from_utf8_lossy(&body).contains("upstream_timeout"));
    // A stall after the head went out breaks the transfer.
    let (status, _, body) = large.await.unwrap();
    assert_eq!(status, 200);
    assert!(body.is_err(), "a complete-looking body after a stall");
    assert!(started.elapsed() < Duration::from_secs(4));
}

both!(a_redirect_carrying_personal_data_is_not_passed_on);
async fn a_redirect_carrying_personal_data_is_not_passed_on(proto: Proto) {
    for (status, location) in [
        (302, "/crm/v3/objects/contacts?email=ada1%40example.com"),
        (301, "mailto:ada1@example.com"),
        (307, "https://crm.example/contacts/ada1@example.com"),
    ] {
        let reply = json_text(r#"{"email":"ada1@example.com"}"#)
            .status(status)
            .header("location", location)
            .header("content-location", location)
            .header("refresh", &format!("0; url={location}"));
        let rsp = marketing_sees(proto, reply).await;
        rsp.assert_refused(502, "upstream_error");
        assert_eq!(rsp.header("location"), None);
        assert_eq!(rsp.header("content-location"), None);
        assert_eq!(rsp.header("refresh"), None);
        assert!(!format!("{:?}", rsp.headers).contains("example.com"));
        assert!(!rsp.text().contains("example.com"));
    }
}

// ------------------------------------------------------------------------------------------
// Limits.

#[tokio::test]
async fn an_oversized_request_head_is_refused_and_others_are_served() {
    let up = Upstream::replying(Reply::json(&contacts(&["1"]))).await;
    for max in [2048usize, 32 * 1024] {
        let gw = gateway(&up)
            .config(|c| c.limits.max_header_bytes = max)
            .start()
            .await;
        let before = up.seen().len();
        let filler = "a".repeat(max + 1024);
        let many: String = (0..200).map(|i| format!("x-h{i}: 1\r\n")).collect();
        let cases = [
            (LIST.to_owned(), format!("x-filler: {filler}\r\n")),
            (LIST.to_owned(), many),
            // The request line is part of the head.
            (format!("{LIST}?q={filler}"), String::new()),
        ];
        for (target, extra) in cases {
            let head = format!(
                "GET {target} HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n{extra}\
                 x-api-key: {APP_KEY}\r\nx-purpose: support\r\n\r\n"
            );
            let (rsp, closed) = raw_try(gw.addr, head.as_bytes(), Duration::from_secs(5)).await;
            let text = String::from_utf8_lossy(&rsp);
            assert!(closed, "max {max}: the connection stays open");
            assert!(
                rsp.is_empty() || [414, 431].contains(&raw_status(&rsp)),
                "max {max}: {text}"
            );
        }
        // Over HTTP/2 as well.
        let (status, _, _) = gw
            .get(LIST)
            .purpose("support")
            .header("x-filler", &filler)
            .over(Proto::H2)
            .exchange()
            .await;
        assert_eq!(status, 431, "max {max}");
        assert_eq!(up.seen().len(), before, "max {max}: nothing went upstream");
        let rsp = gw.get(LIST).purpose("support").send().await;
        assert_eq!(rsp.status, 200, "still serving");
    }
}

#[tokio::test]
async fn an_oversized_chunked_request_body_never_goes_upstream_whole() {
    let up = Upstream::replying(Reply::json(&contacts(&["1"]))).await;
    let gw = gateway(&up)
        .config(|c| c.limits.max_request_body_bytes = 1024)
        .start()
        .await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST {SEARCH} HTTP/1.1\r\nhost: gw\r\nx-api-key: {APP_KEY}\r\nx-purpose: support\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // In parts, so the gateway has started forwarding before the limit is crossed.
    for _ in 0..8 {
        let mut chunk = b"100\r\n".to_vec();
        chunk.extend_from_slice(&[b'x'; 0x100]);
        chunk.extend_from_slice(b"\r\n");
        if stream.write_all(&chunk).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let (rsp, _) = raw_read(&mut stream, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&rsp);
    assert_eq!(raw_status(&rsp), 413, "{text}");
    assert!(text.contains("\"request_too_large\""), "{text}");
    for seen in up.seen() {
        assert!(
            seen.body.len() <= 1024,
            "forwarded whole: {}",
            seen.body.len()
        );
    }
}

#[tokio::test]
async fn json_deeper_than_the_limit_is_refused() {
    let nest = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
    let up = Upstream::serve(move |seen| {
        let n: usize = seen.target.rsplit('=').next().unwrap().parse().unwrap();
        json_text(
            contacts(&["1"])
                .to_string()
                .replace("\"crm-only\"", &nest(n)),
        )
    })
    .await;
    let gw = gateway(&up)
        .config(|c| c.limits.max_depth = 8)
        .start()
        .await;
    let rsp = gw
        .get(&format!("{LIST}?n=3"))
        .purpose("support")
        .send()
        .await;
    assert_eq!(
        rsp.json()["results"][0]["properties"]["internal"],
        json!([[[1]]])
    );
    for n in [20, 200] {
        let rsp = gw
            .get(&format!("{LIST}?n={n}"))
            .purpose("support")
            .send()
            .await;
        rsp.assert_refused(502, "upstream_unreadable");
        // Also when the deep value is one the purpose drops.
        let rsp = gw
            .get(&format!("{LIST}?n={n}"))
            .header("x-api-key", NEWSLETTER_KEY)
            .header("x-purpose", "marketing")
            .send()
            .await;
        rsp.assert_refused(502, "upstream_unreadable");
    }
}

#[tokio::test]
async fn a_record_larger_than_the_limit_is_refused() {
    let mut big = contact("2");
    big["properties"]["internal"] = json!(format!("SECRET-MARKER{}", "x".repeat(8192)));
    let body = json!({ "results": [contact("1"), big], "paging": {} });
    let up = Upstream::replying(Reply::json(&body)).await;
    let gw = gateway(&up)
        .config(|c| c.limits.max_record_bytes = 4096)
        .start()
        .await;
    gw.grant("1", "marketing").await;
    gw.grant("2", "marketing").await;
    let rsp = gw.get(LIST).purpose("support").send().await;
    rsp.assert_refused(502, "body_too_large");
    let rsp = gw
        .get(LIST)
        .header("x-api-key", NEWSLETTER_KEY)
        .header("x-purpose", "marketing")
        .send()
        .await;
    rsp.assert_refused(502, "body_too_large");
    assert!(!rsp.text().contains("SECRET-MARKER"));
}

#[tokio::test]
async fn connections_over_the_limit_wait_while_existing_ones_are_served() {
    let up = Upstream::replying(Reply::json(&contacts(&["1"]))).await;
    let gw = gateway(&up)
        .config(|c| c.limits.max_connections = 2)
        .start()
        .await;
    let mut first = TcpStream::connect(gw.addr).await.unwrap();
    let second = TcpStream::connect(gw.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A third connection is not served while two are open.
    let third = tokio::spawn(gw.get(LIST).purpose("support").send());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!third.is_finished(), "served over the connection limit");
    // An open connection is served.
    let head = format!(
        "GET {LIST} HTTP/1.1\r\nhost: gw\r\nx-api-key: {APP_KEY}\r\nx-purpose: support\r\n\
         connection: close\r\n\r\n"
    );
    first.write_all(head.as_bytes()).await.unwrap();
    let (rsp, closed) = raw_read(&mut first, Duration::from_secs(5)).await;
    assert!(closed);
    assert_eq!(raw_status(&rsp), 200);
    drop(second);
    // A slot is free: the waiting request is served.
    let rsp = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("served once a slot is free")
        .unwrap();
    assert_eq!(rsp.status, 200);
}

#[tokio::test]
async fn a_slow_request_head_is_cut_off() {
    let up = Upstream::replying(Reply::json(&contacts(&["1"]))).await;
    let gw = gateway(&up)
        .config(|c| c.timeouts.client_header_ms = 300)
        .start()
        .await;
    let head = format!(
        "GET {LIST} HTTP/1.1\r\nhost: gw\r\nx-api-key: {APP_KEY}\r\nx-purpose: support\r\n\r\n"
    );
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let started = Instant::now();
    let slow = tokio::spawn(async move {
        for byte in head.as_bytes() {
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut got = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), async {
        let mut buf = [0u8; 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    slow.abort();
    assert!(closed, "the slow client was not cut off");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        got.is_empty() || raw_status(&got) == 408,
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert!(up.seen().is_empty());
    // Others are still served.
    let rsp = gw.get(LIST).purpose("support").send().await;
    assert_eq!(rsp.status, 200);
}

// A POST with the method of a route that takes none is refused before anything goes upstream.
#[tokio::test]
async fn a_method_override_does_not_change_the_examined_method() {
    let up = Upstream::replying(Reply::json(&contact("1"))).await;
    let gw = gateway(&up).start().await;
    let rsp = gw
        .call(Method::POST, ONE)
        .purpose("support")
        .header("x-http-method-override", "GET")
        .body("{}")
        .send()
        .await;
    rsp.assert_refused(405, "method_not_allowed");
    assert!(up.seen().is_empty());
}

both!(whitespace_around_the_purpose);
async fn whitespace_around_the_purpose(proto: Proto) {
    let up = Upstream::replying(Reply::json(&contact("1"))).await;
    let gw = gateway(&up).start().await;
    gw.grant("1", "marketing").await;
    let rsp = gw
        .get(ONE)
        .header("x-api-key", NEWSLETTER_KEY)
        .header("x-purpose", " marketing ")
        .over(proto)
        .send()
        .await;
    match proto {
        // HTTP/1.1 parsing removes the whitespace around a field value.
        Proto::H1 => assert_eq!(rsp.ok_json(), marketing_view("1")),
        // HTTP/2 carries it as it is: not a purpose the policy knows.
        Proto::H2 => rsp.assert_refused(403, "purpose_unknown"),
    }
    assert_no_marketing_leak(&rsp.text());
}

#[tokio::test]
async fn methods_and_targets_outside_the_policy_are_refused() {
    let up = Upstream::replying(Reply::json(&contacts(&["1"]))).await;
    let gw = gateway(&up).start().await;
    let auth = format!("x-api-key: {APP_KEY}\r\nx-purpose: support\r\n");
    let cases = [
        // Methods are case-sensitive: `get` is not GET, on a route or a passthrough entry.
        (format!("get {LIST} HTTP/1.1\r\nhost: gw\r\n{auth}"), 405),
        ("get /health HTTP/1.1\r\nhost: gw\r\n".to_owned(), 401),
        (format!("head {ONE} HTTP/1.1\r\nhost: gw\r\n{auth}"), 405),
        (format!("TRACE {LIST} HTTP/1.1\r\nhost: gw\r\n{auth}"), 405),
        ("TRACE /health HTTP/1.1\r\nhost: gw\r\n".to_owned(), 401),
        (format!("OPTIONS * HTTP/1.1\r\nhost: gw\r\n{auth}"), 400),
        (
            format!(
                "CONNECT {} HTTP/1.1\r\nhost: {}\r\n{auth}",
                up.addr, up.addr
            ),
            400,
        ),
    ];
    for (head, status) in cases {
        let request = format!("{head}connection: close\r\n\r\n");
        let (rsp, _) = raw_try(gw.addr, request.as_bytes(), Duration::from_secs(2)).await;
        let text = String::from_utf8_lossy(&rsp);
        assert_eq!(raw_status(&rsp), status, "{head}: {text}");
        assert!(!text.contains("Lovelace"), "{head}");
    }
    assert!(up.seen().is_empty(), "{:?}", up.seen());
}

#[tokio::test]
async fn an_http11_request_without_host_is_refused() {
    let up = Upstream::replying(Reply::json(&contacts(&["1"]))).await;
    let gw = gateway(&up).start().await;
    gw.grant("1", "marketing").await;
    // RFC 9112 §3.2: a server responds 400 to an HTTP/1.1 request without Host.
    let head = marketing_head("GET", LIST, "HTTP/1.1", "connection: close\r\n");
    let rsp = raw_exchange(gw.addr, head.as_bytes()).await;
    assert_eq!(raw_status(&rsp), 400, "{}", String::from_utf8_lossy(&rsp));
    assert_eq!(raw_json(&rsp)["reason"], "bad_request");
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn request_trailers_are_not_forwarded() {
    let up = Upstream::replying(Reply::json(&contacts(&["1"]))).await;
    let gw = gateway(&up).start().await;
    let request = format!(
        "POST {SEARCH} HTTP/1.1\r\nhost: gw\r\nconnection: close\r\nx-api-key: {APP_KEY}\r\n\
         x-purpose: support\r\ntrailer: x-http-method-override, x-original-url\r\n\
         transfer-encoding: chunked\r\n\r\n2\r\n{{}}\r\n0\r\n\
         x-http-method-override: DELETE\r\nx-original-url: /crm/v3/objects/tickets\r\n\r\n"
    );
    let rsp = raw_exchange(gw.addr, request.as_bytes()).await;
    assert_eq!(raw_status(&rsp), 200, "{}", String::from_utf8_lossy(&rsp));
    let seen = up.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.target, SEARCH);
    assert_eq!(seen.body.as_ref(), b"{}");
    assert!(seen.trailers.is_none(), "{:?}", seen.trailers);
    assert_eq!(seen.header("trailer"), None);
}

both!(upstream_headers_carrying_personal_data_are_not_passed);
async fn upstream_headers_carrying_personal_data_are_not_passed(proto: Proto) {
    let reply = Reply::json(&contacts(&["1"]))
        .header(
            "content-location",
            "/crm/v3/objects/contacts?email=ada1@example.com",
        )
        .header(
            "link",
            "</crm/v3/objects/contacts?email=ada1@example.com>; rel=self",
        )
        .header("location", "/crm/v3/objects/contacts/ada1@example.com")
        .header("refresh", "0; url=/contacts?email=ada1@example.com")
        .header("set-cookie", "crm_user=ada1@example.com; Path=/")
        .header("x-contact-email", "ada1@example.com")
        .header(
            "x-debug-query",
            "email = ada1@example.com AND city = London",
        )
        .header("x-request-id", "r-1");
    let up = Upstream::replying(reply).await;
    let gw = gateway(&up).start().await;
    // Analytics sees a hashed id and the city, never the email.
    let rsp = gw.get(LIST).purpose("analytics").over(proto).send().await;
    let body = rsp.ok_json();
    assert_eq!(
        body["results"][0]["properties"],
        json!({ "city": "London" })
    );
    let head = format!("{:?}", rsp.headers);
    assert!(!head.contains("example.com"), "{head}");
    assert!(!rsp.text().contains("example.com"));
    for name in [
        "content-location",
        "link",
        "location",
        "refresh",
        "set-cookie",
    ] {
        assert_eq!(rsp.header(name), None, "{name}");
    }
    // A request id says nothing about the data and passes.
    assert_eq!(rsp.header("x-request-id"), Some("r-1"));
}

both!(subject_ids_are_compared_exactly);
async fn subject_ids_are_compared_exactly(proto: Proto) {
    // Consent for "1" and for "é" (NFC) only.
    let body = concat!(
        r#"{"results":["#,
        r#"{"id":"1\u0000x","properties":{"email":"SECRET-MARKER-nul@example.org"}},"#,
        r#"{"id":"e\u0301","properties":{"email":"SECRET-MARKER-nfd@example.org"}},"#,
        r#"{"id":"1 ","properties":{"email":"SECRET-MARKER-space@example.org"}},"#,
        r#"{"id":"\u0031","properties":{"email":"escaped@example.org"}},"#,
        r#"{"id ":"1","properties":{"email":"SECRET-MARKER-key@example.org"}}"#,
        r#"]}"#
    );
    let up = Upstream::replying(json_text(body)).await;
    let gw = gateway(&up).start().await;
    gw.grant("1", "marketing").await;
    gw.grant("\u{e9}", "marketing").await;
    let rsp = gw
        .get(LIST)
        .header("x-api-key", NEWSLETTER_KEY)
        .header("x-purpose", "marketing")
        .over(proto)
        .send()
        .await;
    // The last record has no `id` member (its key is "id "): nothing to look up.
    rsp.assert_refused(502, "upstream_unreadable");
    assert!(!rsp.text().contains("SECRET-MARKER"));
    let up = Upstream::replying(json_text(body.replace(
        r#",{"id ":"1","properties":{"email":"SECRET-MARKER-key@example.org"}}"#,
        "",
    )))
    .await;
    let gw = gateway(&up).start().await;
    gw.grant("1", "marketing").await;
    gw.grant("\u{e9}", "marketing").await;
    let rsp = gw
        .get(LIST)
        .header("x-api-key", NEWSLETTER_KEY)
        .header("x-purpose", "marketing")
        .over(proto)
        .send()
        .await;
    // An escaped spelling is the same id; a NUL, a space or another normal form is another.
    assert_eq!(
        rsp.text(),
        r#"{"results":[{"id":"\u0031","properties":{"email":"escaped@example.org"}}]}"#
    );
}

both!(records_that_are_not_objects_are_refused);
async fn records_that_are_not_objects_are_refused(proto: Proto) {
    for body in [
        r#"{"results":["ada1@example.com"]}"#,
        r#"{"results":[["ada1@example.com"]]}"#,
        r#"{"results":[1]}"#,
        r#"{"results":[{"id":"1","properties":{"email":"ada1@example.com"}},"ada2@example.com"]}"#,
    ] {
        let rsp = marketing_sees(proto, json_text(body)).await;
        rsp.assert_refused(502, "upstream_unreadable");
        assert!(!rsp.text().contains("example.com"), "{body}");
    }
}

#[tokio::test]
async fn a_fragment_in_the_target_does_not_reach_the_upstream() {
    let up = Upstream::replying(Reply::json(&contacts(&["1"]))).await;
    let gw = gateway(&up).start().await;
    gw.grant("1", "marketing").await;
    for (target, forwarded) in [
        (format!("{LIST}#/../tickets"), LIST.to_owned()),
        (format!("{LIST}?a=1#/../../tickets"), format!("{LIST}?a=1")),
    ] {
        let head = marketing_head(
            "GET",
            &target,
            "HTTP/1.1",
            "host: gw\r\nconnection: close\r\n",
        );
        let rsp = raw_exchange(gw.addr, head.as_bytes()).await;
        assert_eq!(raw_json(&rsp), marketing_list(&["1"]));
        assert_eq!(up.last().target, forwarded);
    }
}

#[tokio::test]
async fn an_upstream_that_holds_its_head_back_times_out() {
    let slow = || Reply::json(&contacts(&["1"])).head_after(Duration::from_secs(3));
    // The response-head timeout.
    let up = Upstream::replying(slow()).await;
    let gw = gateway(&up)
        .config(|c| c.timeouts.header_ms = 300)
        .start()
        .await;
    let started = Instant::now();
    let rsp = gw.get(LIST).purpose("support").send().await;
    rsp.assert_refused(504, "upstream_timeout");
    assert!(started.elapsed() < Duration::from_millis(2500));
    // The total timeout bounds the whole exchange, the wait for the head included.
    let up = Upstream::replying(slow()).await;
    let gw = gateway(&up)
        .config(|c| c.timeouts.total_ms = 300)
        .start()
        .await;
    let started = Instant::now();
    let rsp = gw.get(LIST).purpose("support").send().await;
    rsp.assert_refused(504, "upstream_timeout");
    assert!(started.elapsed() < Duration::from_millis(2500));
}

#[tokio::test]
async fn a_silent_connection_is_cut_off_and_frees_its_slot() {
    let up = Upstream::replying(Reply::json(&contacts(&["1"]))).await;
    let gw = gateway(&up)
        .config(|c| {
            c.timeouts.client_header_ms = 300;
            c.limits.max_connections = 2;
        })
        .start()
        .await;
    // Nothing at all, or the start of the HTTP/2 preface and then nothing.
    let started = Instant::now();
    let silent = tokio::spawn(raw_try(gw.addr, b"", Duration::from_secs(3)));
    let partial = tokio::spawn(raw_try(gw.addr, b"PRI * HTTP/2", Duration::from_secs(3)));
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Both slots are taken; this client waits for one to be freed.
    let rsp = gw.get(LIST).purpose("support").send().await;
    assert_eq!(rsp.status, 200);
    assert!(started.elapsed() < Duration::from_secs(2));
    for task in [silent, partial] {
        let (got, closed) = task.await.unwrap();
        assert!(closed, "a silent connection stays open");
        assert!(got.is_empty() || raw_status(&got) == 408);
    }
}

#[tokio::test]
async fn idle_connections_are_cut_off() {
    let up = Upstream::replying(Reply::json(&contacts(&["1"]))).await;
    let gw = gateway(&up)
        .config(|c| c.timeouts.client_header_ms = 300)
        .start()
        .await;
    // HTTP/1.1: kept alive after a response, then silent.
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "GET {LIST} HTTP/1.1\r\nhost: gw\r\nx-api-key: {APP_KEY}\r\nx-purpose: support\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let (got, closed) = raw_read(&mut stream, Duration::from_secs(3)).await;
    assert!(closed, "an idle keep-alive connection stays open");
    assert_eq!(raw_status(&got), 200);
    // HTTP/2: the preface, then nothing (no SETTINGS, no answer to pings).
    let (_, closed) = raw_try(
        gw.addr,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(closed, "a silent HTTP/2 connection stays open");
}

#[tokio::test]
async fn upstream_trailers_are_not_passed() {
    let body = contacts(&["1"]).to_string();
    let raw = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\
         trailer: x-contact-email\r\n\r\n{:x}\r\n{body}\r\n0\r\n\
         x-contact-email: SECRET-MARKER@example.org\r\n\r\n",
        body.len()
    );
    let up = Upstream::raw(raw).await;
    let gw = gateway(&up).start().await;
    gw.grant("1", "marketing").await;
    let head = marketing_head(
        "GET",
        LIST,
        "HTTP/1.1",
        "host: gw\r\nte: trailers\r\nconnection: close\r\n",
    );
    let rsp = raw_exchange(gw.addr, head.as_bytes()).await;
    let text = String::from_utf8_lossy(&rsp);
    assert_eq!(raw_status(&rsp), 200, "{text}");
    assert_no_marketing_leak(&text);
    assert!(
        !text.to_ascii_lowercase().contains("x-contact-email"),
        "{text}"
    );
    let rsp = gw
        .get(LIST)
        .header("x-api-key", NEWSLETTER_KEY)
        .header("x-purpose", "marketing")
        .header("te", "trailers")
        .over(Proto::H2)
        .send()
        .await;
    assert_eq!(rsp.ok_json(), marketing_list(&["1"]));
}

both!(head_is_never_sent_upstream_on_a_protected_route);
async fn head_is_never_sent_upstream_on_a_protected_route(proto: Proto) {
    let full = contacts(&["1"]).to_string();
    let len = full.len().to_string();
    let up = Upstream::serve(move |seen| {
        if seen.method == "HEAD" {
            // What a CRM would answer to HEAD: the length of the unredacted body.
            Reply::bytes("")
                .header("content-type", "application/json")
                .header("x-unredacted-length", &len)
        } else {
            json_text(full.clone())
        }
    })
    .await;
    let gw = gateway(&up).start().await;
    gw.grant("1", "marketing").await;
    let call = |method: Method| {
        gw.call(method, LIST)
            .header("x-api-key", NEWSLETTER_KEY)
            .header("x-purpose", "marketing")
            .over(proto)
    };
    let get = call(Method::GET).send().await;
    let head = call(Method::HEAD).send().await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(
        head.header("content-length"),
        Some(get.body.len().to_string().as_str())
    );
    assert_eq!(head.header("x-unredacted-length"), None);
    assert!(up.seen().iter().all(|s| s.method == "GET"));
}

#[tokio::test]
async fn a_stalled_request_body_is_cut_off_at_the_total_timeout() {
    let up = Upstream::replying(Reply::json(&contacts(&["1"]))).await;
    let gw = gateway(&up)
        .config(|c| c.timeouts.total_ms = 500)
        .start()
        .await;
    let head = format!(
        "POST {SEARCH} HTTP/1.1\r\nhost: gw\r\nconnection: close\r\nx-api-key: {APP_KEY}\r\n\
         x-purpose: support\r\ncontent-length: 100\r\n\r\n{{\"a\":"
    );
    let started = Instant::now();
    let (rsp, closed) = raw_try(gw.addr, head.as_bytes(), Duration::from_secs(4)).await;
    assert!(closed);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(raw_status(&rsp), 504, "{}", String::from_utf8_lossy(&rsp));
    assert_eq!(raw_json(&rsp)["reason"], "upstream_timeout");
    assert!(up.seen().is_empty(), "a request went upstream whole");
}

#[tokio::test]
async fn structure_nested_under_a_kept_leaf_field_is_not_passed() {
    let mut c = contact("1");
    c["properties"]["firstname"] = json!({ "v": "Ada", "health_notes": "SECRET-MARKER-asthma" });
    c["properties"]["email"] = json!(["ada1@example.com", { "ssn": "SECRET-MARKER-ssn" }]);
    c["createdAt"] = json!({ "at": "2024", "dob": "SECRET-MARKER-dob" });
    let up = Upstream::replying(Reply::json(&json!({ "results": [c] }))).await;
    let gw = gateway(&up).start().await;
    gw.grant("1", "marketing").await;
    let rsp = gw
        .get(LIST)
        .header("x-api-key", NEWSLETTER_KEY)
        .header("x-purpose", "marketing")
        .send()
        .await;
    assert!(rsp.status == 200 || rsp.status == 502, "{}", rsp.text());
    assert!(!rsp.text().contains("SECRET-MARKER"), "{}", rsp.text());
}

#[tokio::test]
async fn connection_naming_gateway_headers_changes_nothing() {
    let up = Upstream::replying(Reply::json(&contacts(&["1"]))).await;
    let gw = gateway(&up).start().await;
    gw.grant("1", "marketing").await;
    // Naming the credentials hop-by-hop neither hides them from the gateway nor drops the
    // framing of the forwarded body.
    let request = format!(
        "POST {SEARCH} HTTP/1.1\r\nhost: gw\r\n\
         connection: close, content-length, x-purpose, x-api-key, host, x-forwarded-for\r\n\
         x-api-key: {NEWSLETTER_KEY}\r\nx-purpose: marketing\r\ncontent-length: 2\r\n\r\n{{}}"
    );
    let rsp = raw_exchange(gw.addr, request.as_bytes()).await;
    assert_eq!(raw_json(&rsp), json!({ "results": [marketing_view("1")] }));
    assert_no_marketing_leak(&String::from_utf8_lossy(&rsp));
    let seen = up.last();
    assert_eq!(seen.body.as_ref(), b"{}");
    assert_eq!(seen.header("host"), Some(up.addr.to_string().as_str()));
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-api-key"), None);
}

#[tokio::test]
async fn an_http2_host_other_than_the_authority_is_refused() {
    let up = Upstream::replying(Reply::json(&contacts(&["1"]))).await;
    let gw = gateway(&up).start().await;
    let rsp = gw
        .get(LIST)
        .purpose("support")
        .header("host", "crm.internal.example")
        .over(Proto::H2)
        .send()
        .await;
    rsp.assert_refused(400, "bad_request");
    assert!(up.seen().is_empty());
}

/// An HTTP/2 client that answers pings but starts no request keeps no connection slot for
/// ever: after the idle timeout the gateway sends GOAWAY and the connection ends; a client that
/// keeps sending requests is not cut off.
#[tokio::test]
async fn an_idle_http2_connection_that_answers_pings_is_closed() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

    let up = Upstream::replying(Reply::json(&contacts(&["1"]))).await;
    let gw = gateway(&up)
        .config(|c| {
            c.timeouts.idle_ms = 400;
            // Pings every 100 ms, answered at once by the client below.
            c.timeouts.client_header_ms = 100;
        })
        .start()
        .await;
    let request = || {
        http::Request::builder()
            .uri(format!("http://{}{LIST}", gw.addr))
            .header("x-api-key", APP_KEY)
            .header("x-purpose", "support")
            .body(Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    let open = || async {
        let io = TokioIo::new(TcpStream::connect(gw.addr).await.unwrap());
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake::<_, Empty<bytes::Bytes>>(io)
            .await
            .unwrap();
        (sender, tokio::spawn(conn))
    };

    // Busy for three idle periods: never cut off.
    let (mut sender, conn) = open().await;
    for _ in 0..12 {
        let rsp = sender.send_request(request()).await.unwrap();
        assert_eq!(rsp.status(), 200);
        rsp.into_body().collect().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!conn.is_finished(), "a busy HTTP/2 connection was closed");

    // Then idle: the connection ends soon after the idle timeout.
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(3), conn)
        .await
        .expect("an idle HTTP/2 connection stays open")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(150));
}

both!(the_header_count_limit_holds_over_both_protocols);
async fn the_header_count_limit_holds_over_both_protocols(proto: Proto) {
    let up = Upstream::replying(Reply::json(&contacts(&["1"]))).await;
    let gw = gateway(&up)
        .config(|c| c.limits.max_headers = 20)
        .start()
        .await;
    let with = |n: usize| {
        let mut call = gw.get(LIST).purpose("support").over(proto);
        for i in 0..n {
            call = call.header(&format!("x-h{i}"), "1");
        }
        call
    };
    let (status, _, _) = with(30).exchange().await;
    assert_eq!(status, 431);
    assert!(up.seen().is_empty(), "nothing went upstream");
    assert_eq!(with(10).send().await.status, 200);
}

#[tokio::test]
async fn a_body_with_more_records_than_the_limit_is_refused() {
    let list = |n: usize| {
        let ids: Vec<String> = (0..n).map(|i| i.to_string()).collect();
        contacts(&ids.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let up = Upstream::serve(move |seen| {
        if seen.target.contains("many") {
            Reply::json(&list(400))
        } else if seen.target.contains("few") {
            Reply::json(&list(3))
        } else {
            Reply::json(&list(5))
        }
    })
    .await;
    let gw = gateway(&up)
        .config(|c| c.limits.max_records = 3)
        .start()
        .await;
    let rsp = gw
        .get(&format!("{LIST}?n=few"))
        .purpose("support")
        .send()
        .await;
    assert_eq!(rsp.ok_json()["results"].as_array().unwrap().len(), 3);
    // Over the limit before any output: refused.
    let rsp = gw.get(LIST).purpose("support").send().await;
    rsp.assert_refused(502, "body_too_large");
    // Over the limit after output started (a body larger than what is held before the head):
    // the transfer breaks, it never completes as if the list were whole.
    let gw = gateway(&up)
        .config(|c| c.limits.max_records = 300)
        .start()
        .await;
    let (status, _, body) = gw
        .get(&format!("{LIST}?n=many"))
        .purpose("support")
        .exchange()
        .await;
    assert!(
        status == 502 || body.is_err(),
        "{status}: a list over the record limit completed"
    );
}

#[tokio::test]
async fn long_strings_are_bounded_by_the_record_limit() {
    let mut long = contact("1");
    long["properties"]["internal"] = json!(format!("SECRET-MARKER{}", "x".repeat(200_000)));
    let in_record = json!({ "results": [long], "paging": {} });
    let mut in_envelope = contacts(&["1"]);
    in_envelope["debug"] = json!(format!("SECRET-MARKER{}", "y".repeat(200_000)));
    let up = Upstream::serve(move |seen| {
        if seen.target.contains("envelope") {
            Reply::json(&in_envelope)
        } else {
            Reply::json(&in_record)
        }
    })
    .await;
    let gw = gateway(&up)
        .config(|c| c.limits.max_record_bytes = 64 * 1024)
        .start()
        .await;
    for target in [LIST.to_owned(), format!("{LIST}?at=envelope")] {
        let rsp = gw.get(&target).purpose("support").send().await;
        rsp.assert_refused(502, "body_too_large");
        assert!(!rsp.text().contains("SECRET-MARKER"));
    }
    // Under the limit, the same bodies pass, the long string dropped by the marketing view.
    let gw = gateway(&up).start().await;
    gw.grant("1", "marketing").await;
    for target in [LIST.to_owned(), format!("{LIST}?at=envelope")] {
        let rsp = gw.get(&target).purpose("marketing").send().await;
        assert_eq!(rsp.status, 200, "{target}");
        assert!(!rsp.text().contains("SECRET-MARKER"));
    }
}

/// Clients that stop reading their responses (here: many pipelined requests, never read) are
/// dropped once idle, graceful close included, so they cannot hold every connection slot: the
/// admin API keeps answering.
#[tokio::test]
async fn clients_that_never_read_do_not_hold_the_slots_for_ever() {
    let up = Upstream::replying(Reply::json(&contacts(&["1"]))).await;
    let gw = gateway(&up)
        .admin()
        .config(|c| {
            c.timeouts.client_header_ms = 300;
            c.timeouts.idle_ms = 300;
        })
        .start()
        .await;
    let addr = gw.admin_addr.unwrap();
    let pipelined = "GET /openapi.json HTTP/1.1\r\nHost: a\r\n\r\n".repeat(400);
    let mut stalled = Vec::new();
    // The admin listener's connection cap.
    for _ in 0..64 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(pipelined.as_bytes()).await.unwrap();
        stalled.push(s);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let answered = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(
        answered.is_ok() && raw_status(&out) == 200,
        "the admin API does not answer: {} bytes",
        out.len()
    );
    drop(stalled);
}

/// A CRM search filters on any property, special categories included (HubSpot's
/// `POST /crm/v3/objects/contacts/search` takes `filterGroups` on any property name): which
/// subjects come back then tells a caller each one's special-category value, although the
/// field itself is dropped from every record.
///
/// Ignored: the policy language has no segmentation guard yet (DESIGN.md, "Request-side
/// rules"), so this fails; `cargo test --test e2e -- --ignored a_search_filtering` shows it.
#[tokio::test]
#[ignore = "no segmentation guard: a filter on a special category reaches the CRM"]
async fn a_search_filtering_on_a_special_category_does_not_reveal_it_h1() {
    a_search_filtering_on_a_special_category_does_not_reveal_it(Proto::H1).await;
}

#[tokio::test]
#[ignore = "no segmentation guard: a filter on a special category reaches the CRM"]
async fn a_search_filtering_on_a_special_category_does_not_reveal_it_h2() {
    a_search_filtering_on_a_special_category_does_not_reveal_it(Proto::H2).await;
}

async fn a_search_filtering_on_a_special_category_does_not_reveal_it(proto: Proto) {
    let up = Upstream::serve(|seen| {
        let query: Value = serde_json::from_slice(&seen.body).unwrap_or(Value::Null);
        let wanted = query["filterGroups"][0]["filters"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|f| f["propertyName"] == "health_notes")
            .and_then(|f| f["value"].as_str())
            .map(str::to_owned);
        let mut diabetic = contact("2");
        diabetic["properties"]["health_notes"] = json!("diabetes");
        let all = [contact("1"), diabetic];
        let results: Vec<Value> = all
            .into_iter()
            .filter(|c| {
                wanted
                    .as_deref()
                    .is_none_or(|w| c["properties"]["health_notes"] == w)
            })
            .collect();
        Reply::json(&json!({ "results": results, "total": results.len() }))
    })
    .await;
    let gw = gateway(&up).start().await;
    gw.grant("1", "marketing").await;
    gw.grant("2", "marketing").await;
    let mut answers = Vec::new();
    for value in ["asthma", "diabetes"] {
        let filter = json!({
            "filterGroups": [{ "filters": [
                { "propertyName": "health_notes", "operator": "EQ", "value": value }
            ]}]
        });
        let rsp = gw
            .call(Method::POST, SEARCH)
            .over(proto)
            .header("x-api-key", NEWSLETTER_KEY)
            .header("x-purpose", "marketing")
            .json(&filter)
            .send()
            .await;
        assert!(!rsp.text().contains("asthma") && !rsp.text().contains("diabetes"));
        let ids: Vec<Value> = if rsp.status == 200 {
            rsp.json()["results"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| r["id"].clone())
                .collect()
        } else {
            Vec::new()
        };
        println!("filter {value}: {} {ids:?}", rsp.status);
        answers.push((rsp.status, ids));
    }
    // Marketing may not use health data: the answer must not depend on it.
    assert_eq!(
        answers[0], answers[1],
        "a filter on a special category told the subjects apart"
    );
}
