//! Field actions per purpose, minimisation by default, special categories; over HTTP/1.1 and
//! HTTP/2.

use serde_json::json;

use crate::both;
use crate::support::{PSEUDONYM_KEY, Proto, Reply, Upstream, contact, contacts, gateway, hmac_hex};

both!(marketing_keeps_names_and_email_and_masks_the_phone);
async fn marketing_keeps_names_and_email_and_masks_the_phone(proto: Proto) {
    let up = Upstream::replying(Reply::json(&contact("1"))).await;
    let gw = gateway(&up).start().await;
    gw.grant("1", "marketing").await;
    let rsp = gw
        .get("/crm/v3/objects/contacts/1")
        .purpose("marketing")
        .over(proto)
        .send()
        .await;
    assert_eq!(
        rsp.ok_json(),
        json!({
            "id": "1",
            "properties": {
                "firstname": "Ada",
                "lastname": "Lovelace",
                "email": "ada1@example.com",
                "phone": "*******0100"
            },
            "createdAt": "2024-03-05T10:00:00Z"
        })
    );
}

both!(support_keeps_the_subtree_and_the_released_special_category_only);
async fn support_keeps_the_subtree_and_the_released_special_category_only(proto: Proto) {
    let up = Upstream::replying(Reply::json(&contact("1"))).await;
    let gw = gateway(&up).start().await;
    // Contract basis: no consent recorded, none needed.
    let rsp = gw
        .get("/crm/v3/objects/contacts/1")
        .purpose("support")
        .over(proto)
        .send()
        .await;
    let mut want = contact("1");
    want["properties"]
        .as_object_mut()
        .unwrap()
        .remove("ethnicity");
    want.as_object_mut().unwrap().remove("archived");
    assert_eq!(rsp.ok_json(), want);
    assert!(rsp.text().contains("asthma"), "released with special: true");
    assert!(!rsp.text().contains("british"), "never released");
}

both!(a_kept_subtree_does_not_release_special_categories);
async fn a_kept_subtree_does_not_release_special_categories(proto: Proto) {
    let up = Upstream::replying(Reply::json(&contact("1"))).await;
    let gw = gateway(&up).start().await;
    let rsp = gw
        .get("/crm/v3/objects/contacts/1")
        .purpose("audit")
        .over(proto)
        .send()
        .await;
    let mut props = contact("1")["properties"].clone();
    props.as_object_mut().unwrap().remove("health_notes");
    props.as_object_mut().unwrap().remove("ethnicity");
    assert_eq!(rsp.ok_json(), json!({ "id": "1", "properties": props }));
}

both!(analytics_hashes_the_id_and_generalises_dates);
async fn analytics_hashes_the_id_and_generalises_dates(proto: Proto) {
    let up = Upstream::replying(Reply::json(&contact("1"))).await;
    let gw = gateway(&up).start().await;
    // Legitimate interest: lawful without any event.
    let rsp = gw
        .get("/crm/v3/objects/contacts/1")
        .purpose("analytics")
        .over(proto)
        .send()
        .await;
    assert_eq!(
        rsp.ok_json(),
        json!({
            "id": hmac_hex(PSEUDONYM_KEY, "1"),
            "properties": { "city": "London" },
            "createdAt": "2024-03"
        })
    );
}

both!(every_field_action);
async fn every_field_action(proto: Proto) {
    let up = Upstream::replying(Reply::json(&contact("7"))).await;
    let gw = gateway(&up).start().await;
    let rsp = gw
        .get("/crm/v3/objects/contacts/7")
        .purpose("showcase")
        .over(proto)
        .send()
        .await;
    assert_eq!(
        rsp.ok_json(),
        json!({
            "id": "7",                                                    // keep
            "properties": {
                "firstname": "Ada",                                       // keep
                                                                          // lastname: drop
                "email": hmac_hex(PSEUDONYM_KEY, "ada7@example.com"),     // hash
                "phone": "+1#######00",                                   // mask first/last/with
                "city": "Lon",                                            // generalise prefix
                "date_of_birth": "1815",                                  // generalise year
                "points": "1000-1999",                                    // generalise width
                "lifecyclestage": { "redacted": true }                    // constant
            },
            "createdAt": "2024-03",                                       // generalise month
            "updatedAt": null                                             // null
        })
    );
    assert!(!rsp.text().contains("ada7@example.com"));
}

both!(a_list_keeps_the_records_and_the_declared_envelope_only);
async fn a_list_keeps_the_records_and_the_declared_envelope_only(proto: Proto) {
    let up = Upstream::replying(Reply::json(&contacts(&["1", "2"]))).await;
    let gw = gateway(&up).start().await;
    let rsp = gw
        .get("/crm/v3/objects/contacts")
        .purpose("analytics")
        .over(proto)
        .send()
        .await;
    let record = |id: &str| {
        json!({
            "id": hmac_hex(PSEUDONYM_KEY, id),
            "properties": { "city": "London" },
            "createdAt": "2024-03"
        })
    };
    assert_eq!(
        rsp.ok_json(),
        json!({
            "results": [record("1"), record("2")],
            "paging": { "next": { "after": "abc" } }
        })
    );
    // Unlisted envelope members (`total`, `debug`) and fields (`internal`, `archived`) are gone.
    for absent in ["total", "debug", "internal", "archived", "ada1@example.com"] {
        assert!(!rsp.text().contains(absent), "{absent} in {}", rsp.text());
    }
}

#[tokio::test]
async fn the_hash_is_stable_keyed_and_never_the_clear_value() {
    let up = Upstream::replying(Reply::json(&contact("7"))).await;
    let gw = gateway(&up).start().await;
    let other = gateway(&up).pseudonym_key(b"another-key").start().await;
    let email = |gw: &crate::support::Gw| {
        let call = gw.get("/crm/v3/objects/contacts/7").purpose("showcase");
        async move { call.send().await.ok_json()["properties"]["email"].clone() }
    };
    let first = email(&gw).await;
    let second = email(&gw).await;
    let keyed_otherwise = email(&other).await;
    assert_eq!(first, second, "stable");
    assert_ne!(first, keyed_otherwise, "keyed");
    let text = first.as_str().unwrap();
    assert_eq!(text.len(), 64);
    assert!(text.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_ne!(
        text,
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest("ada7@example.com"))
    );
    assert!(!text.contains("ada"));
}
