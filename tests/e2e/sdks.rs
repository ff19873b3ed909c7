//! Requests as the CRMs' client libraries send them, answered as the CRMs answer them: the
//! method, path, query and headers of simple-salesforce, jsforce, the HubSpot clients and
//! DynamicsWebApi, and what each needs back to parse the answer or act on an error.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::both;
use crate::support::{APP_KEY, Proto, Reply, Upstream, contact, gateway};

fn salesforce_policy() -> String {
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
  salesforce_contact:
    subject: $.Id
    fields:
      $.Id: user.unique_id
      $.Name: user.name
      $.Email: user.contact.email
      $.attributes.type: system.operations
      $.attributes.url: system.operations
    rules:
      marketing:
        - {{ paths: [$.Id, $.Name, $.attributes.type, $.attributes.url], action: keep }}
routes:
  # simple-salesforce: `query/?q=` and `queryAll/?q=`, with the trailing slash.
  - name: salesforce-query-slash
    method: GET
    path: /services/data/{{version}}/query/
    object: salesforce_contact
    records: $.records[*]
    envelope: [$.totalSize, $.done, $.nextRecordsUrl]
  # jsforce: `query?q=`, without it.
  - name: salesforce-query
    method: GET
    path: /services/data/{{version}}/query
    object: salesforce_contact
    records: $.records[*]
    envelope: [$.totalSize, $.done, $.nextRecordsUrl]
  # Both: the `nextRecordsUrl` of a query with more records.
  - name: salesforce-query-more
    method: GET
    path: /services/data/{{version}}/query/{{locator}}
    object: salesforce_contact
    records: $.records[*]
    envelope: [$.totalSize, $.done, $.nextRecordsUrl]
  - name: salesforce-contact
    method: GET
    path: /services/data/{{version}}/sobjects/Contact/{{id}}
    object: salesforce_contact
    records: $
    subject_param: id
"#
    )
}

fn salesforce_record(id: &str) -> Value {
    json!({
        "attributes": {"type": "Contact", "url": format!("/services/data/v59.0/sobjects/Contact/{id}")},
        "Id": id,
        "Name": "Ada Lovelace",
        "Email": "ada@example.com",
        "Phone": "+1 555 0100"
    })
}

fn salesforce_page(ids: &[&str], next: Option<&str>) -> Value {
    let mut page = json!({
        "totalSize": 3,
        "done": next.is_none(),
        "records": ids.iter().map(|id| salesforce_record(id)).collect::<Vec<_>>()
    });
    if let Some(next) = next {
        page["nextRecordsUrl"] = json!(next);
    }
    page
}

/// Salesforce's answer: pretty-printed when asked (`X-PrettyPrint: 1`), typed with a charset,
/// with its API usage in `Sforce-Limit-Info`.
fn salesforce_reply(body: &Value) -> Reply {
    Reply::bytes(serde_json::to_string_pretty(body).unwrap())
        .header("content-type", "application/json;charset=UTF-8")
        .header("sforce-limit-info", "api-usage=18/15000")
}

/// A policy whose caller `app` may use the contract purpose `support` on Dynamics contacts
/// (`/api/data/v9.2/contacts`, records at `$.value[*]`), keeping their id and name; `route`
/// holds the route's other lines (methods, envelope), indented as the route's.
fn dynamics_policy(route: &str) -> String {
    let app = hex::encode(Sha256::digest(APP_KEY));
    format!(
        r#"
purposes:
  support: {{ basis: contract }}
callers:
  app:
    api_key: {{ sha256: {app} }}
    purposes: [support]
objects:
  dynamics_contact:
    subject: $.contactid
    fields:
      $.contactid: user.unique_id
      $.fullname: user.name
    rules:
      support:
        - {{ paths: [$.contactid, $.fullname], action: keep }}
routes:
  - name: dynamics-contacts
    path: /api/data/v9.2/contacts
    object: dynamics_contact
    records: $.value[*]
{route}
"#
    )
}

/// The headers simple-salesforce sends with every REST call (`Salesforce.headers`, over
/// python-requests' defaults), plus the gateway's own.
fn simple_salesforce(call: crate::support::Call) -> crate::support::Call {
    call.purpose("marketing")
        .header("content-type", "application/json")
        .header("authorization", "Bearer 00D000000000001!AQ0AQH0dMHZfz")
        .header("x-prettyprint", "1")
        .header("user-agent", "python-requests/2.32.3")
        .header("accept-encoding", "gzip, deflate")
        .header("accept", "*/*")
}

both!(simple_salesforce_query_all_pages_through_the_gateway);
async fn simple_salesforce_query_all_pages_through_the_gateway(proto: Proto) {
    let more = "/services/data/v59.0/query/01gD0000002HU6KIAW-2000";
    let up = Upstream::serve(move |seen| {
        if seen.target == more {
            salesforce_reply(&salesforce_page(&["003C"], None))
        } else {
            salesforce_reply(&salesforce_page(&["003A", "003B"], Some(more)))
        }
    })
    .await;
    let gw = gateway(&up).with_policy(salesforce_policy()).start().await;
    gw.grant("003A", "marketing").await;
    gw.grant("003C", "marketing").await;

    // `sf.query_all("SELECT Id, Name FROM Contact")`: `query/` with the SOQL in `q`, as
    // python-requests encodes it...
    let first = "/services/data/v59.0/query/?q=SELECT+Id%2C+Name+FROM+Contact";
    let rsp = simple_salesforce(gw.get(first)).over(proto).send().await;
    let page = rsp.ok_json();
    assert_eq!(
        page,
        json!({
            "totalSize": 3,
            "done": false,
            "records": [{
                "attributes": {"type": "Contact", "url": "/services/data/v59.0/sobjects/Contact/003A"},
                "Id": "003A",
                "Name": "Ada Lovelace"
            }],
            "nextRecordsUrl": more
        })
    );
    let seen = up.last();
    assert_eq!(
        seen.target, first,
        "the trailing slash goes upstream as it came"
    );
    assert_eq!(
        seen.header("authorization"),
        Some("Bearer 00D000000000001!AQ0AQH0dMHZfz")
    );
    assert_eq!(seen.header("x-prettyprint"), Some("1"));

    // ...then `query_more(nextRecordsUrl, identifier_is_url=True)` on the same host, until
    // `done`.
    let next = page["nextRecordsUrl"].as_str().unwrap();
    let rsp = simple_salesforce(gw.get(next)).over(proto).send().await;
    let page = rsp.ok_json();
    assert_eq!(page["done"], true);
    assert_eq!(page["records"][0]["Id"], "003C");
    assert!(!rsp.text().contains("ada@example.com"));
    assert_eq!(up.last().target, more);

    // jsforce asks without the slash: its own route.
    let jsforce = "/services/data/v59.0/query?q=SELECT%20Id%2C%20Name%20FROM%20Contact";
    let rsp = gw
        .get(jsforce)
        .purpose("marketing")
        .over(proto)
        .send()
        .await;
    assert_eq!(rsp.ok_json()["records"][0]["Id"], "003A");
}

both!(an_upstream_refusal_to_retry_later_keeps_its_retry_after);
async fn an_upstream_refusal_to_retry_later_keeps_its_retry_after(proto: Proto) {
    // Dataverse's service protection limits: a 429 whose `Retry-After` tells the client how
    // long to wait; its clients (and the CRM's own guidance) retry after exactly that long.
    for (status, body) in [
        (
            429,
            json!({"error": {"code": "0x80072322", "message":
                "Number of requests exceeded the limit of 6000 over time window of 300 seconds."}}),
        ),
        (
            503,
            json!({"error": {"code": "0x80040216", "message": "contact ada@example.com is locked"}}),
        ),
    ] {
        let reply = Reply::json(&body)
            .status(status)
            .header("retry-after", "7")
            .header("x-request-id", "7f3c9a1e-0d1b-4c5e-9a55-0c9f3c1d2e10")
            .header("x-crm-debug", "ada@example.com");
        let up = Upstream::replying(reply).await;
        let gw = gateway(&up).start().await;
        // As DynamicsWebApi sends a retrieveMultiple.
        let rsp = gw
            .get("/crm/v3/objects/contacts?limit=2")
            .purpose("support")
            .header("odata-maxversion", "4.0")
            .header("odata-version", "4.0")
            .header("accept", "application/json")
            .header(
                "prefer",
                "odata.include-annotations=\"*\",odata.maxpagesize=2",
            )
            .over(proto)
            .send()
            .await;
        rsp.assert_refused(status, "upstream_error");
        assert_eq!(rsp.header("retry-after"), Some("7"), "status {status}");
        assert_eq!(
            rsp.header("x-request-id"),
            Some("7f3c9a1e-0d1b-4c5e-9a55-0c9f3c1d2e10")
        );
        assert_eq!(rsp.header("x-crm-debug"), None);
        assert!(!rsp.text().contains("ada@example.com"));
        assert!(!format!("{:?}", rsp.headers).contains("example.com"));
    }
}

/// The headers `@hubspot/api-client` sends (`Accept` of its generated request factories, the
/// private app's token, node-fetch's coding), plus the gateway's own.
fn hubspot_node(call: crate::support::Call, purpose: &str, key: &str) -> crate::support::Call {
    call.header("x-api-key", key)
        .header("x-purpose", purpose)
        .header("accept", "application/json, */*;q=0.8")
        .header(
            "authorization",
            "Bearer pat-na1-00000000-0000-0000-0000-000000000000",
        )
        .header("user-agent", "hubspot-api-client-nodejs; 12.0.0")
        .header("accept-encoding", "gzip, deflate, br")
}

/// Members the schema of HubSpot's generated clients requires of `SimplePublicObject(With
/// Associations)`: hubspot-api-python's setters raise `ValueError("Invalid value for `...`, must
/// not be `None`")` when `client_side_validation` is on (it is off by default, and the record
/// then holds `None`); the Node client's types declare them non-optional.
const HUBSPOT_REQUIRED: [&str; 5] = ["id", "properties", "createdAt", "updatedAt", "archived"];

fn assert_hubspot_parses(record: &Value, purpose: &str) {
    for member in HUBSPOT_REQUIRED {
        assert!(
            record.get(member).is_some_and(|v| !v.is_null()),
            "purpose {purpose}: `{member}` is missing from {record}"
        );
    }
    assert!(record["properties"].is_object(), "purpose {purpose}");
}

both!(every_purpose_of_the_example_policy_answers_what_the_hubspot_clients_parse);
async fn every_purpose_of_the_example_policy_answers_what_the_hubspot_clients_parse(proto: Proto) {
    let policy = include_str!("../../policies/examples/hubspot-contacts.yaml");
    let key = include_bytes!("../../policies/examples/pseudonym.key");
    let up = Upstream::serve(|seen| {
        if seen.target.starts_with("/crm/v3/objects/contacts/1") {
            Reply::json(&contact("1"))
        } else {
            Reply::json(&json!({
                "results": [contact("1")],
                "paging": {"next": {"after": "2", "link": "https://api.hubapi.com/crm/v3/objects/contacts?after=2"}}
            }))
        }
    })
    .await;
    let gw = gateway(&up)
        .with_policy(policy.to_owned())
        .pseudonym_key(key)
        .start()
        .await;
    gw.grant("1", "marketing").await;
    for (purpose, key) in [
        ("marketing", "demo-marketing-key"),
        ("support", "demo-support-key"),
        ("analytics", "demo-support-key"),
    ] {
        // `basicApi.getById("1", ["email", "firstname"])`
        let one = "/crm/v3/objects/contacts/1?properties=email&properties=firstname&archived=false";
        let rsp = hubspot_node(gw.get(one), purpose, key)
            .over(proto)
            .send()
            .await;
        assert_hubspot_parses(&rsp.ok_json(), purpose);
        // `basicApi.getPage(10, undefined, ["email"])`, and `getAll` follows `paging.next.after`.
        let page = "/crm/v3/objects/contacts?limit=10&properties=email&archived=false";
        let rsp = hubspot_node(gw.get(page), purpose, key)
            .over(proto)
            .send()
            .await;
        let list = rsp.ok_json();
        assert_hubspot_parses(&list["results"][0], purpose);
        assert_eq!(list["paging"]["next"]["after"], "2", "purpose {purpose}");
    }
}

both!(paging_links_that_name_the_upstream_name_the_gateway);
async fn paging_links_that_name_the_upstream_name_the_gateway(proto: Proto) {
    // HubSpot writes `paging.next.link` from the host it was asked on; a client following it
    // must come back through the gateway, at the origin it reaches the gateway at.
    let up = Upstream::serve(|seen| {
        let host = seen.header("host").unwrap_or_default().to_owned();
        Reply::json(&json!({
            "results": [contact("1")],
            "paging": {
                "next": {"after": "2", "link": format!("http://{host}/crm/v3/objects/contacts?after=2")},
                "prev": {"link": "https://api.hubapi.com/crm/v3/objects/contacts?before=1"},
                "near": format!("http://{host}0/crm/v3/objects/contacts?after=2")
            }
        }))
    })
    .await;
    let gw = gateway(&up)
        .config(|c| c.public_url = Some("https://crm-gateway.example.com".to_owned()))
        .start()
        .await;
    gw.grant("1", "marketing").await;
    let rsp = gw
        .get("/crm/v3/objects/contacts?limit=1")
        .purpose("marketing")
        .over(proto)
        .send()
        .await;
    let paging = &rsp.ok_json()["paging"];
    assert_eq!(
        paging["next"],
        json!({"after": "2", "link": "https://crm-gateway.example.com/crm/v3/objects/contacts?after=2"})
    );
    // Links to other hosts, and names the upstream's merely starts, stay as they came.
    assert_eq!(
        paging["prev"]["link"],
        "https://api.hubapi.com/crm/v3/objects/contacts?before=1"
    );
    assert_eq!(
        paging["near"],
        format!("http://{}0/crm/v3/objects/contacts?after=2", up.addr)
    );
}

both!(hubspot_batch_read_answers_what_the_clients_parse);
async fn hubspot_batch_read_answers_what_the_clients_parse(proto: Proto) {
    let app = hex::encode(Sha256::digest(APP_KEY));
    let policy = format!(
        r#"
purposes:
  support: {{ basis: contract }}
callers:
  app:
    api_key: {{ sha256: {app} }}
    purposes: [support]
objects:
  contact:
    subject: $.id
    fields:
      $.id: user.unique_id
      $.properties.email: user.contact.email
      $.properties.health_notes: user.health_and_medical
      $.createdAt: system.operations
      $.updatedAt: system.operations
      $.archived: system.operations
    rules:
      support:
        - {{ paths: [$.id, $.properties, $.createdAt, $.updatedAt, $.archived], action: keep }}
routes:
  - name: contacts-batch-read
    method: POST
    path: /crm/v3/objects/contacts/batch/read
    object: contact
    records: $.results[*]
    envelope: [$.status, $.requestedAt, $.startedAt, $.completedAt]
"#
    );
    // `batchApi.read({inputs: [{id: "1"}, {id: "2"}], properties: ["email"], ...})`: 200, or 207
    // with `errors` when some ids were not found.
    let body = json!({
        "status": "COMPLETE",
        "results": [contact("1"), contact("2")],
        "numErrors": 1,
        "errors": [{"status": "error", "category": "OBJECT_NOT_FOUND",
                    "message": "Could not get some CONTACT objects", "context": {"ids": ["3"]}}],
        "startedAt": "2024-05-01T10:00:00.000Z",
        "completedAt": "2024-05-01T10:00:00.120Z"
    });
    let up = Upstream::replying(Reply::json(&body).status(207)).await;
    let gw = gateway(&up).with_policy(policy).start().await;
    let request = json!({
        "inputs": [{"id": "1"}, {"id": "2"}, {"id": "3"}],
        "properties": ["email"],
        "propertiesWithHistory": []
    });
    let rsp = gw
        .call(
            http::Method::POST,
            "/crm/v3/objects/contacts/batch/read?archived=false",
        )
        .purpose("support")
        .header("content-type", "application/json")
        .header("accept", "application/json, */*;q=0.8")
        .body(request.to_string())
        .over(proto)
        .send()
        .await;
    assert_eq!(rsp.status, 207, "body: {}", rsp.text());
    let got = rsp.json();
    for member in ["status", "startedAt", "completedAt"] {
        assert!(got.get(member).is_some(), "`{member}` is required: {got}");
    }
    assert_eq!(got["results"].as_array().map(Vec::len), Some(2));
    assert_hubspot_parses(&got["results"][0], "support");
    assert!(!rsp.text().contains("asthma"));
    // The request body went upstream as it came: nothing in the policy language examines it.
    assert_eq!(up.last().body, request.to_string());
}

#[tokio::test]
async fn salesforce_fifteen_character_ids_name_their_record() {
    // The REST API takes the case-sensitive 15-character form of an id (the one its UI shows)
    // and answers with the 18-character form: the same id with a case checksum.
    let up = Upstream::replying(salesforce_reply(&salesforce_record("0035g00000ABCDEAA5"))).await;
    let gw = gateway(&up).with_policy(salesforce_policy()).start().await;
    gw.grant("0035g00000ABCDEAA5", "marketing").await;
    // simple-salesforce `sf.Contact.get("0035g00000ABCDE")`.
    let rsp = simple_salesforce(gw.get("/services/data/v59.0/sobjects/Contact/0035g00000ABCDE"))
        .send()
        .await;
    assert_eq!(rsp.ok_json()["Id"], "0035g00000ABCDEAA5");
    // The same characters in another case are another record, whose checksum differs.
    let rsp = simple_salesforce(gw.get("/services/data/v59.0/sobjects/Contact/0035g00000ABCDe"))
        .send()
        .await;
    rsp.assert_refused(502, "subject_mismatch");
}

#[tokio::test]
async fn dynamics_next_link_leads_back_through_the_gateway() {
    // An OData service writes its links from the host it was asked on, as Dataverse writes
    // `https://ORG.crm.dynamics.com/...`: the gateway asks with the upstream's own `Host`.
    let up = Upstream::serve(|seen| {
        let host = seen.header("host").unwrap_or_default().to_owned();
        let row = |id: &str| {
            json!({"@odata.etag": "W/\"1\"", "contactid": id, "fullname": "Ada", "description": "asthma"})
        };
        if seen.target.contains("skiptoken") {
            Reply::json(&json!({"value": [row("a2")]}))
        } else {
            Reply::json(&json!({
                "@odata.context": format!("http://{host}/api/data/v9.2/$metadata#contacts(fullname)"),
                "value": [row("a1")],
                "@odata.nextLink": format!("http://{host}/api/data/v9.2/contacts?$select=fullname&$skiptoken=%3Ccookie%20pagenumber=%222%22%20/%3E")
            }))
        }
    })
    .await;
    let policy = dynamics_policy(
        r#"    method: GET
    envelope: ["$['@odata.context']", "$['@odata.nextLink']"]"#,
    );
    let gw = gateway(&up).with_policy(policy).start().await;
    let rsp = gw
        .get("/api/data/v9.2/contacts?$select=fullname")
        .purpose("support")
        .header("prefer", "odata.maxpagesize=1")
        .send()
        .await;
    let link = rsp.ok_json()["@odata.nextLink"]
        .as_str()
        .unwrap()
        .to_owned();
    // DynamicsWebApi's `retrieveAll`: the next request is `config.dataApi.url` + the link with
    // that URL taken off its front (`composeRequest`, `RequestClient.sendRequest`).
    let data_api = format!("{}/api/data/v9.2/", gw.url());
    let next = format!("/api/data/v9.2/{}", link.replacen(&data_api, "", 1));
    let rsp = gw.get(&next).purpose("support").send().await;
    assert_eq!(rsp.status, 200, "{next}: {}", rsp.text());
    assert_eq!(rsp.json()["value"][0]["contactid"], "a2");
    assert!(
        link.starts_with(&data_api),
        "the link leaves the gateway: {link}"
    );
}

// ------------------------------------------------------------------------------------------
// Known incompatibilities the gateway does not address yet: each test asserts what the client
// library needs, and fails (`cargo test --test e2e -- --ignored sdks`).

#[tokio::test]
#[ignore = "a create's OData-EntityId (the new record's id) is not passed on"]
async fn dynamics_create_tells_the_new_records_id() {
    // Dataverse answers a create without `Prefer: return=representation` with 204 and the new
    // record's URL in `OData-EntityId`; DynamicsWebApi's `create` returns the id it reads there
    // (`parseResponse`: an empty body, then `OData-EntityId`).
    let entity =
        "http://org.crm.dynamics.com/api/data/v9.2/contacts(7d577253-3ef0-4a0a-bb7f-8335c2596e70)";
    let up = Upstream::replying(
        Reply::bytes("")
            .status(204)
            .header("odata-version", "4.0")
            .header("odata-entityid", entity),
    )
    .await;
    let policy = dynamics_policy("    methods: [GET, POST]");
    let gw = gateway(&up).with_policy(policy).start().await;
    let rsp = gw
        .call(http::Method::POST, "/api/data/v9.2/contacts")
        .purpose("support")
        .header("content-type", "application/json; charset=utf-8")
        .header("odata-maxversion", "4.0")
        .header("odata-version", "4.0")
        .header("accept", "application/json")
        .body(r#"{"fullname":"Ada Lovelace"}"#)
        .send()
        .await;
    assert_eq!(rsp.status, 204);
    assert_eq!(rsp.header("odata-entityid"), Some(entity));
}
