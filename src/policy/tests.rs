//! Tests of the policy compiler: golden diagnostics for every error kind, and the plans
//! produced for a representative policy.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};

use super::compiled::*;
use super::*;

/// Every `tests/golden/policy/<case>/policy` directory compiled; the output (the errors
/// rendered, or the summary) must equal `<case>/expected.txt`. `UPDATE_GOLDEN=1` rewrites them.
#[test]
fn golden_diagnostics() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/policy");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    assert!(!cases.is_empty());
    let mut failed = Vec::new();
    for case in cases {
        // Paths relative to the crate root keep the expected files machine independent.
        let rel = case
            .strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .unwrap()
            .to_path_buf();
        let dir = rel.join("policy");
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(&dir);
        let got = match load_dir(&dir) {
            Ok(p) => format!(
                "ok: {} routes, {} purposes, {} callers\n",
                p.routes.len(),
                p.purposes.len(),
                p.callers.len()
            ),
            Err(e) => e.render(),
        };
        let got = got.replace(&format!("{}/", env!("CARGO_MANIFEST_DIR")), "");
        let expected_path = case.join("expected.txt");
        if update {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != got {
            failed.push(format!("--- {}\n{got}", rel.display()));
        }
    }
    assert!(
        failed.is_empty(),
        "golden mismatches (UPDATE_GOLDEN=1 to accept):\n{}",
        failed.join("\n")
    );
}

fn compile(text: &str) -> CompiledPolicy {
    match compile_sources(&[(PathBuf::from("policy.yaml"), text.to_string())]) {
        Ok(p) => p,
        Err(e) => panic!("{}", e.render()),
    }
}

fn errors(text: &str) -> Vec<&'static str> {
    compile_sources(&[(PathBuf::from("policy.yaml"), text.to_string())])
        .err()
        .unwrap()
        .errors
        .iter()
        .map(|e| e.kind.code())
        .collect()
}

fn obj(fields: Vec<(&str, ValuePlan)>, others: Option<ValuePlan>) -> ValuePlan {
    let fields = fields.into_iter().map(|(k, v)| (k.into(), v)).collect();
    ValuePlan::Object(ObjectPlan::new(fields, others.map(Box::new)))
}

const REPRESENTATIVE: &str = r#"
purposes:
  marketing: { basis: consent }
  support: { basis: contract }
  analytics: { basis: legitimate_interest, sale_or_sharing: true }
  unused: { basis: public_task }
categories:
  user.loyalty: {}
  user.loyalty.tier: {}
  user.health_and_medical.allergies: {}
callers:
  hashed:
    api_key: { sha256: b0962662e937d44c699c8305d90cbf190b3150c59b13863d1380b5cc3c711bb7 }
    purposes: [marketing, support]
  from-file:
    api_key: { file: ../tests/golden/policy/conflicting-rules/policy/pseudo.key }
    purposes: [analytics]
pseudonym_key: { file: ../tests/golden/policy/conflicting-rules/policy/pseudo.key }
objects:
  contact:
    subject: $.id
    fields:
      $.id: user.unique_id
      $.properties.email: user.contact.email
      $.properties.phone: user.contact.phone_number
      $.properties.city: user.contact.address.city
      $.properties.health_notes: user.health_and_medical
      $.properties.allergies: user.health_and_medical.allergies
      $.properties.tier: user.loyalty.tier
      $.properties.dob: user.demographic.date_of_birth
      $.createdAt: system.operations
      $.tags[*].label: system.operations
    rules:
      marketing:
        - { path: $.id, action: keep }
        - { category: user.contact, action: drop }
        - { category: user.contact.email, action: keep }
        - { path: $.properties.phone, action: mask, last: 4 }
        - { category: user.contact.phone_number, action: null }
        - { path: $.properties.dob, action: generalise, to: year }
      support:
        - { path: $.properties, action: keep }
        - { path: $.properties.allergies, action: keep, special: true }
        - { path: '$.history[*].note', action: hash }
        - { path: $.extra.*, action: constant, value: { x: 1 } }
      analytics:
        - { path: $, action: keep }
routes:
  - name: contact
    method: GET
    path: /crm/contacts/{id}
    object: contact
    records: $
    subject_param: id
  - name: search
    methods: [GET, POST]
    path: /crm/contacts/search
    object: contact
    records: $.data.results[*]
    envelope: [$.paging, $.total]
    without_basis: non_personal
  - name: list
    method: GET
    path: /crm/contacts
    object: contact
    records: $[*]
passthrough:
  - { method: GET, path: /health }
"#;

#[test]
fn representative_policy_compiles_to_expected_plans() {
    let src = REPRESENTATIVE;
    // Secrets named relatively are read next to the policy file.
    let p = match compile_sources(&[(PathBuf::from("src/policy.yaml"), src.to_string())]) {
        Ok(p) => p,
        Err(e) => panic!("{}", e.render()),
    };
    assert_eq!(p.purposes.len(), 4);
    assert_eq!(&*p.purposes[2].name, "analytics");
    assert!(p.purposes[2].sale_or_sharing);
    assert_eq!(p.purposes[2].basis, LawfulBasis::LegitimateInterest);

    // Key hashing: from the hex, and SHA-256 of the file without its trailing newline.
    let bench =
        hex::decode("b0962662e937d44c699c8305d90cbf190b3150c59b13863d1380b5cc3c711bb7").unwrap();
    assert_eq!(p.callers[0].key_sha256.as_slice(), bench.as_slice());
    assert_eq!(p.callers[0].purposes, vec![0, 1]);
    use sha2::Digest;
    let expected: [u8; 32] = sha2::Sha256::digest(b"0123456789abcdef").into();
    assert_eq!(p.callers[1].key_sha256, expected);

    // Route order: literal `search` before the parameter `{id}`; the shorter list last.
    let names: Vec<&str> = p.routes.iter().map(|r| &*r.name).collect();
    assert_eq!(names, ["search", "contact", "list"]);
    let search = &p.routes[0];
    assert_eq!(search.methods, [http::Method::GET, http::Method::POST]);
    assert_eq!(
        search.records,
        RecordsAt::List(vec!["data".into(), "results".into()])
    );
    assert_eq!(search.subject, SubjectAt::Field(vec!["id".into()]));
    assert_eq!(search.without_basis, WithoutBasis::NonPersonal);
    let contact = &p.routes[1];
    assert_eq!(contact.records, RecordsAt::Body);
    assert_eq!(
        contact.subject,
        SubjectAt::ParamAndField(0, vec!["id".into()])
    );
    assert_eq!(contact.without_basis, WithoutBasis::Refuse);
    assert_eq!(p.routes[2].records, RecordsAt::List(vec![]));
    assert_eq!(p.routes[2].without_basis, WithoutBasis::Omit);
    assert_eq!(p.passthrough.len(), 1);

    // Views indexed by purpose, none for a purpose without rules.
    assert_eq!(search.views.len(), 4);
    assert!(search.views[3].is_none());

    // Path rule beats category rule; narrower category beats wider.
    let marketing = search.views[0].as_ref().unwrap();
    let properties = obj(
        vec![
            ("email", ValuePlan::KeepScalar),
            (
                "phone",
                ValuePlan::Transform(Transform::Mask {
                    first: 0,
                    last: 4,
                    with: '*',
                }),
            ),
            ("dob", ValuePlan::Transform(Transform::DateToYear)),
        ],
        None,
    );
    assert_eq!(
        marketing.record,
        obj(
            vec![("id", ValuePlan::KeepScalar), ("properties", properties)],
            None
        )
    );

    // Envelope and non-personal plans.
    let (fields, others) = (marketing.envelope.fields(), marketing.envelope.others());
    assert_eq!(
        fields.iter().map(|(k, _)| &**k).collect::<Vec<_>>(),
        ["paging", "total"]
    );
    assert!(others.is_none());
    assert_eq!(
        marketing.non_personal,
        obj(
            vec![
                ("createdAt", ValuePlan::KeepScalar),
                (
                    "tags",
                    ValuePlan::Array(Box::new(obj(vec![("label", ValuePlan::KeepScalar)], None)))
                ),
            ],
            None
        )
    );

    // Special carve-out: keeping `$.properties` does not release health notes, but the
    // allergies kept with `special: true` are released. Hash gets the key; `.*` is `others`.
    let support = search.views[1].as_ref().unwrap();
    let key: std::sync::Arc<[u8]> = std::sync::Arc::from(&b"0123456789abcdef"[..]);
    assert_eq!(
        support.record,
        obj(
            vec![
                (
                    "properties",
                    obj(
                        vec![
                            ("allergies", ValuePlan::KeepScalar),
                            ("city", ValuePlan::KeepScalar),
                            ("dob", ValuePlan::KeepScalar),
                            ("email", ValuePlan::KeepScalar),
                            ("health_notes", ValuePlan::Drop),
                            ("phone", ValuePlan::KeepScalar),
                            ("tier", ValuePlan::KeepScalar)
                        ],
                        Some(ValuePlan::Keep)
                    )
                ),
                (
                    "history",
                    ValuePlan::Array(Box::new(obj(
                        vec![("note", ValuePlan::Transform(Transform::Hash { key }))],
                        None
                    )))
                ),
                (
                    "extra",
                    obj(
                        vec![],
                        Some(ValuePlan::Transform(Transform::Constant(
                            r#"{"x":1}"#.into()
                        )))
                    )
                ),
            ],
            None
        )
    );

    // A keep of the whole record carves out every special field.
    let analytics = search.views[2].as_ref().unwrap();
    assert_eq!(
        analytics.record,
        obj(
            vec![
                ("createdAt", ValuePlan::KeepScalar),
                ("id", ValuePlan::KeepScalar),
                (
                    "properties",
                    obj(
                        vec![
                            ("allergies", ValuePlan::Drop),
                            ("city", ValuePlan::KeepScalar),
                            ("dob", ValuePlan::KeepScalar),
                            ("email", ValuePlan::KeepScalar),
                            ("health_notes", ValuePlan::Drop),
                            ("phone", ValuePlan::KeepScalar),
                            ("tier", ValuePlan::KeepScalar)
                        ],
                        Some(ValuePlan::Keep)
                    )
                ),
                (
                    "tags",
                    ValuePlan::Array(Box::new(obj(
                        vec![("label", ValuePlan::KeepScalar)],
                        Some(ValuePlan::Keep)
                    )))
                )
            ],
            Some(ValuePlan::Keep)
        )
    );

    // Plans are searchable by member name.
    if let ValuePlan::Object(o) = &support.record {
        assert!(o.fields().windows(2).all(|w| w[0].0 < w[1].0));
        assert!(o.member("history").is_some());
        assert!(o.member("nope").is_none());
    }
}

#[test]
fn revision_depends_on_contents_and_paths_only() {
    let a = compile_sources(&[(PathBuf::from("a.yaml"), "purposes: {}\n".into())]).unwrap();
    let b = compile_sources(&[(PathBuf::from("a.yaml"), "purposes: {}\n".into())]).unwrap();
    let c = compile_sources(&[(PathBuf::from("b.yaml"), "purposes: {}\n".into())]).unwrap();
    assert_eq!(a.revision, b.revision);
    assert_ne!(a.revision, c.revision);
    assert_eq!(a.revision.len(), 64);
}

#[test]
fn wide_category_keep_carves_out_special_fields() {
    let p = compile(
        r#"
purposes: { m: { basis: consent } }
objects:
  o:
    subject: $.id
    fields:
      $.email: user.contact.email
      $.notes: user.health_and_medical
    rules:
      m:
        - { category: user, action: keep }
routes:
  - { name: r, method: GET, path: /o, object: o, records: '$[*]' }
"#,
    );
    let view = p.routes[0].views[0].as_ref().unwrap();
    assert_eq!(
        view.record,
        obj(vec![("email", ValuePlan::KeepScalar)], None)
    );
}

#[test]
fn category_rule_on_special_category_needs_the_flag() {
    let base = r#"
purposes: { m: { basis: consent } }
objects:
  o:
    subject: $.id
    fields:
      $.notes: user.health_and_medical
    rules:
      m:
        - { category: user.health_and_medical, action: keep SPECIAL }
"#;
    assert_eq!(
        errors(&base.replace(" SPECIAL", "")),
        ["special-without-flag"]
    );
    let p = compile(&base.replace(" SPECIAL", ", special: true"));
    assert!(p.routes.is_empty());
}

#[test]
fn json_rendering_has_code_location_and_help() {
    let e = compile_sources(&[(
        PathBuf::from("p.yaml"),
        "purposes:\n  marketing: { basis: consent }\ncallers:\n  a:\n    api_key: { sha256: 00 }\n    purposes: [marketting]\n".into(),
    )])
    .unwrap_err();
    let v: serde_json::Value = serde_json::from_str(&e.render_json()).unwrap();
    let list = v["errors"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["code"], "invalid-sha256");
    assert_eq!(list[1]["code"], "unknown-purpose");
    assert_eq!(list[1]["line"], 6);
    assert_eq!(list[1]["col"], 16);
    assert_eq!(list[1]["help"], "did you mean `marketing`?");
}

#[test]
fn benchmark_policy_compiles() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/benchmark");
    let p = match load_dir(&dir) {
        Ok(p) => p,
        Err(e) => panic!("{}", e.render()),
    };
    assert_eq!(p.purposes.len(), 1);
    assert_eq!(p.callers.len(), 1);
    use sha2::Digest;
    let key: [u8; 32] = sha2::Sha256::digest(b"bench-key").into();
    assert_eq!(p.callers[0].key_sha256, key);
    let names: Vec<&str> = p.routes.iter().map(|r| &*r.name).collect();
    assert_eq!(names, ["contact", "contacts-list", "contacts-list-big"]);
    let list = &p.routes[1];
    assert_eq!(list.records, RecordsAt::List(vec!["results".into()]));
    assert_eq!(list.without_basis, WithoutBasis::Omit);
    let view = list.views[0].as_ref().unwrap();
    let props = obj(
        [
            "firstname",
            "lastname",
            "email",
            "city",
            "lifecyclestage",
            "hs_lead_status",
        ]
        .into_iter()
        .map(|k| (k, ValuePlan::KeepScalar))
        .chain([(
            "phone",
            ValuePlan::Transform(Transform::Mask {
                first: 0,
                last: 4,
                with: '*',
            }),
        )])
        .collect(),
        None,
    );
    assert_eq!(
        view.record,
        obj(
            vec![
                ("id", ValuePlan::KeepScalar),
                ("createdAt", ValuePlan::KeepScalar),
                ("updatedAt", ValuePlan::KeepScalar),
                ("archived", ValuePlan::KeepScalar),
                ("properties", props),
            ],
            None
        )
    );
    assert_eq!(view.envelope.member("paging"), Some(&ValuePlan::Keep));
    let single = &p.routes[0];
    assert_eq!(
        single.subject,
        SubjectAt::ParamAndField(0, vec!["id".into()])
    );
    assert_eq!(single.without_basis, WithoutBasis::Refuse);
}
