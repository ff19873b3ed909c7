//! What goes upstream, HEAD, broken transfers seen on the wire, and draining on shutdown.

use std::time::Duration;

use http::Method;
use serde_json::json;

use crate::both;
use crate::fail_closed::large_list;
use crate::support::{
    APP_KEY, Proto, Reply, Upstream, contact, contacts, gateway, raw_exchange, raw_status,
};

#[tokio::test]
async fn requests_go_upstream_with_end_to_end_headers_only() {
    let up = Upstream::replying(Reply::json(&contacts(&["1"]))).await;
    let gw = gateway(&up).start().await;
    let request = format!(
        "GET /crm/v3/objects/contacts?limit=2&after=x HTTP/1.1\r\n\
         host: gateway.example\r\n\
         connection: close, x-hop\r\n\
         x-hop: secret\r\n\
         keep-alive: timeout=5\r\n\
         te: trailers\r\n\
         proxy-authorization: Basic c2VjcmV0\r\n\
         x-api-key: {APP_KEY}\r\n\
         x-purpose: support\r\n\
         x-forwarded-for: 203.0.113.9\r\n\
         x-forwarded-proto: https\r\n\
         x-forwarded-host: evil.example\r\n\
         forwarded: for=203.0.113.9\r\n\
         x-http-method-override: DELETE\r\n\
         range: bytes=0-10\r\n\
         if-range: \"v1\"\r\n\
         if-none-match: \"v1\"\r\n\
         if-modified-since: Tue, 01 Apr 2025 00:00:00 GMT\r\n\
         accept-encoding: gzip, br\r\n\
         x-custom: kept\r\n\r\n"
    );
    let rsp = raw_exchange(gw.addr, request.as_bytes()).await;
    assert_eq!(raw_status(&rsp), 200, "{}", String::from_utf8_lossy(&rsp));
    let seen = up.last();
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.target, "/crm/v3/objects/contacts?limit=2&after=x");
    for gone in [
        "x-hop",
        "keep-alive",
        "te",
        "proxy-authorization",
        "x-api-key",
        "x-purpose",
        "forwarded",
        "x-http-method-override",
        "range",
        "if-range",
        "if-none-match",
        "if-modified-since",
    ] {
        assert_eq!(seen.header(gone), None, "{gone} went upstream");
    }
    assert_ne!(seen.header("connection").unwrap_or(""), "close, x-hop");
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.headers.get_all("x-forwarded-for").iter().count(), 1);
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("gateway.example"));
    assert_eq!(seen.header("host"), Some(up.addr.to_string().as_str()));
    assert_eq!(seen.header("accept-encoding"), Some("identity"));
    assert_eq!(seen.header("x-custom"), Some("kept"));
}

both!(forwarding_headers_are_set_by_the_gateway);
async fn forwarding_headers_are_set_by_the_gateway(proto: Proto) {
    let up = Upstream::replying(Reply::json(&contacts(&["1"]))).await;
    let gw = gateway(&up).start().await;
    let rsp = gw
        .get("/crm/v3/objects/contacts")
        .purpose("support")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .header("if-none-match", "\"v1\"")
        .over(proto)
        .send()
        .await;
    assert_eq!(rsp.status, 200);
    let seen = up.last();
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-api-key"), None);
    assert_eq!(seen.header("x-purpose"), None);
    assert_eq!(seen.header("if-none-match"), None);
}

both!(a_passthrough_route_keeps_conditional_headers);
async fn a_passthrough_route_keeps_conditional_headers(proto: Proto) {
    let up = Upstream::replying(Reply::bytes("ok").header("content-type", "text/plain")).await;
    let gw = gateway(&up).start().await;
    let rsp = gw
        .get("/health")
        .header("range", "bytes=0-1")
        .over(proto)
        .send()
        .await;
    assert_eq!(rsp.status, 200);
    assert_eq!(up.last().header("range"), Some("bytes=0-1"));
}

both!(a_post_body_is_forwarded_on_a_post_route);
async fn a_post_body_is_forwarded_on_a_post_route(proto: Proto) {
    let up = Upstream::replying(Reply::json(&contacts(&["1"]))).await;
    let gw = gateway(&up).start().await;
    let query = r#"{"filterGroups":[{"filters":[{"propertyName":"city","value":"London"}]}]}"#;
    let rsp = gw
        .call(
            Method::POST,
            "/crm/v3/objects/contacts/search?archived=false",
        )
        .purpose("analytics")
        .header("content-type", "application/json")
        .body(query)
        .over(proto)
        .send()
        .await;
    assert_eq!(
        rsp.ok_json()["results"][0]["properties"],
        json!({ "city": "London" })
    );
    let seen = up.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(
        seen.target,
        "/crm/v3/objects/contacts/search?archived=false"
    );
    assert_eq!(seen.body, query.as_bytes());
    assert_eq!(seen.header("content-type"), Some("application/json"));
}

both!(head_answers_as_get_would_without_a_body);
async fn head_answers_as_get_would_without_a_body(proto: Proto) {
    let up = Upstream::replying(Reply::json(&contact("1")).header("etag", "\"unredacted\"")).await;
    let gw = gateway(&up).start().await;
    let path = "/crm/v3/objects/contacts/1";
    let head = || gw.call(Method::HEAD, path).purpose("marketing").over(proto);
    // No consent: refused, as GET would be.
    let rsp = head().send().await;
    assert_eq!(rsp.status, 403);
    assert!(rsp.body.is_empty());
    assert_eq!(rsp.header("etag"), None);
    assert_eq!(up.last().method, "GET", "HEAD is examined as GET upstream");
    let refused = gw.get(path).purpose("marketing").over(proto).send().await;
    refused.assert_refused(403, "no_lawful_basis");

    gw.grant("1", "marketing").await;
    let get = gw.get(path).purpose("marketing").over(proto).send().await;
    let rsp = head().send().await;
    assert_eq!(rsp.status, 200);
    assert!(rsp.body.is_empty());
    assert_eq!(rsp.header("etag"), None);
    assert_eq!(rsp.header("content-type"), Some("application/json"));
    let unredacted = contact("1").to_string().len().to_string();
    let len = rsp.header("content-length").unwrap();
    assert_ne!(len, unredacted, "the length of the unredacted body");
    assert_eq!(len, get.body.len().to_string(), "the length GET has");
    assert!(rsp.header("cache-control").unwrap().contains("private"));
}

both!(head_on_a_list_reports_the_length_of_the_redacted_body);
async fn head_on_a_list_reports_the_length_of_the_redacted_body(proto: Proto) {
    let up = Upstream::replying(Reply::json(&contacts(&["1", "2"]))).await;
    let gw = gateway(&up).start().await;
    let rsp = gw
        .call(Method::HEAD, "/crm/v3/objects/contacts")
        .purpose("marketing")
        .over(proto)
        .send()
        .await;
    assert_eq!(rsp.status, 200);
    assert!(rsp.body.is_empty());
    let get = gw
        .get("/crm/v3/objects/contacts")
        .purpose("marketing")
        .over(proto)
        .send()
        .await;
    assert_eq!(
        get.ok_json()["results"],
        json!([]),
        "no consent: both omitted"
    );
    let unredacted = contacts(&["1", "2"]).to_string().len().to_string();
    assert_ne!(rsp.header("content-length"), Some(unredacted.as_str()));
    assert_eq!(
        rsp.header("content-length"),
        Some(get.body.len().to_string().as_str())
    );
}

/// A raw HTTP/1.1 GET of the contacts list for `support`, closing after the response.
fn raw_list_request() -> Vec<u8> {
    format!(
        "GET /crm/v3/objects/contacts HTTP/1.1\r\nhost: gw\r\nx-api-key: {APP_KEY}\r\n\
         x-purpose: support\r\nconnection: close\r\n\r\n"
    )
    .into_bytes()
}

#[tokio::test]
async fn a_broken_stream_ends_without_the_last_chunk_on_the_wire() {
    let body = large_list();
    let keep = body.len() * 3 / 4;
    let mut raw = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(&body.as_bytes()[..keep]);
    let up = Upstream::raw(raw).await;
    let gw = gateway(&up).start().await;
    let rsp = raw_exchange(gw.addr, &raw_list_request()).await;
    let text = String::from_utf8_lossy(&rsp).to_ascii_lowercase();
    assert_eq!(raw_status(&rsp), 200);
    assert!(
        text.contains("transfer-encoding: chunked"),
        "{}",
        &text[..300]
    );
    assert!(!text.contains("content-length"));
    assert!(!rsp.ends_with(b"0\r\n\r\n"), "the transfer looks complete");
    assert!(
        rsp.len() > 64 * 1024,
        "output had started: {} bytes",
        rsp.len()
    );
}

#[tokio::test]
async fn a_complete_stream_ends_with_the_last_chunk_on_the_wire() {
    let up = Upstream::replying(
        Reply::bytes(large_list())
            .header("content-type", "application/json")
            .in_parts(16 * 1024, Duration::ZERO),
    )
    .await;
    let gw = gateway(&up).start().await;
    let rsp = raw_exchange(gw.addr, &raw_list_request()).await;
    assert_eq!(raw_status(&rsp), 200);
    assert!(rsp.ends_with(b"0\r\n\r\n"));
}

#[tokio::test]
async fn shutdown_drains_a_request_in_flight() {
    let reply = Reply::json(&contacts(&["1", "2"])).in_parts(100, Duration::from_millis(60));
    let up = Upstream::replying(reply).await;
    let mut gw = gateway(&up).start().await;
    let call = gw.get("/crm/v3/objects/contacts").purpose("support");
    let in_flight = tokio::spawn(call.send());
    up.wait_for(1).await;
    let server = gw.shutdown();
    let rsp = in_flight.await.expect("the request task");
    assert_eq!(rsp.ok_json()["results"].as_array().unwrap().len(), 2);
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server stopped after draining")
        .expect("the server task");
    // New connections are no longer accepted.
    assert!(tokio::net::TcpStream::connect(gw.addr).await.is_err());
}

both!(an_oversized_request_body_is_refused);
async fn an_oversized_request_body_is_refused(proto: Proto) {
    let up = Upstream::replying(Reply::json(&contacts(&["1"]))).await;
    let gw = gateway(&up)
        .config(|c| c.limits.max_request_body_bytes = 1024)
        .start()
        .await;
    let rsp = gw
        .call(Method::POST, "/crm/v3/objects/contacts/search")
        .purpose("support")
        .body(vec![b' '; 4096])
        .over(proto)
        .send()
        .await;
    rsp.assert_refused(413, "request_too_large");
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn an_oversized_chunked_request_body_is_refused() {
    let up = Upstream::replying(Reply::json(&contacts(&["1"]))).await;
    let gw = gateway(&up)
        .config(|c| c.limits.max_request_body_bytes = 1024)
        .start()
        .await;
    let mut request = format!(
        "POST /crm/v3/objects/contacts/search HTTP/1.1\r\nhost: gw\r\nx-api-key: {APP_KEY}\r\n\
         x-purpose: support\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..4 {
        request.extend_from_slice(b"400\r\n");
        request.extend_from_slice(&[b' '; 0x400]);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let rsp = raw_exchange(gw.addr, &request).await;
    let text = String::from_utf8_lossy(&rsp);
    assert_eq!(raw_status(&rsp), 413, "{text}");
    assert!(text.contains("\"request_too_large\""), "{text}");
}

#[tokio::test]
async fn two_host_headers_are_refused() {
    let up = Upstream::replying(Reply::json(&contacts(&["1"]))).await;
    let gw = gateway(&up).start().await;
    let request = format!(
        "GET /crm/v3/objects/contacts HTTP/1.1\r\nhost: gw\r\nhost: other\r\nx-api-key: {APP_KEY}\r\n\
         x-purpose: support\r\nconnection: close\r\n\r\n"
    );
    let rsp = raw_exchange(gw.addr, request.as_bytes()).await;
    assert_eq!(raw_status(&rsp), 400, "{}", String::from_utf8_lossy(&rsp));
    assert!(up.seen().is_empty());
}

both!(head_on_a_passthrough_route);
async fn head_on_a_passthrough_route(proto: Proto) {
    let up = Upstream::replying(Reply::bytes("ok").header("content-type", "text/plain")).await;
    let gw = gateway(&up).start().await;
    let rsp = gw.call(Method::HEAD, "/health").over(proto).send().await;
    assert_eq!(rsp.status, 200);
    assert!(rsp.body.is_empty());
    assert_eq!(up.last().method, "HEAD");
}
