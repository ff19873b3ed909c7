//! The request as it goes upstream: end-to-end headers only, the gateway's own credentials
//! removed, forwarding headers set by the gateway alone.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

// Header names are parsed once, here: a lookup by a string parses the name every time.

/// Hop-by-hop headers (RFC 9110 §7.6.1) and their common non-standard kin.
static HOP_BY_HOP: [HeaderName; 10] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("http2-settings"),
];

/// Headers a client could use to make the upstream see another request than the one the
/// gateway examined (another method or URL), or that belong to the gateway alone.
static NEVER_FORWARDED: [HeaderName; 17] = [
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("x-purpose"),
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-original-uri"),
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
    header::FORWARDED,
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-real-ip"),
    header::EXPECT,
    header::HOST,
];

/// Headers that would let the upstream answer with something other than the whole current
/// representation (a range, a 304), which the gateway could not examine.
static CONDITIONAL: [HeaderName; 4] = [
    header::RANGE,
    header::IF_RANGE,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

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
    for name in &HOP_BY_HOP {
        headers.remove(name);
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
    for name in &NEVER_FORWARDED {
        headers.remove(name);
    }
    if protected {
        for name in &CONDITIONAL {
            headers.remove(name);
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
        headers.insert(X_FORWARDED_FOR.clone(), ip);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    if let Some(host) = original_host {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
    headers
}
