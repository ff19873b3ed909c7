//! Response shapes of other CRMs than HubSpot: OData (Dynamics) keys in parentheses and `value`
//! lists with `@odata` annotations, Salesforce `records` with `attributes`.

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::both;
use crate::support::{APP_KEY, Proto, Reply, Upstream, gateway};

fn policy() -> String {
    let app = hex::encode(Sha256::digest(APP_KEY));
    format!(
        r#"
purposes:
  marketing: {{ basis: consent }}
callers:
  app:
    api_key: {{ sha256: {app} }}
    purposes: [marketing]
objects:
  dynamics_contact:
    subject: $.contactid
    fields:
      $.contactid: user.unique_id
      $.fullname: user.name
      $.emailaddress1: user.contact.email
      $.description: user.health_and_medical
    rules:
      marketing:
        - {{ paths: [$.contactid, $.fullname, $.emailaddress1], action: keep }}
  salesforce_contact:
    subject: $.Id
    fields:
      $.Id: user.unique_id
      $.Name: user.name
      $.Email: user.contact.email
      # A structure is declared member by member: `keep` on a declared field passes a
      # value, never an object no policy describes.
      $.attributes.type: system.operations
      $.attributes.url: system.operations
    rules:
      marketing:
        - {{ paths: [$.Id, $.Name, $.attributes.type, $.attributes.url], action: keep }}
routes:
  - name: dynamics-contacts
    method: GET
    path: /api/data/v9.2/contacts
    object: dynamics_contact
    records: $.value[*]
    envelope: ["$['@odata.context']", "$['@odata.nextLink']"]
  - name: dynamics-contact
    method: GET
    path: /api/data/v9.2/contacts({{id}})
    object: dynamics_contact
    records: $
    subject_param: id
  - name: salesforce-query
    method: GET
    path: /services/data/v59.0/query
    object: salesforce_contact
    records: $.records[*]
    envelope: [$.totalSize, $.done, $.nextRecordsUrl]
"#
    )
}

fn dynamics(id: &str) -> serde_json::Value {
    json!({
        "@odata.etag": "W/\"1234\"",
        "contactid": id,
        "fullname": format!("Ada {id}"),
        "emailaddress1": format!("ada{id}@example.com"),
        "description": "asthma",
        "telephone1": "+1 555 0100"
    })
}

both!(odata_keys_in_parentheses_match_and_name_the_subject);
async fn odata_keys_in_parentheses_match_and_name_the_subject(proto: Proto) {
    let id = "00000000-0000-0000-0000-000000000001";
    let up = Upstream::replying(Reply::json(&dynamics(id))).await;
    let gw = gateway(&up).with_policy(policy()).start().await;
    gw.grant(id, "marketing").await;
    let path = format!("/api/data/v9.2/contacts({id})");
    let rsp = gw.get(&path).purpose("marketing").over(proto).send().await;
    assert_eq!(
        rsp.ok_json(),
        json!({"contactid": id, "fullname": "Ada 00000000-0000-0000-0000-000000000001",
               "emailaddress1": "ada00000000-0000-0000-0000-000000000001@example.com"})
    );
    assert_eq!(up.last().target, path);
    // A client that writes the GUID in capitals (DynamicsWebApi passes keys as it is given
    // them) is answered in lower case: the same record.
    let upper = "00000000-0000-0000-0000-00000000000A";
    let up = Upstream::replying(Reply::json(&dynamics(&upper.to_ascii_lowercase()))).await;
    let gw = gateway(&up).with_policy(policy()).start().await;
    gw.grant(&upper.to_ascii_lowercase(), "marketing").await;
    let rsp = gw
        .get(&format!("/api/data/v9.2/contacts({upper})"))
        .purpose("marketing")
        .over(proto)
        .send()
        .await;
    assert_eq!(rsp.ok_json()["contactid"], upper.to_ascii_lowercase());
    // Another key in the path than the record's own: refused, never the record.
    let other = "/api/data/v9.2/contacts(00000000-0000-0000-0000-000000000002)";
    let rsp = gw.get(other).purpose("marketing").over(proto).send().await;
    rsp.assert_refused(502, "subject_mismatch");
    assert!(!rsp.text().contains("asthma"));
    // An empty key or a missing parenthesis matches no route.
    for path in ["/api/data/v9.2/contacts()", "/api/data/v9.2/contacts(x"] {
        let rsp = gw.get(path).purpose("marketing").over(proto).send().await;
        rsp.assert_refused(403, "route_not_covered");
    }
}

both!(odata_lists_keep_only_the_declared_annotations);
async fn odata_lists_keep_only_the_declared_annotations(proto: Proto) {
    let body = json!({
        "@odata.context": "https://org.crm.dynamics.com/api/data/v9.2/$metadata#contacts",
        "@odata.count": 2,
        "value": [dynamics("a1"), dynamics("a2")],
        "@odata.nextLink": "https://org.crm.dynamics.com/api/data/v9.2/contacts?$skiptoken=x"
    });
    let up = Upstream::replying(Reply::json(&body)).await;
    let gw = gateway(&up).with_policy(policy()).start().await;
    gw.grant("a2", "marketing").await;
    let rsp = gw
        .get("/api/data/v9.2/contacts")
        .purpose("marketing")
        .over(proto)
        .send()
        .await;
    let got = rsp.ok_json();
    assert_eq!(
        got,
        json!({
            "@odata.context": "https://org.crm.dynamics.com/api/data/v9.2/$metadata#contacts",
            "value": [{"contactid": "a2", "fullname": "Ada a2", "emailaddress1": "adaa2@example.com"}],
            "@odata.nextLink": "https://org.crm.dynamics.com/api/data/v9.2/contacts?$skiptoken=x"
        })
    );
    assert!(!rsp.text().contains("asthma"));
}

both!(salesforce_records_keep_their_attributes);
async fn salesforce_records_keep_their_attributes(proto: Proto) {
    let record = |id: &str| {
        json!({
            "attributes": {"type": "Contact", "url": format!("/services/data/v59.0/sobjects/Contact/{id}")},
            "Id": id,
            "Name": "Ada Lovelace",
            "Email": "ada@example.com",
            "Phone": "+1 555 0100"
        })
    };
    let body = json!({
        "totalSize": 2,
        "done": true,
        "records": [record("003A"), record("003B")]
    });
    let up = Upstream::replying(Reply::json(&body)).await;
    let gw = gateway(&up).with_policy(policy()).start().await;
    gw.grant("003A", "marketing").await;
    let rsp = gw
        .get("/services/data/v59.0/query?q=SELECT+Id,Name+FROM+Contact")
        .purpose("marketing")
        .over(proto)
        .send()
        .await;
    assert_eq!(
        rsp.ok_json(),
        json!({
            "totalSize": 2,
            "done": true,
            "records": [{
                "attributes": {"type": "Contact", "url": "/services/data/v59.0/sobjects/Contact/003A"},
                "Id": "003A",
                "Name": "Ada Lovelace"
            }]
        })
    );
    assert_eq!(
        up.last().target,
        "/services/data/v59.0/query?q=SELECT+Id,Name+FROM+Contact"
    );
}
