//! Every lawful basis, the CCPA/CPRA opt-outs and the Global Privacy Control signal, end to end
//! through the proxy, and which basis wins when several facts apply (the rules are written out
//! in `docs/policy-language.md`, "Which basis wins").

use consentry::consent::event::{ALL_PURPOSES, ConsentEvent, EventKind, now_ms};

use crate::both;
use crate::support::{Gw, Proto, Reply, Upstream, contact, contacts, gateway};

/// Whether `purpose` gets subject 1's record (200 with the kept email), or is refused 403
/// `no_lawful_basis` without it; panics on anything else.
async fn served(gw: &Gw, proto: Proto, purpose: &str, gpc: Option<&str>) -> bool {
    let mut req = gw
        .get("/crm/v3/objects/contacts/1")
        .purpose(purpose)
        .over(proto);
    if let Some(v) = gpc {
        req = req.header("sec-gpc", v);
    }
    let rsp = req.send().await;
    if rsp.status == 200 {
        assert_eq!(rsp.ok_json()["properties"]["email"], "ada1@example.com");
        true
    } else {
        rsp.assert_refused(403, "no_lawful_basis");
        assert!(!rsp.text().contains("ada1@"), "{}", rsp.text());
        false
    }
}

async fn record(gw: &Gw, purpose: &str, kind: EventKind) {
    gw.record("1", purpose, kind, None).await;
}

async fn start() -> (Upstream, Gw) {
    let up = Upstream::replying(Reply::json(&contact("1"))).await;
    let gw = gateway(&up).start().await;
    (up, gw)
}

both!(bases_without_consent_hold_whatever_the_subject_said);
/// Contract, legal obligation, vital interest and public task do not rest on consent: they hold
/// with no event at all, and a withdrawal, objection or opt-out recorded for them changes
/// nothing (they are not sale or sharing purposes).
async fn bases_without_consent_hold_whatever_the_subject_said(proto: Proto) {
    let (_up, gw) = start().await;
    for purpose in ["support", "audit", "care", "registry"] {
        assert!(served(&gw, proto, purpose, None).await, "{purpose}");
        for kind in [
            EventKind::Withdrawn,
            EventKind::Objected,
            EventKind::OptedOut,
        ] {
            record(&gw, purpose, kind).await;
            assert!(
                served(&gw, proto, purpose, None).await,
                "{purpose} after {kind}"
            );
        }
        record(&gw, ALL_PURPOSES, EventKind::OptedOut).await;
        assert!(
            served(&gw, proto, purpose, Some("1")).await,
            "{purpose} with GPC"
        );
    }
}

both!(consent_needs_a_live_grant_for_that_very_purpose);
async fn consent_needs_a_live_grant_for_that_very_purpose(proto: Proto) {
    let (_up, gw) = start().await;
    assert!(!served(&gw, proto, "marketing", None).await);
    // A grant for another purpose, or a basis that holds for another purpose, is no grant.
    record(&gw, "ad_sharing", EventKind::Granted).await;
    assert!(!served(&gw, proto, "marketing", None).await);
    record(&gw, "marketing", EventKind::Granted).await;
    assert!(served(&gw, proto, "marketing", None).await);
    // The latest event wins: an objection or an opt-out for the purpose ends a consent too.
    for ending in [
        EventKind::Withdrawn,
        EventKind::Objected,
        EventKind::OptedOut,
    ] {
        record(&gw, "marketing", ending).await;
        assert!(!served(&gw, proto, "marketing", None).await, "{ending}");
        record(&gw, "marketing", EventKind::Granted).await;
        assert!(
            served(&gw, proto, "marketing", None).await,
            "grant after {ending}"
        );
    }
    // A GPC signal concerns sale and sharing only.
    assert!(served(&gw, proto, "marketing", Some("1")).await);
    // A grant that has lapsed is no grant.
    gw.record("1", "marketing", EventKind::Granted, Some(now_ms() - 1))
        .await;
    assert!(!served(&gw, proto, "marketing", None).await);
}

both!(legitimate_interest_holds_until_the_subject_objects);
async fn legitimate_interest_holds_until_the_subject_objects(proto: Proto) {
    let (_up, gw) = start().await;
    // `analytics` keeps no email; `partner_offers` is legitimate interest and sale or sharing.
    assert!(served(&gw, proto, "partner_offers", None).await);
    record(&gw, "partner_offers", EventKind::Objected).await;
    assert!(!served(&gw, proto, "partner_offers", None).await);
    // The subject changes their mind: a later grant lifts the objection.
    record(&gw, "partner_offers", EventKind::Granted).await;
    assert!(served(&gw, proto, "partner_offers", None).await);
    // A withdrawal reads as an objection.
    record(&gw, "partner_offers", EventKind::Withdrawn).await;
    assert!(!served(&gw, proto, "partner_offers", None).await);
}

both!(sale_and_sharing_stop_at_an_opt_out_whatever_the_basis);
/// A sale or sharing purpose stops at an opt-out of that purpose, at an opt-out of all sale and
/// sharing (`*`), and at a GPC signal on the request, on top of its own basis: here consent,
/// legitimate interest and contract.
async fn sale_and_sharing_stop_at_an_opt_out_whatever_the_basis(proto: Proto) {
    let (_up, gw) = start().await;
    record(&gw, "ad_sharing", EventKind::Granted).await;
    for purpose in ["ad_sharing", "partner_offers", "data_sale"] {
        assert!(served(&gw, proto, purpose, None).await, "{purpose}");
        assert!(
            !served(&gw, proto, purpose, Some("1")).await,
            "{purpose}, GPC"
        );
        assert!(
            served(&gw, proto, purpose, Some("0")).await,
            "{purpose}, GPC 0"
        );
    }
    // An objection does not stop a contract, even a sale or sharing one.
    record(&gw, "data_sale", EventKind::Objected).await;
    assert!(served(&gw, proto, "data_sale", None).await);
    // An opt-out of one purpose stops that purpose only.
    record(&gw, "data_sale", EventKind::OptedOut).await;
    assert!(!served(&gw, proto, "data_sale", None).await);
    assert!(served(&gw, proto, "partner_offers", None).await);
    // An opt-out of all sale and sharing stops every one of them, not the other purposes.
    record(&gw, ALL_PURPOSES, EventKind::OptedOut).await;
    for purpose in ["ad_sharing", "partner_offers", "data_sale"] {
        assert!(
            !served(&gw, proto, purpose, None).await,
            "{purpose} after *"
        );
    }
    assert!(served(&gw, proto, "support", None).await);
    // Only a grant for the very purpose made after the opt-out lifts it, and only for that one.
    record(&gw, "ad_sharing", EventKind::Granted).await;
    assert!(served(&gw, proto, "ad_sharing", None).await);
    assert!(!served(&gw, proto, "partner_offers", None).await);
    // A GPC signal still wins over that grant: it is the subject's choice on this request.
    assert!(!served(&gw, proto, "ad_sharing", Some("1")).await);
}

both!(a_gpc_signal_cannot_be_hidden_in_the_header);
/// `Sec-GPC: 1` counts wherever it appears: with whitespace, as a second field line after a
/// `0`, or in a comma-joined list. Anything else is no signal.
async fn a_gpc_signal_cannot_be_hidden_in_the_header(proto: Proto) {
    let (_up, gw) = start().await;
    record(&gw, "ad_sharing", EventKind::Granted).await;
    for value in [" 1 ", "0, 1", "1,1"] {
        assert!(
            !served(&gw, proto, "ad_sharing", Some(value)).await,
            "{value:?}"
        );
    }
    let rsp = gw
        .get("/crm/v3/objects/contacts/1")
        .purpose("ad_sharing")
        .header("sec-gpc", "0")
        .header("sec-gpc", "1")
        .over(proto)
        .send()
        .await;
    rsp.assert_refused(403, "no_lawful_basis");
    for value in ["0", "", "yes", "10"] {
        assert!(
            served(&gw, proto, "ad_sharing", Some(value)).await,
            "{value:?}"
        );
    }
}

both!(a_gpc_signal_omits_every_record_of_a_list);
async fn a_gpc_signal_omits_every_record_of_a_list(proto: Proto) {
    let up = Upstream::replying(Reply::json(&contacts(&["1", "2"]))).await;
    let gw = gateway(&up).start().await;
    gw.grant("1", "ad_sharing").await;
    gw.grant("2", "ad_sharing").await;
    let list = |gpc: bool| {
        let req = gw
            .get("/crm/v3/objects/contacts")
            .purpose("ad_sharing")
            .over(proto);
        if gpc { req.header("sec-gpc", "1") } else { req }
    };
    let rsp = list(false).send().await;
    assert_eq!(rsp.ok_json()["results"].as_array().unwrap().len(), 2);
    let rsp = list(true).send().await;
    assert_eq!(rsp.ok_json()["results"], serde_json::json!([]));
    assert!(!rsp.text().contains("@example.com"));
}

both!(an_opt_out_recorded_from_a_gpc_signal_lasts);
/// A GPC signal seen elsewhere (a website) and recorded as an event with source `gpc` is an
/// opt-out of all sale and sharing for later requests that carry no signal.
async fn an_opt_out_recorded_from_a_gpc_signal_lasts(proto: Proto) {
    let (_up, gw) = start().await;
    record(&gw, "ad_sharing", EventKind::Granted).await;
    assert!(served(&gw, proto, "ad_sharing", None).await);
    let event = ConsentEvent {
        subject: "1".into(),
        purpose: ALL_PURPOSES.into(),
        kind: EventKind::OptedOut,
        at_ms: now_ms(),
        expires_at_ms: None,
        source: Some("gpc".into()),
        proof: None,
        actor: None,
        recorded_at_ms: None,
    };
    gw.gateway.consent.record(&[event]).await.unwrap();
    assert!(!served(&gw, proto, "ad_sharing", None).await);
    assert!(!served(&gw, proto, "partner_offers", None).await);
    // It concerns sale and sharing only.
    assert!(served(&gw, proto, "support", None).await);
    let history = gw.gateway.records.history("1").await.unwrap();
    assert_eq!(
        history.last().and_then(|e| e.source.as_deref()),
        Some("gpc")
    );
}
