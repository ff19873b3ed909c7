//! Throughput of the streaming redactor on the benchmark workload, beside a serde_json baseline
//! (parse, mutate, serialise) that applies the same redaction to the same bodies.
//!
//! The bodies are the 50-contact list (about 22 KB) and the 5,000-contact list (about 2.27 MB)
//! that `benches/gen_crm_data.py` writes; they are generated into a temporary folder at start
//! (needs `python3`). The view is compiled from `policies/benchmark` for the purpose
//! `marketing`; consent is granted for every id not divisible by 4, as in the load benchmark.
//!
//! Run: `cargo bench --bench engine` (briefly: `-- --warm-up-time 1 --measurement-time 3`).
//!
//! With `ENGINE_ITERATIONS=N` in the environment, the engine instead redacts each body N times
//! and exits, without timing: a fixed amount of work, for counting instructions under
//! `valgrind --tool=callgrind` (counts do not move with the machine's load as times do).

#![expect(
    clippy::expect_used,
    reason = "benchmark setup: a missing fixture or a wrong output must stop the run"
)]

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::Value;

use consentry::policy::compiled::{Route, View};
use consentry::redact::{Limits, RedactError, Redactor};

/// Chunk size the body is pushed in, as an upstream connection would deliver it.
const CHUNK: usize = 16 * 1024;

/// Properties the benchmark policy keeps as they are (phone is masked, the rest dropped).
const KEEP: [&str; 6] = [
    "firstname",
    "lastname",
    "email",
    "city",
    "lifecyclestage",
    "hs_lead_status",
];
/// Record members kept besides `properties`.
const RECORD_KEEP: [&str; 4] = ["id", "createdAt", "updatedAt", "archived"];

/// The consent of the benchmark: every id not divisible by 4.
fn consented(id: &str) -> bool {
    id.parse::<u64>().is_ok_and(|n| n % 4 != 0)
}

/// One body to redact, with the route that serves it.
struct Case {
    name: &'static str,
    body: bytes::Bytes,
    route: Route,
    view: std::sync::Arc<View>,
}

fn fixtures() -> Vec<Case> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().expect("a temporary folder");
    let status = Command::new("python3")
        .arg(root.join("benches/gen_crm_data.py"))
        .arg(dir.path())
        .status()
        .expect("python3 runs benches/gen_crm_data.py");
    assert!(status.success(), "gen_crm_data.py failed: {status}");

    let policy = consentry::policy::load_dir(&root.join("policies/benchmark"))
        .expect("policies/benchmark compiles");
    let marketing = policy
        .purposes
        .iter()
        .position(|p| &*p.name == "marketing")
        .expect("the purpose marketing");
    let case = |name, file: &str, route_name: &str| {
        let route = policy
            .routes
            .iter()
            .find(|r| &*r.name == route_name)
            .expect("the route")
            .clone();
        let view = route
            .views
            .get(marketing)
            .cloned()
            .flatten()
            .expect("a view of the route for marketing");
        let body = bytes::Bytes::from(read(&dir.path().join(file)));
        Case {
            name,
            body,
            view: view.clone(),
            route,
        }
    };
    vec![
        case(
            "contacts-22KB",
            "crm/v3/objects/contacts.json",
            "contacts-list",
        ),
        case(
            "contacts-big-2.27MB",
            "crm/v3/objects/contacts-big.json",
            "contacts-list-big",
        ),
    ]
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).expect("a fixture written by gen_crm_data.py")
}

/// The gateway's engine: the body pushed in chunks, each batch of subjects answered at once.
fn redact_streaming(case: &Case) -> Result<Vec<u8>, RedactError> {
    let route = &case.route;
    let mut redactor = Redactor::new(
        &route.records,
        &route.subject,
        route.without_basis,
        case.view.clone(),
        None,
        Limits::default(),
    );
    let mut out = Vec::with_capacity(case.body.len());
    let mut from = 0;
    while from < case.body.len() {
        // Chunks as an upstream connection hands them over: views of its read buffer.
        let to = (from + CHUNK).min(case.body.len());
        redactor.push_bytes(case.body.slice(from..to))?;
        from = to;
        answer(&mut redactor)?;
        redactor.drain_output_into(&mut out);
    }
    redactor.finish()?;
    answer(&mut redactor)?;
    redactor.drain_output_into(&mut out);
    if !redactor.is_complete() {
        return Err(RedactError::Protocol);
    }
    Ok(out)
}

fn answer(redactor: &mut Redactor) -> Result<(), RedactError> {
    while redactor.has_pending() {
        let lawful: Vec<bool> = redactor.pending_subjects().map(consented).collect();
        redactor.resolve(&lawful)?;
    }
    Ok(())
}

/// The baseline: the whole body into a serde_json DOM, mutated in place, serialised.
fn redact_serde_json(body: &[u8]) -> serde_json::Result<Vec<u8>> {
    let mut doc: Value = serde_json::from_slice(body)?;
    if let Some(top) = doc.as_object_mut() {
        top.retain(|k, _| k == "results" || k == "paging");
    }
    if let Some(results) = doc.get_mut("results").and_then(Value::as_array_mut) {
        results.retain(|r| r.get("id").and_then(Value::as_str).is_some_and(consented));
        for record in results.iter_mut() {
            let Some(rec) = record.as_object_mut() else {
                continue;
            };
            rec.retain(|k, _| k == "properties" || RECORD_KEEP.contains(&k.as_str()));
            if let Some(props) = rec.get_mut("properties").and_then(Value::as_object_mut) {
                let phone = props.get("phone").and_then(Value::as_str).map(mask_last4);
                props.retain(|k, _| KEEP.contains(&k.as_str()));
                if let Some(phone) = phone {
                    props.insert("phone".to_owned(), Value::String(phone));
                }
            }
        }
    }
    serde_json::to_vec(&doc)
}

/// Every character but the last 4 becomes `*`.
fn mask_last4(text: &str) -> String {
    let len = text.chars().count();
    text.chars()
        .enumerate()
        .map(|(i, c)| if i + 4 >= len { c } else { '*' })
        .collect()
}

fn engine(c: &mut Criterion) {
    let cases = fixtures();
    if let Some(n) = std::env::var("ENGINE_ITERATIONS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
    {
        for case in &cases {
            for _ in 0..n {
                black_box(
                    redact_streaming(black_box(case)).expect("the redactor accepts the body"),
                );
            }
            eprintln!("{}: redacted {n} times", case.name);
        }
        std::process::exit(0);
    }
    for case in &cases {
        // Both sides must produce the same document, or the comparison means nothing.
        let ours = redact_streaming(case).expect("the redactor accepts the body");
        let theirs = redact_serde_json(&case.body).expect("serde_json accepts the body");
        let ours: Value = serde_json::from_slice(&ours).expect("the redactor writes JSON");
        let theirs: Value = serde_json::from_slice(&theirs).expect("serde_json writes JSON");
        assert_eq!(ours, theirs, "{}: the two redactions differ", case.name);

        let mut group = c.benchmark_group(format!("redact/{}", case.name));
        group.throughput(Throughput::Bytes(case.body.len() as u64));
        if case.body.len() > 1024 * 1024 {
            group.sample_size(20);
        }
        group.bench_with_input(
            BenchmarkId::from_parameter("consentry-stream"),
            case,
            |b, case| b.iter(|| redact_streaming(black_box(case))),
        );
        group.bench_with_input(
            BenchmarkId::from_parameter("serde_json-baseline"),
            &case.body,
            |b, body| b.iter(|| redact_serde_json(black_box(body))),
        );
        group.finish();
    }
}

criterion_group!(benches, engine);
criterion_main!(benches);
