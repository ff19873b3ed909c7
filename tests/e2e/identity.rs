//! Who is calling, for which purpose, on which route: refused before anything goes upstream.

use http::Method;

use crate::both;
use crate::support::{APP_KEY, NEWSLETTER_KEY, Proto, Reply, Upstream, contact, gateway};

const CONTACT: &str = "/crm/v3/objects/contacts/1";

type Headers = &'static [(&'static str, &'static str)];

both!(identity_and_purpose_refusals);
async fn identity_and_purpose_refusals(proto: Proto) {
    let up = Upstream::replying(Reply::json(&contact("1"))).await;
    let gw = gateway(&up).start().await;
    let cases: &[(Headers, u16, &str)] = &[
        (&[("x-purpose", "support")], 401, "unknown_caller"),
        (
            &[("x-api-key", "not-a-key"), ("x-purpose", "support")],
            401,
            "unknown_caller",
        ),
        (
            &[("x-api-key", ""), ("x-purpose", "support")],
            401,
            "ambiguous_credentials",
        ),
        (
            &[
                ("x-api-key", APP_KEY),
                ("x-api-key", APP_KEY),
                ("x-purpose", "support"),
            ],
            401,
            "ambiguous_credentials",
        ),
        (
            &[
                ("x-api-key", NEWSLETTER_KEY),
                ("x-api-key", APP_KEY),
                ("x-purpose", "support"),
            ],
            401,
            "ambiguous_credentials",
        ),
        (&[("x-api-key", APP_KEY)], 400, "purpose_missing"),
        (
            &[
                ("x-api-key", APP_KEY),
                ("x-purpose", "support"),
                ("x-purpose", "audit"),
            ],
            400,
            "purpose_ambiguous",
        ),
        (
            &[("x-api-key", APP_KEY), ("x-purpose", "support,audit")],
            400,
            "purpose_ambiguous",
        ),
        (
            &[("x-api-key", NEWSLETTER_KEY), ("x-purpose", "support")],
            403,
            "purpose_not_allowed",
        ),
        (
            &[("x-api-key", APP_KEY), ("x-purpose", "nonsense")],
            403,
            "purpose_unknown",
        ),
        (
            &[("x-api-key", APP_KEY), ("x-purpose", "Support")],
            403,
            "purpose_unknown",
        ),
        // The contacts routes have no rules for billing.
        (
            &[("x-api-key", APP_KEY), ("x-purpose", "billing")],
            403,
            "purpose_not_covered",
        ),
    ];
    for (headers, status, reason) in cases {
        let mut call = gw.get(CONTACT).over(proto);
        for (name, value) in *headers {
            call = call.header(name, value);
        }
        let rsp = call.send().await;
        rsp.assert_refused(*status, reason);
        assert!(!rsp.text().contains("Lovelace"));
        if *status == 401 {
            assert_eq!(
                rsp.header("www-authenticate"),
                Some("ApiKey header=\"X-Api-Key\"")
            );
        }
    }
    assert!(up.seen().is_empty(), "nothing went upstream");
}

both!(a_route_no_policy_covers_is_refused);
async fn a_route_no_policy_covers_is_refused(proto: Proto) {
    let up = Upstream::replying(Reply::json(&contact("1"))).await;
    let gw = gateway(&up).start().await;
    for path in [
        "/crm/v3/objects/deals",
        "/crm/v3/objects/contacts/1/notes",
        "/",
    ] {
        let rsp = gw.get(path).purpose("support").over(proto).send().await;
        rsp.assert_refused(403, "route_not_covered");
    }
    assert!(up.seen().is_empty());
}

both!(a_method_the_route_does_not_allow_is_refused);
async fn a_method_the_route_does_not_allow_is_refused(proto: Proto) {
    let up = Upstream::replying(Reply::json(&contact("1"))).await;
    let gw = gateway(&up).start().await;
    for method in [Method::DELETE, Method::PUT, Method::POST] {
        let rsp = gw
            .call(method, CONTACT)
            .purpose("support")
            .over(proto)
            .send()
            .await;
        rsp.assert_refused(405, "method_not_allowed");
    }
    assert!(up.seen().is_empty());
}

both!(the_route_of_another_object_does_not_serve_marketing);
async fn the_route_of_another_object_does_not_serve_marketing(proto: Proto) {
    let up = Upstream::replying(Reply::json(&serde_json::json!({ "results": [] }))).await;
    let gw = gateway(&up).start().await;
    let rsp = gw
        .get("/crm/v3/objects/tickets")
        .purpose("marketing")
        .over(proto)
        .send()
        .await;
    rsp.assert_refused(403, "purpose_not_covered");
    let rsp = gw
        .get("/crm/v3/objects/tickets")
        .purpose("billing")
        .over(proto)
        .send()
        .await;
    assert_eq!(rsp.ok_json(), serde_json::json!({ "results": [] }));
}

both!(a_passthrough_route_is_served_as_it_is_without_a_key);
async fn a_passthrough_route_is_served_as_it_is_without_a_key(proto: Proto) {
    let up = Upstream::replying(
        Reply::bytes("ok: email ada@example.com")
            .header("content-type", "text/plain")
            .header("etag", "\"v1\""),
    )
    .await;
    let gw = gateway(&up).start().await;
    let rsp = gw.get("/health").over(proto).send().await;
    assert_eq!(rsp.status, 200);
    assert_eq!(rsp.text(), "ok: email ada@example.com");
    assert_eq!(rsp.header("content-type"), Some("text/plain"));
    assert_eq!(rsp.header("etag"), Some("\"v1\""));
    assert_eq!(up.last().target, "/health");
}
