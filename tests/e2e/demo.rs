//! The README's first command: `consentry demo` serves the sample CRM behind the gateway, with
//! seeded consent and the admin API, and tells the story it prints.

use std::net::SocketAddr;

use bytes::Bytes;
use consentry::cli::demo::{ADMIN_TOKEN, DemoArgs, MARKETING_KEY, SUPPORT_KEY, demo};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

async fn call(method: &str, url: String, headers: &[(&str, &str)], body: &str) -> (u16, Value) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let rsp = client
        .request(req.body(Full::new(Bytes::from(body.to_owned()))).unwrap())
        .await
        .unwrap();
    let status = rsp.status().as_u16();
    let bytes = rsp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn ids(body: &Value) -> Vec<&str> {
    body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn the_demo_tells_its_story() {
    let dir = tempfile::tempdir().unwrap();
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let args = DemoArgs {
        listen: any,
        crm: any,
        admin_listen: any,
        data_dir: dir.path().join("demo"),
    };
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(demo(
        args,
        async move {
            let _ = stopped.await;
        },
        Some(ready_tx),
    ));
    let addrs = ready.await.unwrap();
    let gw = |path: &str| format!("http://{}{path}", addrs.gateway);
    let marketing = [("x-api-key", MARKETING_KEY), ("x-purpose", "marketing")];

    // 1. Marketing: only the consenting contacts, the phone masked, no special categories.
    let (status, list) = call("GET", gw("/crm/v3/objects/contacts"), &marketing, "").await;
    assert_eq!(status, 200);
    assert_eq!(ids(&list), ["101", "102", "105"]);
    let text = list.to_string();
    assert!(
        !text.contains("asthma") && !text.contains("british"),
        "{text}"
    );
    assert!(
        list["results"][0]["properties"]["phone"]
            .as_str()
            .unwrap()
            .starts_with('*')
    );
    // 2. A contact who withdrew: refused.
    let (status, problem) = call("GET", gw("/crm/v3/objects/contacts/103"), &marketing, "").await;
    assert_eq!(status, 403);
    assert_eq!(problem["reason"], "no_lawful_basis");
    // 3. A purpose the caller may not declare.
    let (status, _) = call(
        "GET",
        gw("/crm/v3/objects/contacts"),
        &[("x-api-key", MARKETING_KEY), ("x-purpose", "support")],
        "",
    )
    .await;
    assert_eq!(status, 403);
    // 5. Analytics: 104 objected and is left out.
    let (status, list) = call(
        "GET",
        gw("/crm/v3/objects/contacts"),
        &[("x-api-key", SUPPORT_KEY), ("x-purpose", "analytics")],
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert!(!ids(&list).contains(&"104"));

    // Consent recorded through the admin API applies to the next request.
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let admin = [
        ("authorization", bearer.as_str()),
        ("content-type", "application/json"),
    ];
    let (status, _) = call(
        "POST",
        format!("http://{}/v1/consent/events", addrs.admin),
        &admin,
        r#"{"subject": "103", "purpose": "marketing", "kind": "granted", "source": "web_form"}"#,
    )
    .await;
    assert_eq!(status, 201);
    let (status, record) = call("GET", gw("/crm/v3/objects/contacts/103"), &marketing, "").await;
    assert_eq!(status, 200);
    assert_eq!(record["id"], "103");
    let (status, history) = call(
        "GET",
        format!("http://{}/v1/subjects/103/history", addrs.admin),
        &admin,
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(history["events"].as_array().unwrap().len(), 3);

    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
}
