//! Who is calling the admin API: `Authorization: Bearer <token>`, checked against the SHA-256
//! digests of the configured admin tokens.
//!
//! It owns the token set and the check. It must never keep, log or echo a token in clear, and
//! never accept a proxy caller's API key: admin tokens are a separate set. Digests are compared
//! in constant time, and every configured digest is compared, so the time taken does not tell
//! which token came close.

use http::HeaderMap;
use http::header::AUTHORIZATION;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use crate::config::AdminToken;

/// The actor an admin token records on events: `admin:<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The token's name in the configuration.
    pub token: String,
}

impl Actor {
    /// The actor as events record it.
    pub fn recorded_as(&self) -> String {
        format!("admin:{}", self.token)
    }
}

/// The configured admin tokens, by digest.
#[derive(Clone)]
pub struct TokenSet {
    tokens: Vec<(String, [u8; 32])>,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.tokens.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("TokenSet").field("names", &names).finish()
    }
}

impl TokenSet {
    /// The set of the configuration's tokens; an entry whose digest is not 64 hex digits is an
    /// error (`Config::validate` reports it first, with more context).
    pub fn new(tokens: &[AdminToken]) -> Result<Self, String> {
        let mut out = Vec::with_capacity(tokens.len());
        for t in tokens {
            let mut digest = [0u8; 32];
            hex::decode_to_slice(&t.sha256, &mut digest)
                .map_err(|_| format!("admin token `{}`: sha256 must be 64 hex digits", t.name))?;
            out.push((t.name.clone(), digest));
        }
        Ok(Self { tokens: out })
    }

    /// Whether no token is configured (then nobody can call the API).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The caller the request's bearer token identifies; `None` for no token, another scheme,
    /// or a token no entry matches.
    pub fn identify(&self, headers: &HeaderMap) -> Option<Actor> {
        let mut values = headers.get_all(AUTHORIZATION).iter();
        let value = values.next()?;
        if values.next().is_some() {
            // Two Authorization fields: ambiguous, refuse rather than pick one.
            return None;
        }
        let (scheme, token) = value.to_str().ok()?.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let token = token.trim();
        if token.is_empty() {
            return None;
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found: Option<&str> = None;
        for (name, expected) in &self.tokens {
            // Compare with every entry, not stopping at the first match.
            let matches: Choice = expected.ct_eq(&digest);
            if bool::from(matches) && found.is_none() {
                found = Some(name);
            }
        }
        found.map(|name| Actor {
            token: name.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn bearer_tokens_by_digest() {
        let set = TokenSet::new(&[
            AdminToken::from_secret("privacy-team", "a-long-random-token-1"),
            AdminToken::from_secret("crm-sync", "a-long-random-token-2"),
        ])
        .unwrap();
        let who = |v: &[&str]| set.identify(&headers(v)).map(|a| a.recorded_as());
        assert_eq!(
            who(&["Bearer a-long-random-token-2"]).as_deref(),
            Some("admin:crm-sync")
        );
        assert_eq!(
            who(&["bearer   a-long-random-token-1 "]).as_deref(),
            Some("admin:privacy-team")
        );
        assert_eq!(who(&[]), None);
        assert_eq!(who(&["Bearer"]), None);
        assert_eq!(who(&["Bearer "]), None);
        assert_eq!(who(&["Basic a-long-random-token-1"]), None);
        assert_eq!(who(&["Bearer a-long-random-token-3"]), None);
        assert_eq!(
            who(&[
                "Bearer a-long-random-token-1",
                "Bearer a-long-random-token-1"
            ]),
            None
        );
    }

    #[test]
    fn the_debug_form_shows_names_only() {
        let entry = AdminToken::from_secret("ops", "a-long-random-token-1");
        let set = TokenSet::new(std::slice::from_ref(&entry)).unwrap();
        let text = format!("{set:?}");
        assert!(text.contains("ops"));
        assert!(!text.contains(&entry.sha256[..8]));
        assert!(
            TokenSet::new(&[AdminToken {
                name: "x".into(),
                sha256: "abc".into()
            }])
            .is_err()
        );
    }
}
