//! Value transformations of field rules: mask, hash, generalise, constant, null.
//!
//! A transform never returns the original value of a type it does not fit: such a value becomes
//! `null`.

use std::borrow::Cow;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::policy::compiled::Transform;

/// A value as transforms see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scalar<'a> {
    /// A string, unescaped.
    Str(Cow<'a, str>),
    /// A number, as its source text.
    Num(&'a str),
    /// An object, array, boolean or null.
    Other,
}

/// Writes the transformed `value` to `out` as JSON.
pub fn write(transform: &Transform, value: &Scalar<'_>, out: &mut Vec<u8>) {
    match transform {
        Transform::Null => out.extend_from_slice(b"null"),
        Transform::Constant(json) => out.extend_from_slice(json.as_bytes()),
        Transform::Mask { first, last, with } => match text_of(value) {
            Some(text) => write_mask(text, *first, *last, *with, out),
            None => out.extend_from_slice(b"null"),
        },
        Transform::Hash { key } => match text_of(value) {
            Some(text) => write_str(&pseudonym(key, text), out),
            None => out.extend_from_slice(b"null"),
        },
        Transform::DateToYear => write_date_prefix(value, 4, out),
        Transform::DateToMonth => write_date_prefix(value, 7, out),
        Transform::Prefix(n) => match text_of(value) {
            Some(text) => write_str(&text.chars().take(*n).collect::<String>(), out),
            None => out.extend_from_slice(b"null"),
        },
        Transform::Range { width } => match range(value, *width) {
            Some(text) => write_str(&text, out),
            None => out.extend_from_slice(b"null"),
        },
    }
}

/// Writes the transformed string whose raw contents are `raw`, when `raw` is ASCII without
/// escapes (so without quotes, backslashes or control characters) and the transform is one
/// that can work on those bytes as they are: a mask with a plain ASCII mask character. Returns
/// false, writing nothing, for anything else.
pub fn write_plain_ascii(transform: &Transform, raw: &[u8], out: &mut Vec<u8>) -> bool {
    let Transform::Mask { first, last, with } = *transform else {
        return false;
    };
    match u8::try_from(with) {
        Ok(with) if with.is_ascii() && !needs_escape(with) && raw.is_ascii() => {
            write_ascii_mask(raw, first, last, with, out);
            true
        }
        _ => false,
    }
}

/// The text a transform works on: a string's contents or a number's digits.
fn text_of<'a>(value: &'a Scalar<'_>) -> Option<&'a str> {
    match value {
        Scalar::Str(s) => Some(s),
        Scalar::Num(n) => Some(n),
        Scalar::Other => None,
    }
}

/// Writes `text` as a JSON string.
pub fn write_str(text: &str, out: &mut Vec<u8>) {
    out.reserve(text.len() + 2);
    out.push(b'"');
    write_contents(text.as_bytes(), out);
    out.push(b'"');
}

/// Writes `text` masked as [`mask`] does, as a JSON string, without building the masked text
/// when it and `with` are ASCII (one byte per character).
fn write_mask(text: &str, first: usize, last: usize, with: char, out: &mut Vec<u8>) {
    match u8::try_from(with) {
        Ok(with) if with.is_ascii() && text.is_ascii() => {
            write_ascii_mask(text.as_bytes(), first, last, with, out);
        }
        _ => write_str(&mask(text, first, last, with), out),
    }
}

/// Writes ASCII `text` masked with the ASCII byte `with` as [`mask`] does, as a JSON string.
fn write_ascii_mask(text: &[u8], first: usize, last: usize, with: u8, out: &mut Vec<u8>) {
    let len = text.len();
    out.reserve(len + 2);
    out.push(b'"');
    match (text.get(..first), text.get(len.saturating_sub(last)..)) {
        (Some(head), Some(tail)) if len > first.saturating_add(last) => {
            write_contents(head, out);
            let hidden = len - first - last;
            if needs_escape(with) {
                // A quote, backslash or control character is escaped each time.
                for _ in 0..hidden {
                    write_contents(&[with], out);
                }
            } else {
                out.resize(out.len() + hidden, with);
            }
            write_contents(tail, out);
        }
        // No longer than what is kept: kept whole.
        _ => write_contents(text, out),
    }
    out.push(b'"');
}

/// True for a byte a JSON string cannot hold as it is: a quote, a backslash, a control character.
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Writes the UTF-8 `text` escaped for the inside of a JSON string.
pub(super) fn write_contents(text: &[u8], out: &mut Vec<u8>) {
    if !text.iter().copied().any(needs_escape) {
        out.extend_from_slice(text);
        return;
    }
    let mut plain = 0;
    for (i, &b) in text.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(text.get(plain..i).unwrap_or_default());
        if escape.is_empty() {
            out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
        } else {
            out.extend_from_slice(escape);
        }
        plain = i + 1;
    }
    out.extend_from_slice(text.get(plain..).unwrap_or_default());
}

/// Keeps the first `first` and last `last` characters, replacing the others with `with`. A text
/// no longer than `first + last` is kept whole.
pub fn mask(text: &str, first: usize, last: usize, with: char) -> String {
    if text.is_ascii() && with.is_ascii() {
        // One byte per character: the common case, without decoding.
        let len = text.len();
        if len <= first.saturating_add(last) {
            return text.to_owned();
        }
        let mut out = String::with_capacity(len);
        out.push_str(text.get(..first).unwrap_or_default());
        out.extend(std::iter::repeat_n(with, len - first - last));
        out.push_str(text.get(len - last..).unwrap_or_default());
        return out;
    }
    let len = text.chars().count();
    if len <= first.saturating_add(last) {
        return text.to_owned();
    }
    text.chars()
        .enumerate()
        .map(|(i, c)| {
            if i < first || i >= len - last {
                c
            } else {
                with
            }
        })
        .collect()
}

/// Hex of HMAC-SHA-256(key, text): a stable pseudonym that cannot be reversed without the key.
pub fn pseudonym(key: &[u8], text: &str) -> String {
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(key) else {
        // HMAC accepts keys of any length; unreachable, and fails closed to an empty pseudonym.
        return String::new();
    };
    mac.update(text.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// `YYYY` (len 4) or `YYYY-MM` (len 7) of an ISO 8601 date; anything else becomes null.
fn write_date_prefix(value: &Scalar<'_>, len: usize, out: &mut Vec<u8>) {
    let text = match value {
        Scalar::Str(s) => Some(&**s),
        _ => None,
    };
    let prefix = text.and_then(|s| s.get(..len)).filter(|p| {
        p.bytes().enumerate().all(|(i, b)| {
            if i == 4 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        })
    });
    match prefix {
        Some(p) => write_str(p, out),
        None => out.extend_from_slice(b"null"),
    }
}

/// The range `"lo-hi"` of width `width` that holds a number, e.g. 1234 in width 1000 is
/// `"1000-1999"`. Integers beyond i64 and non-finite values become null.
fn range(value: &Scalar<'_>, width: u64) -> Option<String> {
    if width == 0 {
        return None;
    }
    let Scalar::Num(text) = value else {
        return None;
    };
    let w = i128::from(width);
    let n: i128 = if let Ok(i) = text.parse::<i64>() {
        i128::from(i)
    } else if let Ok(u) = text.parse::<u64>() {
        i128::from(u)
    } else {
        let f: f64 = text.parse().ok()?;
        if !f.is_finite() || f.abs() > 9.0e18 {
            return None;
        }
        #[expect(
            clippy::cast_possible_truncation,
            reason = "bounded above, floor is intended"
        )]
        let floor = f.floor() as i128;
        floor
    };
    let lo = n.div_euclid(w) * w;
    Some(format!("{}-{}", lo, lo + w - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(t: Transform, json: &str) -> String {
        let v = if let Some(s) = json.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
            Scalar::Str(Cow::Owned(
                crate::redact::scan::unescape(s.as_bytes()).unwrap(),
            ))
        } else if json.starts_with(['-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9']) {
            Scalar::Num(json)
        } else {
            Scalar::Other
        };
        let mut out = Vec::new();
        write(&t, &v, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn strings_are_escaped_like_serde_json() {
        for text in [
            "plain",
            "q\"uote",
            "back\\slash",
            "new\nline\t\r",
            "ctl\u{1}\u{8}\u{c}\u{1f}",
            "é ☃ 🦀",
            "</script>",
        ] {
            let mut out = Vec::new();
            write_str(text, &mut out);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(text).unwrap()
            );
        }
    }

    #[test]
    fn plain_ascii_masks_are_written_as_masks_of_the_text_are() {
        let texts = [
            "",
            "a",
            "ab",
            "abc",
            "+1-555-123-4567",
            "0123456789abcdef",
            " ~{}[]:,",
        ];
        let others = [
            Transform::Null,
            Transform::Hash {
                key: b"k".to_vec().into(),
            },
            Transform::Prefix(2),
        ];
        for text in texts {
            for (first, last) in [
                (0, 0),
                (0, 4),
                (2, 2),
                (1, 0),
                (3, 9),
                (20, 20),
                (usize::MAX, 1),
            ] {
                for with in ['*', '#', 'x', ' ', '"', '\\', '\n', '\u{7f}', 'é', '☃'] {
                    let t = Transform::Mask { first, last, with };
                    let mut fast = Vec::new();
                    let taken = write_plain_ascii(&t, text.as_bytes(), &mut fast);
                    let mut slow = Vec::new();
                    write(&t, &Scalar::Str(Cow::Borrowed(text)), &mut slow);
                    let plain = with.is_ascii() && !needs_escape(with as u8);
                    assert_eq!(taken, plain, "{t:?}");
                    if taken {
                        assert_eq!(show(&fast), show(&slow), "{text:?} {t:?}");
                    } else {
                        assert!(fast.is_empty(), "{t:?} wrote {}", show(&fast));
                    }
                }
            }
            for t in &others {
                let mut out = Vec::new();
                assert!(!write_plain_ascii(t, text.as_bytes(), &mut out), "{t:?}");
                assert!(out.is_empty());
            }
        }
        let t = Transform::Mask {
            first: 0,
            last: 1,
            with: '*',
        };
        assert!(
            !write_plain_ascii(&t, "é".as_bytes(), &mut Vec::new()),
            "non-ASCII taken"
        );
    }

    fn show(bytes: &[u8]) -> String {
        String::from_utf8_lossy(bytes).into_owned()
    }

    #[test]
    fn mask_keeps_last_characters() {
        let t = Transform::Mask {
            first: 0,
            last: 4,
            with: '*',
        };
        assert_eq!(
            run(t.clone(), r#""+1-555-123-4567""#),
            r#""***********4567""#
        );
        assert_eq!(run(t.clone(), r#""123""#), r#""123""#);
        assert_eq!(run(t.clone(), "5551234567"), r#""******4567""#);
        assert_eq!(run(t.clone(), r#"{"a":1}"#), "null");
        assert_eq!(run(t, r#""ééééé""#), r#""*éééé""#);
    }

    proptest::proptest! {
        /// The masked string is written without building it where that is possible: what is
        /// written is the masked text, escaped, whatever the text and the mask character.
        #[test]
        fn masks_are_written_as_the_masked_text(
            text in "[a-z0-9\"\\\\\n\u{1}é+ -]{0,16}",
            first in 0usize..5,
            last in 0usize..5,
            with in proptest::sample::select(vec!['*', 'x', '"', '\\', '\n', '\u{1f}', '•']),
        ) {
            let mut written = Vec::new();
            write(
                &Transform::Mask { first, last, with },
                &Scalar::Str(Cow::Borrowed(&text)),
                &mut written,
            );
            let masked = serde_json::to_string(&mask(&text, first, last, with)).unwrap();
            proptest::prop_assert_eq!(String::from_utf8(written).unwrap(), masked);
        }
    }

    #[test]
    fn hash_is_keyed_and_stable() {
        let key: std::sync::Arc<[u8]> = std::sync::Arc::from(&b"k1"[..]);
        let a = run(Transform::Hash { key: key.clone() }, r#""ada@example.com""#);
        let b = run(Transform::Hash { key }, r#""ada@example.com""#);
        let c = run(
            Transform::Hash {
                key: std::sync::Arc::from(&b"k2"[..]),
            },
            r#""ada@example.com""#,
        );
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 66);
        assert!(!a.contains("ada"));
    }

    #[test]
    fn generalisations() {
        assert_eq!(run(Transform::DateToYear, r#""1987-05-12""#), r#""1987""#);
        assert_eq!(
            run(Transform::DateToMonth, r#""1987-05-12""#),
            r#""1987-05""#
        );
        assert_eq!(run(Transform::DateToYear, r#""May 1987""#), "null");
        assert_eq!(run(Transform::DateToYear, "1987"), "null");
        assert_eq!(run(Transform::Prefix(2), r#""75012""#), r#""75""#);
        assert_eq!(
            run(Transform::Range { width: 1000 }, "1234"),
            r#""1000-1999""#
        );
        assert_eq!(run(Transform::Range { width: 10 }, "-3"), r#""-10--1""#);
        assert_eq!(run(Transform::Range { width: 10 }, "12.5"), r#""10-19""#);
        assert_eq!(run(Transform::Range { width: 10 }, r#""12""#), "null");
        assert_eq!(run(Transform::Constant("\"x\"".into()), "[1,2]"), r#""x""#);
        assert_eq!(run(Transform::Null, r#""secret""#), "null");
    }
}
