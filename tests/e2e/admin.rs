//! The admin API on its own listener, against a real SQLite store: authentication, every
//! route, its effect on the very next proxied request, all-or-nothing imports, export/import
//! round trips, data subject requests, limits, problems naming the field, and the OpenAPI
//! document against the routes actually served.

use std::collections::BTreeMap;
use std::time::Duration;

use consentry::config::AdminToken;
use http::Method;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};

use crate::support::{
    ADMIN_TOKEN, APP_KEY, Gw, Reply, Resp, Upstream, contact, contacts, gateway, raw_status,
    raw_try,
};

const LIST: &str = "/crm/v3/objects/contacts";

/// A path segment for any subject id.
fn seg(id: &str) -> String {
    utf8_percent_encode(id, NON_ALPHANUMERIC).to_string()
}

async fn started() -> (Upstream, Gw) {
    let up = Upstream::replying(Reply::json(&contacts(&["1", "2", "3"]))).await;
    let gw = gateway(&up).admin().start().await;
    (up, gw)
}

/// Records `body` through the API, asserting a 201; returns the recorded events.
async fn record(gw: &Gw, body: Value) -> Vec<Value> {
    let rsp = gw
        .admin(Method::POST, "/v1/consent/events")
        .json(&body)
        .send()
        .await;
    assert_eq!(rsp.status, 201, "{}", rsp.text());
    rsp.json()["recorded"].as_array().unwrap().clone()
}

async fn history(gw: &Gw, subject: &str) -> Vec<Value> {
    let rsp = gw
        .admin(
            Method::GET,
            &format!("/v1/subjects/{}/history", seg(subject)),
        )
        .send()
        .await;
    let body = rsp.ok_json();
    assert_eq!(body["subject"], subject);
    body["events"].as_array().unwrap().clone()
}

/// Asserts a problem with this status, reason and (when given) field.
fn assert_problem(rsp: &Resp, status: u16, reason: &str, field: Option<&str>) {
    rsp.assert_refused(status, reason);
    let problem = rsp.json();
    assert_eq!(
        problem["field"].as_str(),
        field,
        "field of problem: {problem}"
    );
    assert!(problem["title"].is_string() && problem["detail"].is_string());
    assert_eq!(
        problem["type"],
        format!("https://consentry.dev/problems/{reason}")
    );
}

#[tokio::test]
async fn the_admin_api_needs_an_admin_token() {
    let (_up, gw) = started().await;
    let path = "/v1/subjects/1/history";
    let none = gw.admin_call(Method::GET, path).send().await;
    assert_problem(&none, 401, "unauthorized", None);
    assert!(
        none.header("www-authenticate")
            .unwrap()
            .starts_with("Bearer")
    );
    let bad = gw
        .admin_call(Method::GET, path)
        .bearer("e2e-admin-token-0123456780")
        .send()
        .await;
    assert_problem(&bad, 401, "unauthorized", None);
    // A proxy caller's key is not an admin token, in either header.
    let key = gw
        .admin_call(Method::GET, path)
        .header("x-api-key", APP_KEY)
        .send()
        .await;
    assert_problem(&key, 401, "unauthorized", None);
    let key = gw
        .admin_call(Method::GET, path)
        .bearer(APP_KEY)
        .send()
        .await;
    assert_problem(&key, 401, "unauthorized", None);
    let basic = gw
        .admin_call(Method::GET, path)
        .header("authorization", &format!("Basic {ADMIN_TOKEN}"))
        .send()
        .await;
    assert_problem(&basic, 401, "unauthorized", None);
    assert_eq!(gw.admin(Method::GET, path).send().await.status, 200);
    // No token ever comes back.
    for rsp in [none, bad, key, basic] {
        assert!(!rsp.text().contains(ADMIN_TOKEN));
    }
    // The admin API is not on the proxy listener, nor the proxy on the admin listener.
    let on_proxy = gw.call(Method::GET, path).bearer(ADMIN_TOKEN).send().await;
    assert_ne!(on_proxy.status, 200);
    let on_admin = gw
        .admin(Method::GET, LIST)
        .header("x-api-key", APP_KEY)
        .header("x-purpose", "support")
        .send()
        .await;
    assert_problem(&on_admin, 404, "not_found", None);
}

#[tokio::test]
async fn a_hashed_token_from_the_configuration_is_the_recorded_actor() {
    let up = Upstream::replying(Reply::json(&contact("1"))).await;
    let secret = "crm-sync-secret-9f8e7d6c5b4a";
    let digest = AdminToken::from_secret("crm-sync", secret).sha256;
    let gw = gateway(&up)
        .admin()
        .config(|c| {
            c.admin.tokens = vec![AdminToken {
                name: "crm-sync".into(),
                sha256: digest.to_uppercase(),
            }];
        })
        .start()
        .await;
    // The test token of the other gateways is not configured here.
    let rsp = gw.admin(Method::GET, "/v1/subjects/1/history").send().await;
    assert_problem(&rsp, 401, "unauthorized", None);
    let rsp = gw
        .admin_call(Method::POST, "/v1/consent/events")
        .bearer(secret)
        .json(&json!({"subject": "1", "purpose": "marketing", "kind": "granted"}))
        .send()
        .await;
    assert_eq!(rsp.status, 201, "{}", rsp.text());
    assert_eq!(rsp.json()["recorded"][0]["actor"], "admin:crm-sync");
    let events = gw
        .admin_call(Method::GET, "/v1/subjects/1/history")
        .bearer(secret)
        .send()
        .await
        .ok_json();
    assert_eq!(events["events"][0]["actor"], "admin:crm-sync");
}

#[tokio::test]
async fn record_then_read_the_state_and_the_history() {
    let (_up, gw) = started().await;
    // One event: the answer is what was recorded, actor and recording time included.
    let one = record(
        &gw,
        json!({
            "subject": "42", "purpose": "marketing", "kind": "granted",
            "at": "2024-01-02T03:04:05Z", "expires_at": "2099-01-01T00:00:00Z",
            "source": "web_form", "proof": "form-4711"
        }),
    )
    .await;
    assert_eq!(one.len(), 1);
    assert_eq!(one[0]["actor"], "admin:ops");
    assert_eq!(one[0]["at"], "2024-01-02T03:04:05Z");
    assert_eq!(one[0]["expires_at"], "2099-01-01T00:00:00Z");
    assert!(one[0]["recorded_at"].is_string());
    // A batch, in one transaction.
    let batch = record(
        &gw,
        json!({"events": [
            {"subject": "42", "purpose": "newsletter", "kind": "granted",
             "at": "2020-01-01T00:00:00Z", "expires_at": "2021-01-01T00:00:00Z"},
            {"subject": "42", "purpose": "analytics", "kind": "objected", "source": "email"},
            {"subject": "42", "purpose": "profiling", "kind": "granted", "at": "2024-01-01T00:00:00Z"},
            {"subject": "42", "purpose": "profiling", "kind": "withdrawn", "at": "2024-02-01T00:00:00Z"},
            {"subject": "42", "purpose": "*", "kind": "opted_out", "source": "gpc"}
        ]}),
    )
    .await;
    assert_eq!(batch.len(), 5);

    let state = gw
        .admin(Method::GET, "/v1/subjects/42/consent")
        .send()
        .await
        .ok_json();
    assert_eq!(state["subject"], "42");
    let statuses: BTreeMap<&str, &str> = state["purposes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["purpose"].as_str().unwrap(),
                p["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        BTreeMap::from([
            ("*", "opted_out"),
            ("analytics", "objected"),
            ("marketing", "granted"),
            ("newsletter", "expired"),
            ("profiling", "withdrawn"),
        ])
    );
    let marketing = state["purposes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["purpose"] == "marketing")
        .unwrap();
    assert_eq!(marketing["latest"]["proof"], "form-4711");
    // The decisions of the running policy, per purpose.
    let decisions: BTreeMap<&str, (&str, &str)> = state["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["purpose"].as_str().unwrap(),
                (
                    d["basis"].as_str().unwrap(),
                    d["decision"].as_str().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(decisions["marketing"], ("consent", "granted"));
    assert_eq!(decisions["analytics"], ("legitimate_interest", "denied"));
    assert_eq!(decisions["support"], ("contract", "granted"));
    assert_eq!(decisions["audit"], ("legal_obligation", "granted"));

    // History: every event, oldest first, with actor and recording time.
    let events = history(&gw, "42").await;
    assert_eq!(events.len(), 6);
    let ats: Vec<&str> = events.iter().map(|e| e["at"].as_str().unwrap()).collect();
    let mut sorted = ats.clone();
    sorted.sort();
    assert_eq!(ats, sorted);
    assert_eq!(events[0]["purpose"], "newsletter");
    assert!(
        events
            .iter()
            .all(|e| e["actor"] == "admin:ops" && e["recorded_at"].is_string())
    );
    // A subject nobody recorded anything for has an empty state and history.
    let empty = gw
        .admin(Method::GET, "/v1/subjects/nobody/consent")
        .send()
        .await
        .ok_json();
    assert_eq!(empty["purposes"], json!([]));
    assert_eq!(history(&gw, "nobody").await, Vec::<Value>::new());
}

#[tokio::test]
async fn subject_ids_may_hold_any_character() {
    let (_up, gw) = started().await;
    let id = "a/b c?d#e%2F\u{e9}";
    record(
        &gw,
        json!({"subject": id, "purpose": "marketing", "kind": "granted"}),
    )
    .await;
    let events = history(&gw, id).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["subject"], id);
    // The unencoded neighbour is another subject.
    assert!(history(&gw, "a").await.is_empty());
}

#[tokio::test]
async fn an_event_recorded_through_the_api_applies_to_the_next_request() {
    let up = Upstream::replying(Reply::json(&contact("1"))).await;
    let gw = gateway(&up).admin().start().await;
    let get = || gw.get("/crm/v3/objects/contacts/1").purpose("marketing");
    get().send().await.assert_refused(403, "no_lawful_basis");
    record(
        &gw,
        json!({"subject": "1", "purpose": "marketing", "kind": "granted"}),
    )
    .await;
    assert_eq!(get().send().await.ok_json()["id"], "1");
    // The state is now cached by the request path; the withdrawal must still apply at once.
    assert_eq!(get().send().await.ok_json()["id"], "1");
    record(
        &gw,
        json!({"subject": "1", "purpose": "marketing", "kind": "withdrawn", "source": "preference_centre"}),
    )
    .await;
    get().send().await.assert_refused(403, "no_lawful_basis");
}

#[tokio::test]
async fn an_import_is_all_or_nothing_and_names_the_bad_line() {
    let (_up, gw) = started().await;
    let import = |body: &str, content_type: &str| {
        gw.admin(Method::POST, "/v1/consent/import")
            .header("content-type", content_type)
            .body(body.to_owned())
    };
    let csv = "subject,purpose,kind,at\n\
               1,marketing,granted,2024-01-01T00:00:00Z\n\
               2,marketing,maybe,2024-01-01T00:00:00Z\n\
               3,marketing,granted,2024-01-01T00:00:00Z\n";
    let rsp = import(csv, "text/csv").send().await;
    assert_problem(&rsp, 400, "invalid_import", Some("kind"));
    assert_eq!(rsp.json()["line"], 3);
    assert!(rsp.json()["detail"].as_str().unwrap().contains("maybe"));
    let jsonl = "{\"subject\":\"1\",\"purpose\":\"marketing\",\"kind\":\"granted\"}\n\
                 \n\
                 {\"subject\":\"2\",\"purpose\":\"marketing\",\"kind\":\"granted\",\"colour\":\"red\"}\n";
    let rsp = import(jsonl, "application/x-ndjson").send().await;
    assert_problem(&rsp, 400, "invalid_import", Some("colour"));
    assert_eq!(rsp.json()["line"], 3);
    // Nothing of either was written.
    assert!(history(&gw, "1").await.is_empty());
    let export = gw.admin(Method::GET, "/v1/consent/export").send().await;
    assert_eq!(export.status, 200);
    assert_eq!(export.text(), "");

    // No format: 415; `?format=` overrides the type.
    let rsp = import(csv, "application/octet-stream").send().await;
    assert_problem(&rsp, 415, "unsupported_media_type", None);
    let good = "subject,purpose,kind\n1,marketing,granted\n2,*,opted_out\n";
    let rsp = gw
        .admin(
            Method::POST,
            "/v1/consent/import?format=csv&source=crm-export",
        )
        .header("content-type", "text/plain")
        .body(good)
        .send()
        .await;
    assert_eq!(rsp.ok_json()["imported"], 2);
    let events = history(&gw, "1").await;
    assert_eq!(events[0]["source"], "crm-export");
    assert_eq!(events[0]["actor"], "admin:ops");
    let rsp = import(
        "{\"subject\":\"3\",\"purpose\":\"marketing\",\"kind\":\"granted\"}\n",
        "application/jsonl; charset=utf-8",
    )
    .send()
    .await;
    assert_eq!(rsp.ok_json()["imported"], 1);
    let rsp = import("subject,purpose,kind\n1,m,granted\n", "text/csv")
        .body(vec![0xff, 0xfe, b'\n'])
        .send()
        .await;
    assert_problem(&rsp, 400, "invalid_encoding", None);
}

/// Exports the whole record of consent in `format`.
async fn export(gw: &Gw, format: &str) -> String {
    let rsp = gw
        .admin(Method::GET, &format!("/v1/consent/export?format={format}"))
        .send()
        .await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    let want = if format == "csv" {
        "text/csv; charset=utf-8"
    } else {
        "application/x-ndjson"
    };
    assert_eq!(rsp.header("content-type"), Some(want));
    rsp.text()
}

#[tokio::test]
async fn an_export_imports_into_a_fresh_gateway_unchanged() {
    let (_up, gw) = started().await;
    let awkward = [
        "1",
        "a,b",
        "quote\"d",
        "new\nline",
        "sp ace",
        "\u{e9}t\u{e9}",
    ];
    let mut events = Vec::new();
    for (i, id) in awkward.iter().enumerate() {
        events.push(
            json!({"subject": id, "purpose": "marketing", "kind": "granted",
            "at": format!("2024-01-0{}T00:00:00Z", i + 1), "expires_at": "2099-01-01T00:00:00.5Z",
            "source": " web, form ", "proof": "line1\nline2 \"q\""}),
        );
        events.push(json!({"subject": id, "purpose": "*", "kind": "opted_out"}));
    }
    record(&gw, json!({"events": events})).await;
    // More than two export pages, through a bulk import.
    let mut bulk = String::from("subject,purpose,kind,at\n");
    for i in 0..2_345 {
        bulk.push_str(&format!(
            "bulk-{},analytics,objected,2024-03-01T00:00:00.{:03}Z\n",
            i % 50,
            i % 1000
        ));
    }
    let rsp = gw
        .admin(Method::POST, "/v1/consent/import")
        .header("content-type", "text/csv")
        .body(bulk)
        .send()
        .await;
    assert_eq!(rsp.ok_json()["imported"], 2_345);

    for format in ["jsonl", "csv"] {
        let exported = export(&gw, format).await;
        let fresh_up = Upstream::replying(Reply::json(&contacts(&[]))).await;
        let fresh = gateway(&fresh_up).admin().start().await;
        let content_type = if format == "csv" {
            "text/csv"
        } else {
            "application/x-ndjson"
        };
        let rsp = fresh
            .admin(Method::POST, "/v1/consent/import")
            .header("content-type", content_type)
            .body(exported.clone())
            .send()
            .await;
        assert_eq!(
            rsp.ok_json()["imported"],
            2_345 + 2 * awkward.len(),
            "{format}"
        );
        // The same histories, actor and recording time included...
        for id in awkward.iter().copied().chain(["bulk-0", "bulk-49"]) {
            assert_eq!(
                history(&fresh, id).await,
                history(&gw, id).await,
                "{format}: {id:?}"
            );
        }
        // ...and the very same export.
        assert_eq!(export(&fresh, format).await, exported, "{format}");
    }
}

#[tokio::test]
async fn subject_access_and_erasure() {
    let (_up, gw) = started().await;
    for id in ["1", "2", "3"] {
        record(
            &gw,
            json!({"subject": id, "purpose": "marketing", "kind": "granted", "proof": format!("p{id}")}),
        )
        .await;
    }
    record(
        &gw,
        json!({"subject": "2", "purpose": "analytics", "kind": "objected"}),
    )
    .await;
    let ids = |body: Value| -> Vec<String> {
        body["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let list = || gw.get(LIST).purpose("marketing");
    assert_eq!(ids(list().send().await.ok_json()), ["1", "2", "3"]);

    // Access: everything held, as JSON.
    let access = gw
        .admin(Method::GET, "/v1/subjects/2/export")
        .send()
        .await
        .ok_json();
    assert_eq!(access["subject"], "2");
    assert_eq!(access["consent_events"].as_array().unwrap().len(), 2);
    assert_eq!(access["consent_events"][0]["proof"], "p2");
    assert_eq!(access["erasures"], json!([]));

    // Erasure: the history goes, a pseudonymised record stays.
    let erased = gw
        .admin(Method::DELETE, "/v1/subjects/2?ref=DSR-2024-17")
        .send()
        .await
        .ok_json();
    assert_eq!(erased["events_removed"], 2);
    assert_eq!(erased["request_ref"], "DSR-2024-17");
    assert_eq!(erased["actor"], "admin:ops");
    assert!(erased["at"].is_string());
    let pseudonym = erased["subject_pseudonym"].as_str().unwrap();
    assert_eq!(pseudonym.len(), 64);
    assert!(pseudonym.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(erased.get("subject").is_none());
    assert!(history(&gw, "2").await.is_empty());

    // The very next proxied request: the subject has no consent any more.
    assert_eq!(ids(list().send().await.ok_json()), ["1", "3"]);

    // Access after erasure: no events, the erasure record under the pseudonym only.
    let access = gw
        .admin(Method::GET, "/v1/subjects/2/export")
        .send()
        .await
        .ok_json();
    assert_eq!(access["consent_events"], json!([]));
    assert_eq!(access["erasures"].as_array().unwrap().len(), 1);
    assert_eq!(access["erasures"][0]["subject_pseudonym"], pseudonym);
    assert_eq!(access["erasures"][0]["events_removed"], 2);
    assert_eq!(access["erasures"][0]["request_ref"], "DSR-2024-17");
    // The full export no longer holds the subject.
    let all = export(&gw, "jsonl").await;
    assert!(!all.contains("\"subject\":\"2\""), "{all}");
    assert!(!all.contains("p2"));
    // Other subjects are untouched, and an unknown one still gets a record (the request was
    // carried out).
    assert_eq!(history(&gw, "1").await.len(), 1);
    let nobody = gw
        .admin(Method::DELETE, "/v1/subjects/nobody")
        .send()
        .await
        .ok_json();
    assert_eq!(nobody["events_removed"], 0);
    assert!(nobody.get("request_ref").is_none());
}

#[tokio::test]
async fn erasure_refuses_the_single_record_on_the_next_request() {
    let up = Upstream::replying(Reply::json(&contact("1"))).await;
    let gw = gateway(&up).admin().start().await;
    let get = || gw.get("/crm/v3/objects/contacts/1").purpose("marketing");
    record(
        &gw,
        json!({"subject": "1", "purpose": "marketing", "kind": "granted"}),
    )
    .await;
    assert_eq!(get().send().await.ok_json()["id"], "1");
    let rsp = gw.admin(Method::DELETE, "/v1/subjects/1").send().await;
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    get().send().await.assert_refused(403, "no_lawful_basis");
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let up = Upstream::replying(Reply::json(&contacts(&[]))).await;
    let gw = gateway(&up)
        .admin()
        .config(|c| c.admin.max_body_bytes = 1024)
        .start()
        .await;
    let mut csv = String::from("subject,purpose,kind\n");
    while csv.len() <= 1024 {
        csv.push_str("1,marketing,granted\n");
    }
    let rsp = gw
        .admin(Method::POST, "/v1/consent/import")
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await;
    assert_problem(&rsp, 413, "body_too_large", None);
    let events: Vec<Value> = (0..40)
        .map(|i| json!({"subject": format!("{i}"), "purpose": "marketing", "kind": "granted"}))
        .collect();
    let rsp = gw
        .admin(Method::POST, "/v1/consent/events")
        .json(&json!({ "events": events }))
        .send()
        .await;
    assert_problem(&rsp, 413, "body_too_large", None);
    // Without a Content-Length (chunked), the limit holds all the same.
    let addr = gw.admin_addr.unwrap();
    let mut raw = format!(
        "POST /v1/consent/import HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ADMIN_TOKEN}\r\n\
         content-type: text/csv\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    for _ in 0..3 {
        raw.push_str(&format!("200\r\n{}\r\n", "x".repeat(0x200)));
    }
    raw.push_str("0\r\n\r\n");
    let (answer, _) = raw_try(addr, raw.as_bytes(), Duration::from_millis(500)).await;
    assert_eq!(
        raw_status(&answer),
        413,
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(String::from_utf8_lossy(&answer).contains("body_too_large"));
    assert!(history(&gw, "1").await.is_empty());
    // Under the limit, fine.
    record(
        &gw,
        json!({"subject": "1", "purpose": "marketing", "kind": "granted"}),
    )
    .await;
}

#[tokio::test]
async fn each_token_has_a_rate_limit() {
    let up = Upstream::replying(Reply::json(&contacts(&[]))).await;
    let other = "e2e-second-token-0123456789";
    let gw = gateway(&up)
        .admin()
        .config(|c| {
            c.admin.rate_per_second = 1;
            c.admin.burst = 2;
            c.admin
                .tokens
                .push(AdminToken::from_secret("second", other));
        })
        .start()
        .await;
    let path = "/v1/subjects/1/history";
    assert_eq!(gw.admin(Method::GET, path).send().await.status, 200);
    assert_eq!(gw.admin(Method::GET, path).send().await.status, 200);
    let limited = gw.admin(Method::GET, path).send().await;
    assert_problem(&limited, 429, "rate_limited", None);
    let retry: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    // Another token is not held back by the first one's spending.
    let rsp = gw.admin_call(Method::GET, path).bearer(other).send().await;
    assert_eq!(rsp.status, 200);
    // Health probes are not rate-limited.
    for _ in 0..5 {
        assert_eq!(
            gw.admin_call(Method::GET, "/healthz").send().await.status,
            200
        );
    }
}

#[tokio::test]
async fn bad_input_is_400_naming_the_field() {
    let (_up, gw) = started().await;
    let ev = |extra: Value| {
        let mut e = json!({"subject": "1", "purpose": "marketing", "kind": "granted"});
        for (k, v) in extra.as_object().unwrap() {
            e[k] = v.clone();
        }
        e
    };
    let cases: Vec<(String, &str, Option<&str>)> = vec![
        ("{\"subject\": ".to_owned(), "malformed_json", None),
        ("".to_owned(), "malformed_json", None),
        ("[1]".to_owned(), "invalid_body", None),
        (
            ev(json!({"colour": "red"})).to_string(),
            "unknown_field",
            Some("colour"),
        ),
        (
            ev(json!({"actor": "admin:someone-else"})).to_string(),
            "unknown_field",
            Some("actor"),
        ),
        (
            json!({"subject": "1", "kind": "granted"}).to_string(),
            "missing_field",
            Some("purpose"),
        ),
        (
            ev(json!({"kind": "maybe"})).to_string(),
            "invalid_field",
            Some("kind"),
        ),
        (
            ev(json!({"subject": 7})).to_string(),
            "invalid_field",
            Some("subject"),
        ),
        (
            ev(json!({"at": "yesterday"})).to_string(),
            "invalid_field",
            Some("at"),
        ),
        (
            ev(json!({"purpose": "*"})).to_string(),
            "invalid_field",
            Some("purpose"),
        ),
        (
            ev(json!({"kind": "withdrawn", "expires_at": "2099-01-01T00:00:00Z"})).to_string(),
            "invalid_field",
            Some("expires_at"),
        ),
        (
            ev(json!({"subject": ""})).to_string(),
            "invalid_field",
            Some("subject"),
        ),
        (
            "{\"subject\":\"1\",\"purpose\":\"m\",\"kind\":\"granted\",\"kind\":\"withdrawn\"}"
                .to_owned(),
            "invalid_field",
            Some("kind"),
        ),
        (
            json!({"events": [ev(json!({})), ev(json!({"kind": "nope"}))]}).to_string(),
            "invalid_field",
            Some("events[1].kind"),
        ),
        (
            json!({"events": [ev(json!({})), ev(json!({"extra": 1}))]}).to_string(),
            "unknown_field",
            Some("events[1].extra"),
        ),
        (
            json!({"events": []}).to_string(),
            "invalid_field",
            Some("events"),
        ),
        (
            json!({"events": [ev(json!({}))], "more": 1}).to_string(),
            "unknown_field",
            Some("more"),
        ),
    ];
    for (body, reason, field) in cases {
        let rsp = gw
            .admin(Method::POST, "/v1/consent/events")
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        assert_eq!(rsp.status, 400, "{body}: {}", rsp.text());
        let problem = rsp.json();
        assert_eq!(problem["reason"], reason, "{body}: {problem}");
        assert_eq!(problem["field"].as_str(), field, "{body}: {problem}");
    }
    // Nothing of any of them was recorded, not even the good first event of a bad batch.
    assert!(history(&gw, "1").await.is_empty());
    // Query parameters are fields too.
    let rsp = gw
        .admin(Method::GET, "/v1/consent/export?format=xml")
        .send()
        .await;
    assert_problem(&rsp, 400, "invalid_field", Some("format"));
    let rsp = gw
        .admin(Method::GET, "/v1/consent/export?fromat=csv")
        .send()
        .await;
    assert_problem(&rsp, 400, "unknown_field", Some("fromat"));
    let rsp = gw
        .admin(Method::DELETE, "/v1/subjects/1?ref=a&ref=b")
        .send()
        .await;
    assert_problem(&rsp, 400, "invalid_field", Some("ref"));
}

#[tokio::test]
async fn a_store_that_fails_is_503_and_unhealthy() {
    let (_up, gw) = started().await;
    let health = gw.admin_call(Method::GET, "/healthz").send().await;
    assert_eq!(
        health.ok_json(),
        json!({"status": "ok", "store": "reachable"})
    );
    gw.gateway.consent.store().close().await;
    // One check answers the probes of a second (see `a_flood_of_health_probes_...`).
    let started = std::time::Instant::now();
    let health = loop {
        let health = gw.admin_call(Method::GET, "/healthz").send().await;
        if health.status != 200 || started.elapsed() > Duration::from_secs(3) {
            break health;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(health.status, 503);
    assert_eq!(health.json()["store"], "unreachable");
    let rsp = gw
        .admin(Method::POST, "/v1/consent/events")
        .json(&json!({"subject": "1", "purpose": "marketing", "kind": "granted"}))
        .send()
        .await;
    assert_problem(&rsp, 503, "store_unavailable", None);
    // Internals stay in the log.
    assert!(!rsp.text().to_lowercase().contains("pool"));
    for path in [
        "/v1/subjects/1/history",
        "/v1/subjects/1/consent",
        "/v1/subjects/1/export",
        "/v1/consent/export",
    ] {
        let rsp = gw.admin(Method::GET, path).send().await;
        assert_problem(&rsp, 503, "store_unavailable", None);
    }
    let rsp = gw.admin(Method::DELETE, "/v1/subjects/1").send().await;
    assert_problem(&rsp, 503, "store_unavailable", None);
}

#[tokio::test]
async fn the_openapi_document_is_served_and_matches_the_routes() {
    let (_up, gw) = started().await;
    // Served without a token, identical to the checked-in file.
    let rsp = gw.admin_call(Method::GET, "/openapi.json").send().await;
    let doc = rsp.ok_json();
    let checked_in =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json")).unwrap();
    assert!(
        rsp.text() == checked_in,
        "the served document differs from docs/openapi.json: CONSENTRY_UPDATE_OPENAPI=1 cargo test --lib openapi"
    );
    // Every documented operation is routed: never 404 or 405 from the running listener.
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let Ok(m) = method.to_uppercase().parse::<Method>() else {
                continue;
            };
            operations += 1;
            let concrete = path.replace("{id}", "drift-check");
            let rsp = gw.admin(m.clone(), &concrete).send().await;
            assert!(
                ![404, 405].contains(&rsp.status.as_u16()),
                "{method} {path} is documented but answered {}: {}",
                rsp.status,
                rsp.text()
            );
        }
    }
    assert_eq!(operations, 9);
    // And what is not documented is not routed.
    let rsp = gw.admin(Method::GET, "/v1/subjects").send().await;
    assert_problem(&rsp, 404, "not_found", None);
    let rsp = gw.admin(Method::PUT, "/v1/consent/events").send().await;
    assert_problem(&rsp, 405, "method_not_allowed", None);
}

/// An event dated ahead of the gateway's clock would stay the latest one and hide every later
/// withdrawal: it is refused, naming the field, through events and imports alike; a
/// withdrawal then applies to the next request.
#[tokio::test]
async fn an_event_dated_in_the_future_is_refused() {
    use consentry::consent::event::{format_rfc3339_ms, now_ms};
    let up = Upstream::replying(Reply::json(&contact("1"))).await;
    let gw = gateway(&up).admin().start().await;
    let ahead = format_rfc3339_ms(now_ms() + 2 * 3_600_000);
    let rsp = gw
        .admin(Method::POST, "/v1/consent/events")
        .json(&json!({"subject": "1", "purpose": "marketing", "kind": "granted", "at": ahead}))
        .send()
        .await;
    assert_problem(&rsp, 400, "invalid_field", Some("at"));
    let line = json!({"subject": "1", "purpose": "marketing", "kind": "granted",
        "recorded_at": ahead});
    let rsp = gw
        .admin(Method::POST, "/v1/consent/import")
        .header("content-type", "application/x-ndjson")
        .body(format!("{line}\n"))
        .send()
        .await;
    rsp.assert_refused(400, "invalid_import");
    assert_eq!(rsp.json()["field"], "recorded_at");
    assert!(history(&gw, "1").await.is_empty());
    // A few seconds of skew are fine; the withdrawal after it wins.
    let soon = format_rfc3339_ms(now_ms() + 2_000);
    record(
        &gw,
        json!({"subject": "1", "purpose": "marketing", "kind": "granted", "at": soon}),
    )
    .await;
    let get = || gw.get("/crm/v3/objects/contacts/1").purpose("marketing");
    assert_eq!(get().send().await.ok_json()["id"], "1");
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    record(
        &gw,
        json!({"subject": "1", "purpose": "marketing", "kind": "withdrawn"}),
    )
    .await;
    get().send().await.assert_refused(403, "no_lawful_basis");
}

/// Health probes need no token, so a flood of them must not take the store connections that
/// consent lookups need: one store check answers all the probes of a second. On PostgreSQL
/// (where the flood starved the pool before), and on SQLite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_health_probes_does_not_starve_consent_lookups() {
    if let Some(schema) = crate::support::postgres::PgSchema::create("health_flood").await {
        health_flood(Some(&schema.url())).await;
    }
    health_flood(None).await;
}

async fn health_flood(postgres: Option<&str>) {
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let up = Upstream::replying(Reply::json(&contact("1"))).await;
    let mut builder = gateway(&up).admin();
    if let Some(url) = postgres {
        builder = builder.postgres(url);
    }
    let gw = builder.start().await;
    gw.grant("1", "marketing").await;
    let addr = gw.admin_addr.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http();
        for _ in 0..200 {
            let (client, stop) = (client.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let uri: http::Uri = format!("http://{addr}/healthz").parse().unwrap();
                while !stop.load(Ordering::Relaxed) {
                    let _ = client.get(uri.clone()).await;
                }
            }));
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // A cold lookup (the grant above emptied the subject's cache entry) during the flood.
    let rsp = gw
        .get("/crm/v3/objects/contacts/1")
        .purpose("marketing")
        .send()
        .await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.abort();
    }
    assert_eq!(
        rsp.status,
        200,
        "a granted subject was refused: {}",
        rsp.text()
    );
}
