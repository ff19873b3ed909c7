//! The lawful-basis decision for one subject and one purpose, from the subject's
//! [`ConsentState`].
//!
//! Pure: no I/O, no clock (the caller passes `now_ms`), no store. It must never turn a missing
//! state into a grant for a purpose that needs one: an absent state is [`Consent::Unknown`],
//! which callers handle as a refusal.

use crate::policy::compiled::{LawfulBasis, Purpose};

use super::event::EventKind;
use super::store::{ConsentState, LatestEvent};

/// The outcome of a consent decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Consent {
    /// The purpose may process the subject's data.
    Granted,
    /// It may not.
    Denied,
    /// The state could not be established (store down, timeout). Handled as [`Consent::Denied`].
    Unknown,
}

impl Consent {
    /// Whether the data may be used; `Unknown` may not.
    pub fn is_granted(self) -> bool {
        // FAIL-CLOSED: only an explicit grant counts.
        self == Self::Granted
    }
}

/// Whether a decision for `purpose` depends on the subject's consent state at all.
///
/// Contract, legal obligation, vital interest and public task need no consent; but a sale or
/// sharing purpose always does, whatever its basis, because an opt-out stops it.
pub fn needs_lookup(purpose: &Purpose) -> bool {
    purpose.sale_or_sharing
        || matches!(
            purpose.basis,
            LawfulBasis::Consent | LawfulBasis::LegitimateInterest
        )
}

/// Decides whether `purpose` may process the data of a subject whose state is `state`.
///
/// - contract, legal obligation, vital interest, public task: granted;
/// - consent: granted iff the latest event for the purpose is a grant that has not expired;
/// - legitimate interest: granted unless the latest event is an objection, a withdrawal or an
///   opt-out;
/// - a sale or sharing purpose is, on top of that, denied when the latest event is an opt-out,
///   when a `*` opt-out is later than the latest grant for the purpose, or when the request
///   carries a Global Privacy Control signal (`gpc`).
///
/// `state: None` means the state could not be read: [`Consent::Unknown`] for any purpose that
/// [`needs_lookup`].
pub fn decide(purpose: &Purpose, state: Option<&ConsentState>, now_ms: i64, gpc: bool) -> Consent {
    if !needs_lookup(purpose) {
        return Consent::Granted;
    }
    if purpose.sale_or_sharing && gpc {
        // A GPC signal is a valid opt-out by itself: no state needed to deny.
        return Consent::Denied;
    }
    // FAIL-CLOSED: no state, no grant.
    let Some(state) = state else {
        return Consent::Unknown;
    };
    let latest = state.latest.as_ref();
    let basis_holds = match purpose.basis {
        LawfulBasis::Consent => latest.is_some_and(|e| is_live_grant(e, now_ms)),
        LawfulBasis::LegitimateInterest => !latest.is_some_and(|e| {
            // A withdrawal or an opt-out for this purpose is read as an objection.
            matches!(
                e.kind,
                EventKind::Objected | EventKind::Withdrawn | EventKind::OptedOut
            )
        }),
        LawfulBasis::Contract
        | LawfulBasis::LegalObligation
        | LawfulBasis::VitalInterest
        | LawfulBasis::PublicTask => true,
    };
    if !basis_holds {
        return Consent::Denied;
    }
    if purpose.sale_or_sharing {
        if latest.is_some_and(|e| e.kind == EventKind::OptedOut) {
            return Consent::Denied;
        }
        if let Some(all) = state.opted_out_all {
            // Only a grant for this very purpose made after the `*` opt-out overrides it.
            let granted_after =
                latest.is_some_and(|e| e.kind == EventKind::Granted && e.order > all);
            if !granted_after {
                return Consent::Denied;
            }
        }
    }
    Consent::Granted
}

/// A grant that is still in force at `now_ms` (an expiry equal to now has lapsed).
fn is_live_grant(e: &LatestEvent, now_ms: i64) -> bool {
    e.kind == EventKind::Granted && e.expires_at_ms.is_none_or(|x| x > now_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consent::store::EventOrder;

    const NOW: i64 = 1_000_000;

    fn purpose(basis: LawfulBasis, sale: bool) -> Purpose {
        Purpose {
            name: "p".into(),
            basis,
            sale_or_sharing: sale,
        }
    }

    fn ev(
        kind: EventKind,
        at_ms: i64,
        seq: i64,
        expires_at_ms: Option<i64>,
    ) -> Option<LatestEvent> {
        Some(LatestEvent {
            kind,
            order: EventOrder { at_ms, seq },
            expires_at_ms,
        })
    }

    fn all(at_ms: i64, seq: i64) -> Option<EventOrder> {
        Some(EventOrder { at_ms, seq })
    }

    use Consent::{Denied, Granted, Unknown};
    use EventKind::{Granted as G, Objected as O, OptedOut as X, Withdrawn as W};
    use LawfulBasis::{
        Consent as C, Contract as K, LegalObligation as L, LegitimateInterest as I,
        PublicTask as T, VitalInterest as V,
    };

    #[test]
    fn needs_lookup_by_basis() {
        for (basis, sale, needs) in [
            (C, false, true),
            (I, false, true),
            (K, false, false),
            (L, false, false),
            (V, false, false),
            (T, false, false),
            (K, true, true),
        ] {
            assert_eq!(
                needs_lookup(&purpose(basis, sale)),
                needs,
                "{basis:?} sale={sale}"
            );
        }
    }

    #[test]
    fn table() {
        // (name, basis, sale, state (None = store failed), gpc, expected)
        type Row = (
            &'static str,
            LawfulBasis,
            bool,
            Option<ConsentState>,
            bool,
            Consent,
        );
        let st = |latest, opted_out_all| {
            Some(ConsentState {
                latest,
                opted_out_all,
            })
        };
        let empty = st(None, None);
        #[rustfmt::skip]
        let rows: Vec<Row> = vec![
            // Bases that need no consent.
            ("contract, no state", K, false, None, false, Granted),
            ("legal obligation, objection", L, false, st(ev(O, 1, 1, None), None), false, Granted),
            ("vital interest, withdrawn", V, false, st(ev(W, 1, 1, None), None), true, Granted),
            ("public task, opted out", T, false, st(ev(X, 1, 1, None), all(1, 1)), false, Granted),
            // Consent.
            ("consent, store failed", C, false, None, false, Unknown),
            ("consent, nothing recorded", C, false, empty, false, Denied),
            ("consent, granted", C, false, st(ev(G, 1, 1, None), None), false, Granted),
            ("consent, granted, not yet expired", C, false, st(ev(G, 1, 1, Some(NOW + 1)), None), false, Granted),
            ("consent, granted, expires now", C, false, st(ev(G, 1, 1, Some(NOW)), None), false, Denied),
            ("consent, granted, expired", C, false, st(ev(G, 1, 1, Some(NOW - 1)), None), false, Denied),
            ("consent, withdrawn", C, false, st(ev(W, 1, 1, None), None), false, Denied),
            ("consent, objected", C, false, st(ev(O, 1, 1, None), None), false, Denied),
            ("consent, opted out", C, false, st(ev(X, 1, 1, None), None), false, Denied),
            ("consent, non-sale ignores * opt-out", C, false, st(ev(G, 1, 1, None), all(5, 5)), false, Granted),
            ("consent, non-sale ignores gpc", C, false, st(ev(G, 1, 1, None), None), true, Granted),
            // Legitimate interest.
            ("li, store failed", I, false, None, false, Unknown),
            ("li, nothing recorded", I, false, empty, false, Granted),
            ("li, granted", I, false, st(ev(G, 1, 1, None), None), false, Granted),
            ("li, expired grant still li", I, false, st(ev(G, 1, 1, Some(NOW - 1)), None), false, Granted),
            ("li, objected", I, false, st(ev(O, 1, 1, None), None), false, Denied),
            ("li, withdrawn is an objection", I, false, st(ev(W, 1, 1, None), None), false, Denied),
            ("li, opted out is an objection", I, false, st(ev(X, 1, 1, None), None), false, Denied),
            // Sale or sharing on top.
            ("sale consent, gpc beats a grant", C, true, st(ev(G, 1, 1, None), None), true, Denied),
            ("sale consent, gpc without state", C, true, None, true, Denied),
            ("sale consent, granted", C, true, st(ev(G, 1, 1, None), None), false, Granted),
            ("sale consent, * opt-out after grant", C, true, st(ev(G, 1, 1, None), all(2, 2)), false, Denied),
            ("sale consent, grant after * opt-out", C, true, st(ev(G, 3, 3, None), all(2, 2)), false, Granted),
            ("sale consent, same ms, opt-out inserted later", C, true, st(ev(G, 2, 1, None), all(2, 2)), false, Denied),
            ("sale consent, same ms, grant inserted later", C, true, st(ev(G, 2, 3, None), all(2, 2)), false, Granted),
            ("sale li, nothing recorded", I, true, empty, false, Granted),
            ("sale li, store failed", I, true, None, false, Unknown),
            ("sale li, * opt-out, no grant", I, true, st(None, all(2, 2)), false, Denied),
            ("sale li, purpose opt-out", I, true, st(ev(X, 1, 1, None), None), false, Denied),
            ("sale li, gpc", I, true, empty, true, Denied),
            ("sale li, grant after * opt-out", I, true, st(ev(G, 3, 3, None), all(2, 2)), false, Granted),
            ("sale contract, nothing recorded", K, true, empty, false, Granted),
            ("sale contract, store failed", K, true, None, false, Unknown),
            ("sale contract, * opt-out", K, true, st(None, all(2, 2)), false, Denied),
            ("sale contract, purpose opt-out", K, true, st(ev(X, 1, 1, None), None), false, Denied),
            ("sale contract, gpc", K, true, None, true, Denied),
            ("sale contract, withdrawn is no opt-out", K, true, st(ev(W, 1, 1, None), None), false, Granted),
        ];
        for (name, basis, sale, state, gpc, want) in rows {
            let got = decide(&purpose(basis, sale), state.as_ref(), NOW, gpc);
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn unknown_is_not_granted() {
        assert!(!Unknown.is_granted());
        assert!(!Denied.is_granted());
        assert!(Granted.is_granted());
    }
}
