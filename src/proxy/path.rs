//! Request-target normalisation: the one path that is both matched against the policy and sent
//! to the upstream.
//!
//! RFC 3986 §6.2.2: percent-encoded unreserved characters are decoded, the hex digits of the
//! others upper-cased, dot segments removed (§5.2.4), and runs of slashes collapsed. Anything
//! whose meaning could differ between the gateway and the upstream is refused instead of being
//! guessed at: encoded slashes and backslashes, NUL, `;` parameters, bad escapes, and escapes
//! that do not decode to UTF-8.

/// Why a request target was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the request path must start with `/`")]
    NotAbsolute,
    #[error("the request path holds an encoded slash or backslash")]
    EncodedSeparator,
    #[error("the request path holds a NUL byte")]
    Nul,
    #[error("the request path holds a backslash")]
    Backslash,
    #[error("the request path holds a `;` parameter")]
    Parameter,
    #[error("the request path holds a malformed percent-encoding")]
    BadEscape,
    #[error("the request path does not decode to UTF-8")]
    NotUtf8,
}

/// A normalised path: its text and its decoded segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalPath {
    /// The normalised path as sent upstream (still percent-encoded where needed).
    pub text: String,
    /// Each segment, fully percent-decoded, for matching.
    pub segments: Vec<String>,
}

/// Normalises the path of a request target (without its query).
pub fn normalise(path: &str) -> Result<NormalPath, PathError> {
    match already_normal(path) {
        Some(normal) => Ok(normal),
        None => normalise_any(path),
    }
}

/// The common case: a path that is its own normal form (no escapes, no bytes to escape or
/// refuse, no empty or dot segments but a final empty one) is taken as it is, without
/// decoding segment by segment. `None`: the path needs the general way.
fn already_normal(path: &str) -> Option<NormalPath> {
    let rest = path.strip_prefix('/')?;
    let plain = |b: &u8| !matches!(b, b'%' | 0 | b'\\' | b';' | 0x80..);
    if !rest.as_bytes().iter().all(plain) {
        return None;
    }
    let mut segments: Vec<String> = Vec::new();
    if !rest.is_empty() {
        let mut parts = rest.split('/').peekable();
        while let Some(segment) = parts.next() {
            let last = parts.peek().is_none();
            if (segment.is_empty() && !last) || segment == "." || segment == ".." {
                return None;
            }
            segments.push(segment.to_owned());
        }
    }
    Some(NormalPath {
        text: path.to_owned(),
        segments,
    })
}

/// Normalises any path, segment by segment.
fn normalise_any(path: &str) -> Result<NormalPath, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let mut out: Vec<(String, String)> = Vec::new();
    let raw_segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = raw_segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, raw) in raw_segments.iter().enumerate() {
        let (encoded, decoded) = normalise_segment(raw)?;
        match decoded.as_str() {
            // Empty segments (`//`) are collapsed; a final empty one is a trailing slash.
            "" => trailing_slash = i == last,
            "." => trailing_slash = i == last,
            ".." => {
                out.pop();
                trailing_slash = i == last;
            }
            _ => {
                out.push((encoded, decoded));
                trailing_slash = false;
            }
        }
    }
    let mut text = String::with_capacity(path.len());
    for (encoded, _) in &out {
        text.push('/');
        text.push_str(encoded);
    }
    if trailing_slash || out.is_empty() {
        text.push('/');
    }
    let mut segments: Vec<String> = out.into_iter().map(|(_, d)| d).collect();
    if trailing_slash && !segments.is_empty() {
        // A trailing slash is significant: it names another resource, which templates do not
        // match.
        segments.push(String::new());
    }
    Ok(NormalPath { text, segments })
}

/// One segment: (its normalised encoded form, its decoded text).
fn normalise_segment(raw: &str) -> Result<(String, String), PathError> {
    let bytes = raw.as_bytes();
    let mut encoded = String::with_capacity(raw.len());
    let mut decoded: Vec<u8> = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEscape)?;
                let value = std::str::from_utf8(hex)
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or(PathError::BadEscape)?;
                match value {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    0 => return Err(PathError::Nul),
                    b';' => return Err(PathError::Parameter),
                    _ => {}
                }
                if is_unreserved(value) {
                    encoded.push(char::from(value));
                } else {
                    encoded.push('%');
                    encoded.push_str(&format!("{value:02X}"));
                }
                decoded.push(value);
                i += 3;
            }
            0 => return Err(PathError::Nul),
            b'\\' => return Err(PathError::Backslash),
            b';' => return Err(PathError::Parameter),
            // A raw byte of a multi-byte character is sent percent-encoded, as its escape
            // would be: pushing it as a `char` would re-encode it as another character.
            0x80.. => {
                encoded.push('%');
                encoded.push_str(&format!("{b:02X}"));
                decoded.push(b);
                i += 1;
            }
            _ => {
                encoded.push(char::from(b));
                decoded.push(b);
                i += 1;
            }
        }
    }
    let decoded = String::from_utf8(decoded).map_err(|_| PathError::NotUtf8)?;
    Ok((encoded, decoded))
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, PathError> {
        normalise(p).map(|n| n.text)
    }

    proptest::proptest! {
        /// The way for paths already normal gives what the general way gives, on paths made
        /// of the characters that decide between them.
        #[test]
        fn paths_already_normal_are_taken_as_the_general_way_takes_them(
            absolute in proptest::bool::weighted(0.9),
            segments in proptest::collection::vec(
                proptest::sample::select(vec![
                    "", ".", "..", "a", "b.c", "~", "%2e", "%2E.", "%41", "a;b", "é", "\\", "-",
                ]),
                0..6,
            )
        ) {
            let path = format!("{}{}", if absolute { "/" } else { "" }, segments.join("/"));
            let general = normalise_any(&path);
            if let Some(fast) = already_normal(&path) {
                proptest::prop_assert_eq!(&Ok(fast), &general);
            }
            proptest::prop_assert_eq!(normalise(&path), general);
        }
    }

    #[test]
    fn common_paths_take_the_short_way() {
        for path in [
            "/",
            "/crm/v3/objects/contacts",
            "/crm/v3/objects/contacts/",
            "/a.b/c~d",
        ] {
            assert!(already_normal(path).is_some(), "{path}");
        }
        for path in [
            "/a//b", "/a/./b", "/a/..", "/a/%41", "/a;b", "/é", "a", "/a/.",
        ] {
            assert!(already_normal(path).is_none(), "{path}");
        }
    }

    #[test]
    fn normalises_once() {
        let cases = [
            ("/crm/v3/objects/contacts", "/crm/v3/objects/contacts"),
            ("/crm//v3///objects/contacts", "/crm/v3/objects/contacts"),
            (
                "/crm/v3/./objects/x/../contacts",
                "/crm/v3/objects/contacts",
            ),
            ("/crm/v3/objects/contacts/", "/crm/v3/objects/contacts/"),
            (
                "/%63rm/v3/objects/%63ontacts/%31000",
                "/crm/v3/objects/contacts/1000",
            ),
            (
                "/crm/v3/objects/contacts/%2e%2e/companies",
                "/crm/v3/objects/companies",
            ),
            ("/a/%7e%41b", "/a/~Ab"),
            ("/a/b%20c", "/a/b%20c"),
            ("/a/b%c3%a9", "/a/b%C3%A9"),
            ("/../../etc", "/etc"),
            ("/", "/"),
            ("/a/..", "/"),
            ("/a/.", "/a/"),
        ];
        for (input, want) in cases {
            assert_eq!(norm(input).as_deref(), Ok(want), "{input}");
            // Idempotent: the normal form is its own normal form.
            assert_eq!(norm(want).as_deref(), Ok(want), "{want}");
        }
    }

    #[test]
    fn encodes_raw_non_ascii_like_its_escape() {
        // The request line may carry raw UTF-8 (http accepts it): the normal form is the
        // escaped one, so that what is matched is what is sent.
        assert!(http::Uri::try_from("/crm/v3/objects/contacts/é").is_ok());
        for input in [
            "/crm/v3/objects/contacts/é",
            "/crm/v3/objects/contacts/%c3%a9",
        ] {
            let n = normalise(input).unwrap();
            assert_eq!(n.text, "/crm/v3/objects/contacts/%C3%A9", "{input}");
            assert_eq!(n.segments, vec!["crm", "v3", "objects", "contacts", "é"]);
            assert_eq!(normalise(&n.text), Ok(n));
        }
    }

    #[test]
    fn decodes_segments_for_matching() {
        let n = normalise("/a/b%20c/").unwrap();
        assert_eq!(n.segments, vec!["a", "b c", ""]);
        assert_eq!(normalise("/").unwrap().segments, Vec::<String>::new());
    }

    #[test]
    fn refuses_what_could_be_read_two_ways() {
        let cases = [
            (
                "/crm/v3/objects/contacts%2F1000",
                PathError::EncodedSeparator,
            ),
            (
                "/crm/v3/objects/contacts%2f1000",
                PathError::EncodedSeparator,
            ),
            ("/crm%5Cv3", PathError::EncodedSeparator),
            ("/crm\\v3", PathError::Backslash),
            ("/crm%00", PathError::Nul),
            ("/crm/v3;jsessionid=1", PathError::Parameter),
            ("/crm/v3%3Bx", PathError::Parameter),
            ("/crm/%zz", PathError::BadEscape),
            ("/crm/%4", PathError::BadEscape),
            ("/crm/%c0%ae%c0%ae/", PathError::NotUtf8),
            ("/crm/%ff", PathError::NotUtf8),
            ("crm", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
        ];
        for (input, want) in cases {
            assert_eq!(norm(input), Err(want), "{input}");
        }
    }
}
