//! Request-target normalisation: the one path that is matched is the one that goes upstream;
//! what could be read two ways is refused.

use crate::both;
use crate::support::{
    APP_KEY, Proto, Reply, Upstream, contact, contacts, gateway, raw_exchange, raw_status,
};

fn upstream() -> impl Fn(&crate::support::Seen) -> Reply + Send + Sync + 'static {
    |seen| {
        if seen.target.ends_with("/contacts") {
            Reply::json(&contacts(&["1"]))
        } else {
            Reply::json(&contact("1"))
        }
    }
}

both!(equivalent_spellings_match_and_go_upstream_normalised);
async fn equivalent_spellings_match_and_go_upstream_normalised(proto: Proto) {
    let up = Upstream::serve(upstream()).await;
    let gw = gateway(&up).start().await;
    let cases = [
        ("/crm/v3/objects/%63ontacts", "/crm/v3/objects/contacts"),
        ("/%63rm/v3/objects/contact%73", "/crm/v3/objects/contacts"),
        ("/crm//v3///objects/contacts", "/crm/v3/objects/contacts"),
        ("/crm/v3/./objects/contacts", "/crm/v3/objects/contacts"),
        ("/crm/v3/objects/x/../contacts", "/crm/v3/objects/contacts"),
        (
            "/crm/v3/objects/deals/%2e%2e/contacts",
            "/crm/v3/objects/contacts",
        ),
        ("/crm/v3/objects/contacts/%31", "/crm/v3/objects/contacts/1"),
        (
            "/crm/v3/objects/contacts?limit=2&after=a%2Fb",
            "/crm/v3/objects/contacts?limit=2&after=a%2Fb",
        ),
    ];
    for (i, (sent, forwarded)) in cases.into_iter().enumerate() {
        let rsp = gw.get(sent).purpose("support").over(proto).send().await;
        assert_eq!(rsp.status, 200, "{sent}: {}", rsp.text());
        up.wait_for(i + 1).await;
        assert_eq!(up.last().target, forwarded, "{sent}");
    }
}

both!(ambiguous_paths_are_refused);
async fn ambiguous_paths_are_refused(proto: Proto) {
    let up = Upstream::serve(upstream()).await;
    let gw = gateway(&up).start().await;
    for path in [
        "/crm/v3/objects/contacts%2F1",
        "/crm/v3/objects/contacts%2f1",
        "/crm/v3/objects%5Ccontacts",
        "/crm/v3/objects/contacts/1%00",
        "/crm/v3/objects/contacts;jsessionid=1",
        "/crm/v3/objects/contacts/1;x=y",
        "/crm/v3/objects/contacts%3Bx",
        "/crm/v3/objects/%c0%ae%c0%ae/contacts",
        "/crm/v3/objects/contacts/%ff",
        "/crm/v3/objects/contacts/%zz",
        "/crm/v3/objects/contacts/%4",
    ] {
        let rsp = gw.get(path).purpose("support").over(proto).send().await;
        rsp.assert_refused(400, "bad_path");
        // Refused before the caller is even identified: without a key, still bad_path.
        gw.get(path)
            .over(proto)
            .send()
            .await
            .assert_refused(400, "bad_path");
    }
    assert!(up.seen().is_empty(), "nothing went upstream");
}

both!(variants_of_a_protected_path_do_not_match_it);
async fn variants_of_a_protected_path_do_not_match_it(proto: Proto) {
    let up = Upstream::serve(upstream()).await;
    let gw = gateway(&up).start().await;
    for path in [
        "/crm/v3/objects/contacts/",
        "/crm/v3/objects/contacts/1/",
        "/crm/v3/objects/Contacts",
        "/CRM/v3/objects/contacts",
        "/crm/v3/objects/contacts/1/.",
        "/crm/v3/objects/contacts.json",
    ] {
        let rsp = gw.get(path).purpose("support").over(proto).send().await;
        rsp.assert_refused(403, "route_not_covered");
    }
    assert!(up.seen().is_empty(), "nothing went upstream");
}

/// A raw HTTP/1.1 GET with the test caller's credentials.
fn raw_get(target: &[u8], host: &str) -> Vec<u8> {
    let mut req = b"GET ".to_vec();
    req.extend_from_slice(target);
    req.extend_from_slice(
        format!(
            " HTTP/1.1\r\nhost: {host}\r\nx-api-key: {APP_KEY}\r\nx-purpose: support\r\nconnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    req
}

#[tokio::test]
async fn raw_backslash_and_nul_are_refused() {
    let up = Upstream::serve(upstream()).await;
    let gw = gateway(&up).start().await;
    let host = gw.addr.to_string();
    for target in [
        &b"/crm/v3/objects\\contacts"[..],
        b"/crm\\v3/objects/contacts",
        b"/crm/v3/objects/contacts/1\0",
    ] {
        let rsp = raw_exchange(gw.addr, &raw_get(target, &host)).await;
        assert_eq!(raw_status(&rsp), 400, "{}", String::from_utf8_lossy(&rsp));
        assert!(!String::from_utf8_lossy(&rsp).contains("Lovelace"));
    }
    assert!(up.seen().is_empty(), "nothing went upstream");
}

#[tokio::test]
async fn an_absolute_target_naming_another_host_is_refused() {
    let up = Upstream::serve(upstream()).await;
    let gw = gateway(&up).start().await;
    let host = gw.addr.to_string();
    let rsp = raw_exchange(
        gw.addr,
        &raw_get(
            b"http://crm.elsewhere.example/crm/v3/objects/contacts",
            &host,
        ),
    )
    .await;
    let text = String::from_utf8_lossy(&rsp);
    assert_eq!(raw_status(&rsp), 400, "{text}");
    assert!(
        text.contains("application/problem+json") && text.contains("\"bad_request\""),
        "{text}"
    );
    assert!(up.seen().is_empty(), "nothing went upstream");
    // The same target naming the gateway itself is served.
    let target = format!("http://{host}/crm/v3/objects/contacts");
    let rsp = raw_exchange(gw.addr, &raw_get(target.as_bytes(), &host)).await;
    assert_eq!(raw_status(&rsp), 200, "{}", String::from_utf8_lossy(&rsp));
    assert_eq!(up.last().target, "/crm/v3/objects/contacts");
}
