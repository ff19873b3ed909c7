//! Links that name the upstream, written to name the gateway instead.
//!
//! A CRM writes its paging links and the URLs of new records from the host it was asked on, and
//! the gateway asks with the upstream's own name: an OData service's `@odata.nextLink` then
//! leads a client straight to the CRM, past the gateway, or nowhere (a client library that joins
//! the link to its own base URL). As a reverse proxy rewrites `Location`, the gateway writes its
//! own origin in place of the upstream's at the start of the strings of kept envelope members.

use std::borrow::Cow;
use std::sync::Arc;

/// The origins that stand for the upstream in links, and the one written in their place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Links {
    /// The upstream's base URL as the gateway asks it (`scheme://authority` and any path
    /// prefix), in each of its spellings.
    upstream: Arc<[Box<str>]>,
    /// Where the client reached the gateway.
    public: Public,
}

/// The origin the client reached the gateway at: shared, or the request's own host. Either is
/// kept as it came (no copy per request) and written out only where a link is rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Public {
    /// `scheme://authority`, without a trailing `/`.
    Origin(Arc<str>),
    /// A host and port, reached over `http://`.
    Host(http::HeaderValue),
}

impl Links {
    /// Links from any of `upstream` (`http://` base URLs without a trailing `/`) to `public`.
    pub fn new(upstream: Arc<[Box<str>]>, public: Public) -> Self {
        Self { upstream, public }
    }

    /// `text` with the upstream's origin at its start replaced by the gateway's; `None` when it
    /// does not start with one (followed by the end, `/`, `?` or `#`).
    pub fn rewrite(&self, text: &str) -> Option<String> {
        let rest = self.upstream.iter().find_map(|base| {
            // Scheme and host in any case; a path prefix exactly, as the gateway sends paths.
            let path_at = base
                .find("://")
                .and_then(|i| Some(i + 3 + base.get(i + 3..)?.find('/')?))
                .unwrap_or(base.len());
            let same = text
                .get(..path_at)?
                .eq_ignore_ascii_case(base.get(..path_at)?)
                && text.get(path_at..base.len())? == base.get(path_at..)?;
            let rest = text.get(base.len()..)?;
            (same && matches!(rest.bytes().next(), None | Some(b'/' | b'?' | b'#'))).then_some(rest)
        })?;
        Some(match &self.public {
            Public::Origin(origin) => format!("{origin}{rest}"),
            Public::Host(host) => format!("http://{}{rest}", host.to_str().ok()?),
        })
    }

    /// Rewrites the strings of the JSON text `out[from..]` (valid JSON, as the scanner wrote
    /// it) that start with the upstream's origin.
    pub fn rewrite_json(&self, out: &mut Vec<u8>, from: usize) {
        let mut i = from;
        // Where the text was rewritten up to, once it has been: the rewritten tail.
        let mut rebuilt: Option<(Vec<u8>, usize)> = None;
        while let Some(&b) = out.get(i) {
            if b != b'"' {
                i += 1;
                continue;
            }
            let start = i + 1;
            let Some((end, escaped)) = super::scan::string_at(out, i) else {
                // Not a string after all: the text was not the scanner's. Left as it is.
                return;
            };
            // A key is followed by its colon: keys are names, not links, and stay as they are.
            let key = out
                .get(end + 1..)
                .unwrap_or_default()
                .iter()
                .find(|c| !super::scan::is_ws(**c))
                == Some(&b':');
            let raw = out.get(start..end).unwrap_or_default();
            // Every base URL starts with `http` (the upstream is an `http://` URL): only a string
            // starting with `h`, `H` or an escape (`\u0068`) can be a link to rewrite.
            let text: Option<Cow<'_, str>> = match raw.first() {
                _ if key => None,
                // With its quotes: the text of a complete string (a leading `\\` is an escape).
                Some(b'\\' | b'h' | b'H') if escaped => {
                    super::scan::string_text(out.get(i..=end).unwrap_or_default()).map(Cow::Owned)
                }
                Some(b'h' | b'H') => std::str::from_utf8(raw).ok().map(Cow::Borrowed),
                _ => None,
            };
            if let Some(new) = text.as_deref().and_then(|t| self.rewrite(t)) {
                let (tail, copied) = rebuilt.get_or_insert_with(|| (Vec::new(), from));
                tail.extend_from_slice(out.get(*copied..start).unwrap_or_default());
                super::transform::write_contents(new.as_bytes(), tail);
                *copied = end;
            }
            i = end + 1;
        }
        if let Some((mut tail, copied)) = rebuilt {
            tail.extend_from_slice(out.get(copied..).unwrap_or_default());
            out.truncate(from);
            out.append(&mut tail);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links() -> Links {
        Links::new(
            Arc::from(vec![Box::from("http://crm.internal:8000")]),
            Public::Origin(Arc::from("https://gateway.example.com")),
        )
    }

    fn rewritten(json: &str) -> String {
        let mut out = b"[1,".to_vec();
        out.extend_from_slice(json.as_bytes());
        links().rewrite_json(&mut out, 3);
        String::from_utf8(out).unwrap_or_default()
    }

    #[test]
    fn links_naming_the_upstream_name_the_gateway() {
        let l = links();
        assert_eq!(
            l.rewrite("http://crm.internal:8000/api/data/v9.2/contacts?$skiptoken=x")
                .as_deref(),
            Some("https://gateway.example.com/api/data/v9.2/contacts?$skiptoken=x")
        );
        assert_eq!(
            l.rewrite("HTTP://CRM.internal:8000").as_deref(),
            Some("https://gateway.example.com")
        );
        // Another host, another port, a longer name, a relative link: left as they are.
        for other in [
            "http://crm.internal:8001/a",
            "http://crm.internal:80000/a",
            "http://crm.internal:8000.evil.example/a",
            "http://crm.internal:8000@evil.example/a",
            "/api/data/v9.2/contacts",
            "https://crm.internal:8000/a",
        ] {
            assert_eq!(l.rewrite(other), None, "{other}");
        }
    }

    #[test]
    fn a_path_prefix_is_compared_exactly() {
        let l = Links::new(
            Arc::from(vec![Box::from("http://crm.internal:8000/api")]),
            Public::Origin(Arc::from("https://gateway.example.com")),
        );
        assert_eq!(
            l.rewrite("HTTP://CRM.INTERNAL:8000/api/x").as_deref(),
            Some("https://gateway.example.com/x")
        );
        // Another path: the gateway would send `/x` on as `/api/x`, not `/API/x`.
        assert_eq!(l.rewrite("http://crm.internal:8000/API/x"), None);
        assert_eq!(l.rewrite("http://crm.internal:8000/apix"), None);
    }

    #[test]
    fn strings_of_json_are_rewritten_in_place() {
        assert_eq!(
            rewritten(r#"{"next":{"after":"2","link":"http://crm.internal:8000/x?after=2"}}]"#),
            r#"[1,{"next":{"after":"2","link":"https://gateway.example.com/x?after=2"}}]"#
        );
        // Written with escaped slashes: read as text, written plainly.
        assert_eq!(
            rewritten(r#""http:\/\/crm.internal:8000\/x","http://crm.internal:8000""#),
            r#"[1,"https://gateway.example.com/x","https://gateway.example.com""#
        );
        // An upper-case scheme, and a first letter written as an escape.
        assert_eq!(
            rewritten(r#""HTTP://CRM.internal:8000/x","\u0068ttp://crm.internal:8000/y""#),
            r#"[1,"https://gateway.example.com/x","https://gateway.example.com/y""#
        );
        // What the rest of a rewritten link holds is escaped again.
        assert_eq!(
            rewritten(r#""http://crm.internal:8000/x?q=\"a\"\n""#),
            r#"[1,"https://gateway.example.com/x?q=\"a\"\n""#
        );
        // Keys, other strings and escapes elsewhere stay byte for byte.
        let same = r#"{"http://crm.internal:8000/k" : "a\"b","n":[1,"\u00e9"]}]"#;
        assert_eq!(rewritten(same), format!("[1,{same}"));
        assert_eq!(rewritten(r#""a\"b\\""#), r#"[1,"a\"b\\""#);
    }
}
