//! The request as it goes upstream: end-to-end headers only, the gateway's own credentials
//! removed, forwarding headers set by the gateway alone.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Hop-by-hop headers (RFC 9110 §7.6.1) and their common non-standard kin.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
];

/// Headers a client could use to make the upstream see another request than the one the
/// gateway examined (another method or URL), or that belong to the gateway alone.
const NEVER_FORWARDED: &[&str] = &[
    "x-api-key",
    "x-purpose",
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-real-ip",
    "expect",
    "host",
];

/// Headers that would let the upstream answer with something other than the whole current
/// representation (a range, a 304), which the gateway could not examine.
const CONDITIONAL: &[&str] = &["range", "if-range", "if-none-match", "if-modified-since"];

/// Removes hop-by-hop headers, including those named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

/// The headers sent upstream for a client request.
pub fn upstream_headers(
    mut headers: HeaderMap,
    client: SocketAddr,
    original_host: Option<HeaderValue>,
    upstream_host: &HeaderValue,
    protected: bool,
) -> HeaderMap {
    strip_hop_by_hop(&mut headers);
    for name in NEVER_FORWARDED {
        headers.remove(*name);
    }
    if protected {
        for name in CONDITIONAL {
            headers.remove(*name);
        }
        // Asked for plainly; a coded answer is still decoded, an unknown one refused.
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
    }
    headers.insert(header::HOST, upstream_host.clone());
    // The gateway is the edge: forwarding headers from clients are replaced, never appended.
    if let Ok(ip) = HeaderValue::from_str(&client.ip().to_string()) {
        headers.insert("x-forwarded-for", ip);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    if let Some(host) = original_host {
        headers.insert("x-forwarded-host", host);
    }
    headers
}
