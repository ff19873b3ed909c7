//! The admin API's pieces without a listener: the OpenAPI document against the checked-in
//! file and against the route table, the wire form of events, problems.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use axum::response::IntoResponse;

use super::model::{EventInput, EventView, Kind};
use super::openapi::document;
use super::problem::Problem;
use super::routes::{Access, table};
use crate::consent::event::{ConsentEvent, EventKind};

fn checked_in_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json")
}

#[test]
fn openapi_document_is_checked_in() {
    let generated = document();
    let path = checked_in_path();
    if std::env::var_os("CONSENTRY_UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "docs/openapi.json differs from the document the code generates; regenerate it with\n\
         \n    CONSENTRY_UPDATE_OPENAPI=1 cargo test --lib openapi\n\nand commit the result"
    );
}

/// (METHOD, path) of every operation in the document.
fn documented() -> BTreeSet<(String, String)> {
    let doc: serde_json::Value = serde_json::from_str(&document()).unwrap();
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if [
                "get", "put", "post", "delete", "options", "head", "patch", "trace",
            ]
            .contains(&method.as_str())
            {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

#[test]
fn openapi_paths_are_the_routes_the_router_serves() {
    let table = table();
    let served: BTreeSet<(String, String)> = table
        .iter()
        .flat_map(|r| r.methods.iter().map(|m| (m.to_string(), r.path.clone())))
        .collect();
    assert_eq!(
        served,
        documented(),
        "the route table (admin/routes.rs `table`) and the OpenAPI `paths(...)` list \
         (admin/openapi.rs) name different operations"
    );
    for r in &table {
        assert_eq!(r.methods.len(), 1, "{}: one method per operation", r.path);
    }
}

#[test]
fn openapi_security_matches_access() {
    let doc: serde_json::Value = serde_json::from_str(&document()).unwrap();
    for r in table() {
        for m in &r.methods {
            let op = &doc["paths"][&r.path][m.as_str().to_lowercase()];
            let secured = op["security"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s.get("admin_token").is_some()));
            assert_eq!(
                secured,
                r.access == Access::Token,
                "{m} {}: the document and the router disagree on whether a token is needed",
                r.path
            );
        }
    }
}

#[test]
fn an_event_view_is_a_json_lines_line() {
    let event = ConsentEvent {
        subject: "a/b \"c\"".into(),
        purpose: "ads".into(),
        kind: EventKind::OptedOut,
        at_ms: 1_700_000_000_123,
        expires_at_ms: None,
        source: Some("gpc".into()),
        proof: None,
        actor: Some("admin:sync".into()),
        recorded_at_ms: Some(1_700_000_000_200),
    };
    let view = serde_json::to_value(EventView::from(&event)).unwrap();
    let line: serde_json::Value = serde_json::from_str(&event.to_json_line()).unwrap();
    assert_eq!(view, line);
    let granted = ConsentEvent {
        kind: EventKind::Granted,
        expires_at_ms: Some(1_800_000_000_000),
        proof: Some("p".into()),
        actor: None,
        ..event
    };
    let view = serde_json::to_value(EventView::from(&granted)).unwrap();
    let line: serde_json::Value = serde_json::from_str(&granted.to_json_line()).unwrap();
    assert_eq!(view, line);
}

fn input(kind: Kind, purpose: &str) -> EventInput {
    EventInput {
        subject: "42".into(),
        purpose: purpose.into(),
        kind,
        at: None,
        expires_at: None,
        source: None,
        proof: None,
    }
}

#[test]
fn bad_events_name_the_field() {
    let field = |e: EventInput| e.into_event(1_000, "events[3].").unwrap_err();
    let cases = [
        (input(Kind::Granted, "*"), "events[3].purpose"),
        (
            EventInput {
                expires_at: Some("2030-01-01T00:00:00Z".into()),
                ..input(Kind::Withdrawn, "ads")
            },
            "events[3].expires_at",
        ),
        (
            EventInput {
                at: Some("yesterday".into()),
                ..input(Kind::Granted, "ads")
            },
            "events[3].at",
        ),
        (
            EventInput {
                at: Some("2030-01-01T00:00:00Z".into()),
                expires_at: Some("2029-01-01T00:00:00Z".into()),
                ..input(Kind::Granted, "ads")
            },
            "events[3].expires_at",
        ),
        (
            EventInput {
                subject: String::new(),
                ..input(Kind::Granted, "ads")
            },
            "events[3].subject",
        ),
    ];
    for (event, want) in cases {
        let problem = field(event);
        assert_eq!(problem.field(), Some(want), "{problem}");
        assert_eq!(problem.reason(), "invalid_field");
    }
    let ok = input(Kind::OptedOut, "*").into_event(1_000, "").unwrap();
    assert_eq!(ok.at_ms, 1_000);
    assert_eq!(ok.kind, EventKind::OptedOut);
}

#[tokio::test]
async fn problems_are_rfc9457_with_their_headers() {
    use http_body_util::BodyExt;
    let body = |rsp: axum::response::Response| async {
        let bytes = rsp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()
    };
    let rsp = Problem::Unauthorized.into_response();
    assert_eq!(rsp.status(), 401);
    assert_eq!(rsp.headers()["content-type"], "application/problem+json");
    assert!(
        rsp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    let json = body(rsp).await;
    assert_eq!(json["reason"], "unauthorized");
    assert_eq!(json["status"], 401);
    assert_eq!(json["type"], "https://consentry.dev/problems/unauthorized");
    assert!(json.get("field").is_none());

    let rsp = Problem::RateLimited {
        retry_after: Duration::from_millis(1200),
    }
    .into_response();
    assert_eq!(rsp.status(), 429);
    assert_eq!(rsp.headers()["retry-after"], "2");

    let json = body(
        Problem::InvalidImport {
            line: 7,
            field: Some("kind".into()),
            detail: "unknown event kind `maybe`".into(),
        }
        .into_response(),
    )
    .await;
    assert_eq!(json["line"], 7);
    assert_eq!(json["field"], "kind");
    assert_eq!(json["reason"], "invalid_import");
    assert!(json["detail"].as_str().unwrap().contains("line 7"));
}
