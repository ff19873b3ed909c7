//! Who is calling and for which purpose: [`identify`] and [`resolve_purpose`].
//!
//! Both fail closed: a missing, repeated or unknown credential or purpose is a refusal, never a
//! default.

use http::{HeaderMap, HeaderName};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::policy::compiled::{Caller, CompiledPolicy, Purpose, PurposeId};
use crate::proxy::refusal::Refusal;

/// The header carrying a caller's API key.
pub static API_KEY_HEADER: HeaderName = HeaderName::from_static("x-api-key");
/// The header carrying the declared purpose.
pub static PURPOSE_HEADER: HeaderName = HeaderName::from_static("x-purpose");

/// The one value of a header that must appear at most once. `Ok(None)`: absent.
fn single<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Result<Option<&'h [u8]>, ()> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(());
    }
    Ok(Some(first.as_bytes()))
}

/// The caller whose API key the request presents.
pub fn identify<'p>(
    headers: &HeaderMap,
    policy: &'p CompiledPolicy,
) -> Result<&'p Caller, Refusal> {
    let key = single(headers, &API_KEY_HEADER)
        .map_err(|()| Refusal::AmbiguousCredentials)?
        .ok_or(Refusal::UnknownCaller)?;
    if key.is_empty() || key.contains(&b',') {
        return Err(Refusal::AmbiguousCredentials);
    }
    let digest: [u8; 32] = Sha256::digest(key).into();
    // Every caller is compared, in constant time, so timing tells nothing about which matched.
    let mut found = None;
    for caller in &policy.callers {
        if bool::from(caller.key_sha256.ct_eq(&digest)) {
            found = Some(caller);
        }
    }
    found.ok_or(Refusal::UnknownCaller)
}

/// The purpose the request declares, checked against what the caller may declare.
pub fn resolve_purpose<'p>(
    headers: &HeaderMap,
    caller: &Caller,
    policy: &'p CompiledPolicy,
) -> Result<(PurposeId, &'p Purpose), Refusal> {
    let raw = single(headers, &PURPOSE_HEADER)
        .map_err(|()| Refusal::PurposeAmbiguous)?
        .ok_or(Refusal::PurposeMissing)?;
    let name = std::str::from_utf8(raw).map_err(|_| Refusal::PurposeUnknown(String::new()))?;
    if name.contains(',') {
        return Err(Refusal::PurposeAmbiguous);
    }
    // The name as a refusal shows it, built only for a refusal.
    let shown = || name.chars().take(64).collect::<String>();
    // Exact, case-sensitive: `Marketing` is not `marketing`.
    let id = policy
        .purpose_id(name)
        .ok_or_else(|| Refusal::PurposeUnknown(shown()))?;
    if !caller.purposes.contains(&id) {
        return Err(Refusal::PurposeNotAllowed(shown()));
    }
    let purpose = policy
        .purposes
        .get(usize::from(id))
        .ok_or(Refusal::Internal)?;
    Ok((id, purpose))
}
