//! Consent kept in an external consent-management platform (`consent.store: http`): the
//! gateway serves exactly what the platform grants, refuses everything that needs consent while
//! the platform is down, and serves again once it is back.

use std::time::Duration;

use serde_json::Value;

use crate::both;
use crate::support::{ConsentPlatform, Proto, Reply, Upstream, contact, contacts, gateway};

const LIST: &str = "/crm/v3/objects/contacts";

fn ids(body: &Value) -> Vec<&str> {
    body["results"]
        .as_array()
        .expect("a results array")
        .iter()
        .map(|r| r["id"].as_str().expect("an id"))
        .collect()
}

/// An upstream serving contact 1 on its own path and contacts 1, 2, 3 on the list.
async fn crm() -> Upstream {
    Upstream::serve(|seen| {
        if seen.target.ends_with("/1") {
            Reply::json(&contact("1"))
        } else {
            Reply::json(&contacts(&["1", "2", "3"]))
        }
    })
    .await
}

both!(a_list_shows_exactly_the_subjects_the_platform_grants);
async fn a_list_shows_exactly_the_subjects_the_platform_grants(proto: Proto) {
    let platform = ConsentPlatform::start().await;
    platform.grant("1", "marketing");
    platform.withdraw("2", "marketing");
    platform.grant("3", "marketing");
    // A grant for another purpose is no grant for marketing.
    platform.grant("2", "support");
    let up = crm().await;
    let gw = gateway(&up).consent_platform(&platform).start().await;
    let rsp = gw.get(LIST).purpose("marketing").over(proto).send().await;
    assert_eq!(ids(&rsp.ok_json()), ["1", "3"]);
    assert!(!rsp.text().contains("ada2@example.com"));
    // One request per subject, for the purpose declared.
    let mut seen = platform.seen();
    seen.sort();
    assert_eq!(
        seen,
        [
            "/consents/1/marketing",
            "/consents/2/marketing",
            "/consents/3/marketing"
        ]
    );
}

both!(a_platform_that_is_down_means_refusals_until_it_is_back);
async fn a_platform_that_is_down_means_refusals_until_it_is_back(proto: Proto) {
    const TTL: Duration = Duration::from_millis(300);
    let platform = ConsentPlatform::start().await;
    platform.grant("1", "marketing");
    platform.grant("3", "marketing");
    let up = crm().await;
    let gw = gateway(&up)
        .consent_platform(&platform)
        .config(|c| c.consent.cache_ttl_ms = 300)
        .start()
        .await;
    let one = || {
        gw.get("/crm/v3/objects/contacts/1")
            .purpose("marketing")
            .over(proto)
    };
    let list = || gw.get(LIST).purpose("marketing").over(proto);
    assert_eq!(one().send().await.ok_json()["id"], "1");
    assert_eq!(ids(&list().send().await.ok_json()), ["1", "3"]);

    platform.set_down(true);
    // What was cached may be served until its TTL ends; after that, nothing is.
    tokio::time::sleep(TTL + Duration::from_millis(50)).await;
    let rsp = one().send().await;
    rsp.assert_refused(403, "no_lawful_basis");
    assert!(!rsp.text().contains("ada1"));
    let rsp = list().send().await;
    assert_eq!(ids(&rsp.ok_json()), Vec::<&str>::new());
    assert!(!rsp.text().contains("example.com"));
    // A contract needs no consent, and no platform.
    assert_eq!(
        ids(&gw
            .get(LIST)
            .purpose("support")
            .over(proto)
            .send()
            .await
            .ok_json()),
        ["1", "2", "3"]
    );

    // Back: failures were not cached, so the next request is served.
    platform.set_down(false);
    assert_eq!(one().send().await.ok_json()["id"], "1");
    assert_eq!(ids(&list().send().await.ok_json()), ["1", "3"]);
}

#[tokio::test]
async fn a_withdrawal_on_the_platform_applies_once_the_ttl_ends() {
    let platform = ConsentPlatform::start().await;
    platform.grant("1", "marketing");
    let up = crm().await;
    let gw = gateway(&up)
        .consent_platform(&platform)
        .config(|c| c.consent.cache_ttl_ms = 200)
        .start()
        .await;
    let one = || gw.get("/crm/v3/objects/contacts/1").purpose("marketing");
    assert_eq!(one().send().await.ok_json()["id"], "1");
    platform.withdraw("1", "marketing");
    tokio::time::sleep(Duration::from_millis(250)).await;
    one().send().await.assert_refused(403, "no_lawful_basis");
}

#[tokio::test]
async fn a_gateway_with_unworkable_platform_settings_does_not_start() {
    let platform = ConsentPlatform::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let policies = dir.path().join("policy");
    std::fs::create_dir_all(&policies).expect("policy dir");
    std::fs::write(policies.join("policy.yaml"), crate::support::policy()).expect("policy");
    std::fs::write(
        policies.join("pseudonym.key"),
        crate::support::PSEUDONYM_KEY,
    )
    .expect("key");
    let mut settings = platform.settings();
    settings.status.path = "$..status".to_owned();
    let config = consentry::config::Config {
        policies,
        data_dir: dir.path().join("data"),
        consent: consentry::config::ConsentConfig {
            store: consentry::config::StoreKind::Http,
            http: Some(settings),
            ..Default::default()
        },
        ..Default::default()
    };
    let err = match consentry::server::build(&config).await {
        Ok(_) => panic!("the gateway started"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("consent.http.status.path"), "{err}");
    assert!(err.contains("`..`"), "{err}");
    assert!(platform.seen().is_empty());
}
