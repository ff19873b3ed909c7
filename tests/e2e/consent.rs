//! Lawful basis per record: omitted from lists, refused on single records; changes in the
//! consent store apply to the next request without a restart; a failing store grants nothing.

use std::time::Duration;

use consentry::consent::event::{EventKind, now_ms};
use serde_json::{Value, json};

use crate::both;
use crate::support::{Proto, Reply, Upstream, contact, contacts, gateway};

const LIST: &str = "/crm/v3/objects/contacts";

fn ids(body: &Value) -> Vec<&str> {
    body["results"]
        .as_array()
        .expect("a results array")
        .iter()
        .map(|r| r["id"].as_str().expect("an id"))
        .collect()
}

both!(a_list_omits_records_without_consent);
async fn a_list_omits_records_without_consent(proto: Proto) {
    let up = Upstream::replying(Reply::json(&contacts(&["1", "2", "3"]))).await;
    let gw = gateway(&up).start().await;
    gw.grant("1", "marketing").await;
    gw.grant("3", "marketing").await;
    // A grant for another purpose is no grant for marketing.
    gw.grant("2", "support").await;
    let rsp = gw.get(LIST).purpose("marketing").over(proto).send().await;
    let body = rsp.ok_json();
    assert_eq!(ids(&body), ["1", "3"]);
    assert!(!rsp.text().contains("ada2@example.com"));
}

both!(a_single_record_without_consent_is_refused);
async fn a_single_record_without_consent_is_refused(proto: Proto) {
    let up = Upstream::replying(Reply::json(&contact("2"))).await;
    let gw = gateway(&up).start().await;
    let rsp = gw
        .get("/crm/v3/objects/contacts/2")
        .purpose("marketing")
        .over(proto)
        .send()
        .await;
    rsp.assert_refused(403, "no_lawful_basis");
    assert!(!rsp.text().contains("ada2"));
}

both!(a_withdrawal_applies_to_the_next_request);
async fn a_withdrawal_applies_to_the_next_request(proto: Proto) {
    let up = Upstream::replying(Reply::json(&contact("1"))).await;
    let gw = gateway(&up).start().await;
    let get = || {
        gw.get("/crm/v3/objects/contacts/1")
            .purpose("marketing")
            .over(proto)
    };
    get().send().await.assert_refused(403, "no_lawful_basis");
    gw.grant("1", "marketing").await;
    assert_eq!(get().send().await.ok_json()["id"], "1");
    gw.record("1", "marketing", EventKind::Withdrawn, None)
        .await;
    get().send().await.assert_refused(403, "no_lawful_basis");
    gw.grant("1", "marketing").await;
    assert_eq!(get().send().await.ok_json()["id"], "1");
}

both!(an_objection_ends_a_legitimate_interest);
async fn an_objection_ends_a_legitimate_interest(proto: Proto) {
    let up = Upstream::serve(|seen| {
        if seen.target.ends_with("/1") {
            Reply::json(&contact("1"))
        } else {
            Reply::json(&contacts(&["1", "2"]))
        }
    })
    .await;
    let gw = gateway(&up).start().await;
    let one = || {
        gw.get("/crm/v3/objects/contacts/1")
            .purpose("analytics")
            .over(proto)
    };
    let list = || gw.get(LIST).purpose("analytics").over(proto);
    assert_eq!(one().send().await.status, 200);
    assert_eq!(
        list().send().await.ok_json()["results"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    gw.record("1", "analytics", EventKind::Objected, None).await;
    one().send().await.assert_refused(403, "no_lawful_basis");
    let body = list().send().await.ok_json();
    assert_eq!(body["results"].as_array().unwrap().len(), 1);
    assert_ne!(
        body["results"][0]["id"],
        crate::support::hmac_hex(crate::support::PSEUDONYM_KEY, "1")
    );
}

#[tokio::test]
async fn an_expired_grant_is_no_grant() {
    let up = Upstream::replying(Reply::json(&contacts(&["1", "2"]))).await;
    let gw = gateway(&up).start().await;
    gw.record("1", "marketing", EventKind::Granted, Some(now_ms() - 1_000))
        .await;
    gw.grant("2", "marketing").await;
    let body = gw.get(LIST).purpose("marketing").send().await.ok_json();
    assert_eq!(ids(&body), ["2"]);
}

#[tokio::test]
async fn a_grant_lapses_when_it_expires() {
    let up = Upstream::replying(Reply::json(&contact("1"))).await;
    let gw = gateway(&up).start().await;
    let get = || gw.get("/crm/v3/objects/contacts/1").purpose("marketing");
    let expires = now_ms() + 300;
    gw.record("1", "marketing", EventKind::Granted, Some(expires))
        .await;
    assert_eq!(get().send().await.ok_json()["id"], "1");
    // The cached state is still fresh; its expiry is what ends it.
    let wait = u64::try_from(expires - now_ms() + 20).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(wait)).await;
    get().send().await.assert_refused(403, "no_lawful_basis");
}

both!(a_contract_needs_no_consent);
async fn a_contract_needs_no_consent(proto: Proto) {
    let up = Upstream::replying(Reply::json(&contacts(&["1", "2"]))).await;
    let gw = gateway(&up).start().await;
    // Even an objection or a withdrawal does not stop a contract.
    gw.record("2", "support", EventKind::Withdrawn, None).await;
    let body = gw
        .get(LIST)
        .purpose("support")
        .over(proto)
        .send()
        .await
        .ok_json();
    assert_eq!(ids(&body), ["1", "2"]);
}

both!(without_basis_non_personal_keeps_system_fields_only);
async fn without_basis_non_personal_keeps_system_fields_only(proto: Proto) {
    let up = Upstream::replying(Reply::json(&contacts(&["1", "2"]))).await;
    let gw = gateway(&up).start().await;
    gw.grant("1", "marketing").await;
    let rsp = gw
        .get("/crm/v3/digest/contacts")
        .purpose("marketing")
        .over(proto)
        .send()
        .await;
    let body = rsp.ok_json();
    assert_eq!(body["results"][0]["id"], "1");
    assert_eq!(
        body["results"][0]["properties"]["email"],
        "ada1@example.com"
    );
    assert_eq!(
        body["results"][1],
        json!({
            "properties": { "lifecyclestage": "lead" },
            "createdAt": "2024-03-05T10:00:00Z",
            "updatedAt": "2024-04-01T00:00:00Z"
        })
    );
    assert!(!rsp.text().contains("ada2"));
}

/// Makes the consent store fail: the event table is gone.
async fn break_the_store(gw: &crate::support::Gw) {
    use sqlx::Connection;
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(gw.consent_db());
    let mut conn = sqlx::SqliteConnection::connect_with(&options)
        .await
        .expect("open");
    sqlx::query("DROP TABLE consent_events")
        .execute(&mut conn)
        .await
        .expect("drop");
    conn.close().await.expect("close");
}

both!(a_failing_store_means_no_consent);
async fn a_failing_store_means_no_consent(proto: Proto) {
    let up = Upstream::serve(|seen| {
        if seen.target.ends_with("/1") {
            Reply::json(&contact("1"))
        } else {
            Reply::json(&contacts(&["1", "2"]))
        }
    })
    .await;
    // No cache: every request asks the store.
    let gw = gateway(&up)
        .config(|c| c.consent.cache_ttl_ms = 0)
        .start()
        .await;
    gw.grant("1", "marketing").await;
    gw.grant("2", "marketing").await;
    let list = || gw.get(LIST).purpose("marketing").over(proto);
    let one = || {
        gw.get("/crm/v3/objects/contacts/1")
            .purpose("marketing")
            .over(proto)
    };
    assert_eq!(ids(&list().send().await.ok_json()), ["1", "2"]);
    break_the_store(&gw).await;
    let rsp = list().send().await;
    assert_eq!(ids(&rsp.ok_json()), Vec::<&str>::new());
    assert!(!rsp.text().contains("example.com"));
    one().send().await.assert_refused(403, "no_lawful_basis");
    // Legitimate interest needs a lookup too: a failing store is not "no objection".
    let rsp = gw.get(LIST).purpose("analytics").over(proto).send().await;
    assert_eq!(rsp.ok_json()["results"], json!([]));
    // A contract needs no lookup and is unaffected.
    assert_eq!(
        ids(&gw
            .get(LIST)
            .purpose("support")
            .over(proto)
            .send()
            .await
            .ok_json()),
        ["1", "2"]
    );
}

both!(a_withdrawal_written_by_another_process_applies_without_a_restart);
async fn a_withdrawal_written_by_another_process_applies_without_a_restart(proto: Proto) {
    use consentry::consent::sqlite::{SqliteStore, SqliteStoreOptions};
    use consentry::consent::store::ConsentStore;
    let up = Upstream::replying(Reply::json(&contact("1"))).await;
    let gw = gateway(&up).start().await;
    let get = || {
        gw.get("/crm/v3/objects/contacts/1")
            .purpose("marketing")
            .over(proto)
    };
    gw.grant("1", "marketing").await;
    assert_eq!(get().send().await.ok_json()["id"], "1");
    // Another writer on the same file, as the consent command line is.
    let options = SqliteStoreOptions {
        watch_interval: None,
        ..SqliteStoreOptions::default()
    };
    let other = SqliteStore::open_with(gw.consent_db(), options)
        .await
        .unwrap();
    let withdrawal = consentry::consent::event::ConsentEvent {
        subject: "1".into(),
        purpose: "marketing".into(),
        kind: EventKind::Withdrawn,
        at_ms: now_ms(),
        expires_at_ms: None,
        source: Some("cli".into()),
        proof: None,
        actor: None,
        recorded_at_ms: None,
    };
    other.append(&[withdrawal]).await.unwrap();
    // The gateway notices writes by others on its own (a change watcher), well before the
    // cache's TTL ends.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let rsp = get().send().await;
        if rsp.status == 403 {
            rsp.assert_refused(403, "no_lawful_basis");
            break;
        }
        assert_eq!(rsp.status, 200);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the withdrawal was not noticed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

both!(numeric_subject_ids_are_looked_up_by_their_digits);
async fn numeric_subject_ids_are_looked_up_by_their_digits(proto: Proto) {
    let body = r#"{"results":[
        {"id":1,"properties":{"email":"one@example.com"}},
        {"id":2,"properties":{"email":"two@example.com"}},
        {"id":123456789012345678901234567890,"properties":{"email":"big@example.com"}}
    ]}"#;
    let up =
        Upstream::replying(Reply::bytes(body).header("content-type", "application/json")).await;
    let gw = gateway(&up).start().await;
    gw.grant("1", "marketing").await;
    gw.grant("123456789012345678901234567890", "marketing")
        .await;
    let rsp = gw.get(LIST).purpose("marketing").over(proto).send().await;
    let text = rsp.text();
    assert_eq!(rsp.status, 200, "{text}");
    assert!(
        text.contains("one@example.com") && text.contains("big@example.com"),
        "{text}"
    );
    assert!(!text.contains("two@example.com"), "{text}");
}

both!(consent_is_decided_record_by_record_across_a_streamed_list);
async fn consent_is_decided_record_by_record_across_a_streamed_list(proto: Proto) {
    let body = crate::fail_closed::list_of(1200);
    let up = Upstream::replying(
        Reply::bytes(body)
            .header("content-type", "application/json")
            .in_parts(8192, Duration::ZERO),
    )
    .await;
    let gw = gateway(&up).start().await;
    // Two contacts in three consented, in one batch.
    let grants: Vec<_> = (1..=1200)
        .filter(|i| i % 3 != 0)
        .map(|i| consentry::consent::event::ConsentEvent {
            subject: i.to_string(),
            purpose: "marketing".into(),
            kind: EventKind::Granted,
            at_ms: now_ms(),
            expires_at_ms: None,
            source: None,
            proof: None,
            actor: None,
            recorded_at_ms: None,
        })
        .collect();
    gw.gateway.consent.record(&grants).await.unwrap();
    let rsp = gw.get(LIST).purpose("marketing").over(proto).send().await;
    let body = rsp.ok_json();
    let want: Vec<String> = (1..=1200)
        .filter(|i| i % 3 != 0)
        .map(|i| i.to_string())
        .collect();
    assert_eq!(ids(&body), want);
    assert!(!rsp.text().contains("ada3@example.com"));
    assert!(
        rsp.body.len() > 64 * 1024 && rsp.header("content-length").is_none(),
        "streamed"
    );
    // HEAD says the length GET has, without sending it.
    let head = gw
        .call(http::Method::HEAD, LIST)
        .purpose("marketing")
        .over(proto)
        .send()
        .await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(
        head.header("content-length"),
        Some(rsp.body.len().to_string().as_str())
    );
}

/// `consentry consent export-all` prints the whole record in both formats; imported into a new
/// store with `consent import`, it exports again byte for byte (actors and recording times
/// included), while the gateway that holds the first store keeps running.
#[tokio::test]
async fn the_cli_exports_everything_and_the_export_imports_back_unchanged() {
    let up = Upstream::replying(Reply::json(&contact("1"))).await;
    let gw = gateway(&up).start().await;
    gw.grant("1", "marketing").await;
    gw.record("1", "marketing", EventKind::Withdrawn, None)
        .await;
    gw.record("2", "*", EventKind::OptedOut, None).await;
    gw.record("3, \"quoted\"", "analytics", EventKind::Objected, None)
        .await;
    let data = gw.consent_db().parent().unwrap().to_owned();
    let bin = env!("CARGO_BIN_EXE_consentry");
    let cli = |dir: &std::path::Path, args: &[&str]| {
        let out = std::process::Command::new(bin)
            .arg("consent")
            .arg("--data-dir")
            .arg(dir)
            .args(args)
            .env_remove("CONSENTRY_CONFIG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    for (format, ext) in [("csv", "csv"), ("jsonl", "jsonl")] {
        let export = cli(&data, &["export-all", "--format", format]);
        let lines = export.lines().count();
        assert_eq!(lines, if format == "csv" { 5 } else { 4 }, "{export}");
        let fresh = tempfile::tempdir().unwrap();
        let file = fresh.path().join(format!("export.{ext}"));
        std::fs::write(&file, &export).unwrap();
        let dir = fresh.path().join("data");
        cli(&dir, &["import", file.to_str().unwrap()]);
        assert_eq!(cli(&dir, &["export-all", "--format", format]), export);
    }
}
