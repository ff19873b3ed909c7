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
/// gateway examined (another method, URL or client address), or that belong to the gateway
/// alone.
static NEVER_FORWARDED: [HeaderName; 31] = [
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("x-purpose"),
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-original-uri"),
    HeaderName::from_static("x-forwarded-uri"),
    // A WSGI server (gunicorn) takes `SCRIPT_NAME` off the front of the path from a trusted
    // proxy, as the gateway is; frameworks copy `X-Script-Name` there.
    HeaderName::from_static("script-name"),
    HeaderName::from_static("x-script-name"),
    // httpoxy: a CGI upstream reads `Proxy` as `HTTP_PROXY`, the proxy of its own calls.
    HeaderName::from_static("proxy"),
    HeaderName::from_static("x-forwarded-path"),
    HeaderName::from_static("x-original-path"),
    HeaderName::from_static("x-envoy-original-path"),
    HeaderName::from_static("x-original-host"),
    HeaderName::from_static("x-forwarded-server"),
    HeaderName::from_static("x-client-ip"),
    HeaderName::from_static("true-client-ip"),
    HeaderName::from_static("cf-connecting-ip"),
    HeaderName::from_static("x-cluster-client-ip"),
    HeaderName::from_static("fastly-client-ip"),
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
    remove_hop_by_hop_and(headers, |_| false);
}

/// Removes hop-by-hop headers, those named in `Connection`, and those `also` names. For the
/// fixed lists, the fields are looked over once and only the names present are removed (a
/// removal hashes the name). The names a client lists in `Connection` are removed one by one:
/// looking each field up among them would cost fields times names, both the client's choice.
fn remove_hop_by_hop_and(headers: &mut HeaderMap, also: impl Fn(&HeaderName) -> bool) {
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
    let removed = |name: &HeaderName| HOP_BY_HOP.contains(name) || also(name);
    let present: Vec<HeaderName> = headers
        .keys()
        .filter(|name| removed(name) || underscored(name).is_some_and(|n| removed(&n)))
        .cloned()
        .collect();
    for name in present {
        headers.remove(name);
    }
}

/// The name with each `_` written `-`, for a name that holds one. CGI and WSGI servers, and
/// frameworks that read their variables, give `X_Original_URL` and `X-Original-URL` one name
/// (`HTTP_X_ORIGINAL_URL`): an underscore spelling of a removed field must go with it, or it
/// reaches the upstream as that very field.
fn underscored(name: &HeaderName) -> Option<HeaderName> {
    let text = name.as_str();
    if !text.contains('_') {
        return None;
    }
    HeaderName::from_bytes(text.replace('_', "-").as_bytes()).ok()
}

/// The headers sent upstream for a client request.
pub fn upstream_headers(
    mut headers: HeaderMap,
    client: SocketAddr,
    original_host: Option<HeaderValue>,
    upstream_host: &HeaderValue,
    protected: bool,
) -> HeaderMap {
    remove_hop_by_hop_and(&mut headers, |name| {
        NEVER_FORWARDED.contains(name) || (protected && CONDITIONAL.contains(name))
    });
    if protected {
        // Asked for plainly; a coded answer is still decoded, an unknown one refused.
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
    }
    headers.insert(header::HOST, upstream_host.clone());
    // The gateway is the edge: forwarding headers from clients are replaced, never appended.
    if let Some(ip) = ip_value(client.ip()) {
        headers.insert(X_FORWARDED_FOR.clone(), ip);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    if let Some(host) = original_host {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
    headers
}

/// An IP address as a header value, as `Display` writes it (IPv4 without the formatting
/// machinery, which costs more than the rest of the header work).
fn ip_value(ip: std::net::IpAddr) -> Option<HeaderValue> {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut text = [0u8; 15];
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                let mut digits = itoa::Buffer::new();
                let piece = if i == 0 { "" } else { "." };
                for b in piece.bytes().chain(digits.format(octet).bytes()) {
                    *text.get_mut(len)? = b;
                    len += 1;
                }
            }
            HeaderValue::from_bytes(text.get(..len)?).ok()
        }
        std::net::IpAddr::V6(_) => HeaderValue::from_str(&ip.to_string()).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(headers: &HeaderMap) -> Vec<&str> {
        headers.keys().map(HeaderName::as_str).collect()
    }

    /// A map holding every name the gateway removes, each twice, among fields it keeps.
    fn crowded() -> HeaderMap {
        let mut headers = HeaderMap::new();
        let value = HeaderValue::from_static("x");
        headers.append("accept", HeaderValue::from_static("application/json"));
        headers.append(header::CONNECTION, HeaderValue::from_static("close, X-Hop"));
        headers.append(header::CONNECTION, HeaderValue::from_static(" x-other ,"));
        for name in HOP_BY_HOP
            .iter()
            .chain(&NEVER_FORWARDED)
            .chain(&CONDITIONAL)
            .chain(&[
                HeaderName::from_static("x-hop"),
                HeaderName::from_static("x-other"),
            ])
        {
            headers.append(name.clone(), value.clone());
            headers.append(name.clone(), value.clone());
        }
        headers.append("x-custom", HeaderValue::from_static("one"));
        headers.append("x-custom", HeaderValue::from_static("two"));
        headers
    }

    #[test]
    fn ip_addresses_are_written_as_display_writes_them() {
        let mut ips: Vec<std::net::IpAddr> =
            ["0.0.0.0", "255.255.255.255", "10.0.0.1", "192.168.100.7"]
                .iter()
                .map(|s| s.parse().expect("an address"))
                .collect();
        ips.extend(
            (0..=255u8).map(|n| {
                std::net::IpAddr::from(std::net::Ipv4Addr::new(n, 255 - n, n / 10, n % 7))
            }),
        );
        ips.push("::1".parse().expect("an address"));
        ips.push("2001:db8::ffff:192.0.2.1".parse().expect("an address"));
        for ip in ips {
            let value = ip_value(ip).expect("a header value");
            assert_eq!(value.to_str().ok(), Some(ip.to_string().as_str()));
        }
    }

    #[test]
    fn hop_by_hop_fields_and_those_connection_names_are_removed_with_all_their_values() {
        let mut headers = crowded();
        strip_hop_by_hop(&mut headers);
        for name in HOP_BY_HOP
            .iter()
            .map(HeaderName::as_str)
            .chain(["x-hop", "x-other"])
        {
            assert!(!headers.contains_key(name), "{name} is left");
        }
        for name in NEVER_FORWARDED.iter().chain(&CONDITIONAL) {
            assert_eq!(
                headers.get_all(name).iter().count(),
                2,
                "{name} was removed"
            );
        }
        let custom: Vec<_> = headers.get_all("x-custom").iter().collect();
        assert_eq!(custom, ["one", "two"]);
    }

    #[test]
    fn other_rewrite_and_client_address_fields_do_not_reach_the_upstream() {
        // Proxies and frameworks that route on the original path or a path prefix, or trust a
        // client address or a proxy, read these: a client must not set them through the
        // gateway.
        let client: SocketAddr = ([192, 0, 2, 7], 40000).into();
        let upstream = HeaderValue::from_static("crm.internal:8080");
        let mut headers = HeaderMap::new();
        for name in [
            "script_name",
            "x-script-name",
            "proxy",
            "x-forwarded-uri",
            "x-forwarded-path",
            "x-original-path",
            "x-envoy-original-path",
            "x-original-host",
            "x-forwarded-server",
            "x-client-ip",
            "true-client-ip",
            "cf-connecting-ip",
            "x-cluster-client-ip",
            "fastly-client-ip",
        ] {
            headers.append(name, HeaderValue::from_static("/crm/v3/objects/contacts/1"));
        }
        headers.append("x-custom", HeaderValue::from_static("kept"));
        for protected in [false, true] {
            let sent = upstream_headers(headers.clone(), client, None, &upstream, protected);
            let mut seen = names(&sent);
            seen.sort_unstable();
            let mut want = vec!["host", "x-custom", "x-forwarded-for", "x-forwarded-proto"];
            if protected {
                want.push("accept-encoding");
            }
            want.sort_unstable();
            assert_eq!(seen, want, "protected: {protected}");
        }
    }

    #[test]
    fn underscore_spellings_of_removed_fields_are_removed_and_other_underscores_kept() {
        let client: SocketAddr = ([192, 0, 2, 7], 40000).into();
        let upstream = HeaderValue::from_static("crm.internal:8080");
        let mut headers = HeaderMap::new();
        for name in HOP_BY_HOP
            .iter()
            .chain(&NEVER_FORWARDED)
            .chain(&CONDITIONAL)
        {
            let spelled = name.as_str().replace('-', "_");
            let name = HeaderName::from_bytes(spelled.as_bytes()).expect("a header name");
            headers.append(name, HeaderValue::from_static("x"));
        }
        headers.append("x_custom_id", HeaderValue::from_static("kept"));
        let headers = upstream_headers(headers, client, None, &upstream, true);
        let mut seen = names(&headers);
        seen.sort_unstable();
        let want = [
            "accept-encoding",
            "host",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x_custom_id",
        ];
        assert_eq!(seen, want);
    }

    #[test]
    fn the_upstream_sees_no_field_it_must_not_and_the_gateways_forwarding_fields_once() {
        let client: SocketAddr = ([192, 0, 2, 7], 40000).into();
        let upstream = HeaderValue::from_static("crm.internal:8080");
        for protected in [false, true] {
            let original = Some(HeaderValue::from_static("gateway.example"));
            let headers = upstream_headers(crowded(), client, original, &upstream, protected);
            let mut expected = vec!["accept", "x-custom", "host", "x-forwarded-for"];
            expected.extend(["x-forwarded-proto", "x-forwarded-host"]);
            if protected {
                expected.push("accept-encoding");
            } else {
                expected.extend(CONDITIONAL.iter().map(HeaderName::as_str));
            }
            let mut seen = names(&headers);
            seen.sort_unstable();
            expected.sort_unstable();
            assert_eq!(seen, expected, "protected: {protected}");
            for (name, value) in [
                ("host", "crm.internal:8080"),
                ("x-forwarded-for", "192.0.2.7"),
                ("x-forwarded-proto", "http"),
                ("x-forwarded-host", "gateway.example"),
            ] {
                let values: Vec<_> = headers.get_all(name).iter().collect();
                assert_eq!(values, [value], "{name}");
            }
        }
    }
}
