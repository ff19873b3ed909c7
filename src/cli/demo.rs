//! `consentry demo`: a built-in sample CRM (HubSpot-like contacts with ordinary and
//! special-category fields), consent seeded for a few subjects, and the gateway on the example
//! policy in front of it; prints curl commands that show what the gateway does.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

use crate::config::Config;
use crate::consent::event::{ConsentEvent, EventKind, now_ms};

/// The example policy, embedded so the demo runs from any directory.
const EXAMPLE_POLICY: &str = include_str!("../../policies/examples/hubspot-contacts.yaml");
/// The example policy's demo pseudonym key.
const EXAMPLE_KEY: &str = include_str!("../../policies/examples/pseudonym.key");

/// Flags of `demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Address of the gateway.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Address of the sample CRM.
    #[arg(long, default_value = "127.0.0.1:18090")]
    pub crm: SocketAddr,
    /// Address of the admin API.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub admin_listen: SocketAddr,
    /// Data directory for the demo's consent store (fresh on every start).
    #[arg(long, default_value = "data/demo")]
    pub data_dir: PathBuf,
}

/// The demo's API keys, as the example policy knows them by hash.
pub const MARKETING_KEY: &str = "demo-marketing-key";
/// Key of the support desk.
pub const SUPPORT_KEY: &str = "demo-support-key";
/// The demo's admin token (a real deployment configures only its SHA-256).
pub const ADMIN_TOKEN: &str = "demo-admin-token-not-a-secret";

/// The sample contacts: (id, first, last, email, phone, city, date of birth, health notes,
/// ethnicity).
type Contact = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
);

const CONTACTS: &[Contact] = &[
    (
        "101",
        "Ada",
        "Lovelace",
        "ada@example.com",
        "+44 20 7946 0101",
        "London",
        "1985-12-10",
        "asthma",
        "white british",
    ),
    (
        "102",
        "Grace",
        "Hopper",
        "grace@example.com",
        "+1 212 555 0102",
        "New York",
        "1976-12-09",
        "none",
        "white american",
    ),
    (
        "103",
        "Alan",
        "Turing",
        "alan@example.com",
        "+44 161 496 0103",
        "Manchester",
        "1982-06-23",
        "pollen allergy",
        "white british",
    ),
    (
        "104",
        "Katherine",
        "Johnson",
        "katherine@example.com",
        "+1 757 555 0104",
        "Hampton",
        "1988-08-26",
        "diabetes type 1",
        "african american",
    ),
    (
        "105",
        "Tu",
        "Youyou",
        "tu@example.com",
        "+86 10 5555 0105",
        "Beijing",
        "1990-12-30",
        "none",
        "han chinese",
    ),
];

fn contact_json(c: &Contact) -> serde_json::Value {
    let (id, first, last, email, phone, city, dob, health, ethnicity) = *c;
    serde_json::json!({
        "id": id,
        "properties": {
            "firstname": first, "lastname": last, "email": email, "phone": phone,
            "city": city, "date_of_birth": dob, "health_notes": health,
            "ethnicity": ethnicity, "lifecyclestage": "customer",
            "hs_object_id": id,
        },
        "createdAt": "2024-02-06T10:00:00.000Z",
        "updatedAt": "2024-11-01T12:30:00.000Z",
        "archived": false,
    })
}

/// Answers one request of the sample CRM.
pub fn crm_answer(path: &str) -> (StatusCode, String) {
    let json = |v: serde_json::Value| v.to_string();
    match path.trim_end_matches('/') {
        "/crm/v3/objects/contacts" => (
            StatusCode::OK,
            json(serde_json::json!({
                "results": CONTACTS.iter().map(contact_json).collect::<Vec<_>>(),
                "paging": {"next": {"after": "106", "link": "/crm/v3/objects/contacts?after=106"}},
            })),
        ),
        "/health" => (StatusCode::OK, json(serde_json::json!({"status": "ok"}))),
        other => match other
            .strip_prefix("/crm/v3/objects/contacts/")
            .and_then(|id| CONTACTS.iter().find(|c| c.0 == id))
        {
            Some(c) => (StatusCode::OK, json(contact_json(c))),
            None => (
                StatusCode::NOT_FOUND,
                json(
                    serde_json::json!({"status": "error", "message": format!("resource {other} not found")}),
                ),
            ),
        },
    }
}

async fn crm_service(
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let (status, body) = crm_answer(req.uri().path());
    let mut rsp = Response::new(Full::new(Bytes::from(body)));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json;charset=UTF-8"),
    );
    Ok(rsp)
}

/// Serves the sample CRM on `listener` forever.
pub async fn serve_crm(listener: tokio::net::TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service_fn(crm_service))
                .await;
        });
    }
}

/// Runs the demo.
pub fn run(args: DemoArgs) -> ExitCode {
    let _log = super::init_tracing();
    let result = super::main_runtime().and_then(|rt| {
        if let Some(log) = &_log {
            rt.spawn(log.0.clone().flush_periodically());
        }
        rt.block_on(demo(args, crate::server::signal(), None))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Where a running demo listens (the actual ports when the arguments asked for port 0).
#[derive(Debug, Clone, Copy)]
pub struct DemoAddrs {
    /// The gateway.
    pub gateway: SocketAddr,
    /// The admin API.
    pub admin: SocketAddr,
    /// The sample CRM.
    pub crm: SocketAddr,
}

/// Runs the demo until `shutdown`; `ready` hears where it listens once it serves.
pub async fn demo(
    mut args: DemoArgs,
    shutdown: impl std::future::Future<Output = ()>,
    ready: Option<tokio::sync::oneshot::Sender<DemoAddrs>>,
) -> anyhow::Result<()> {
    // A fresh store and the embedded policy on every start, so the demo always tells the same
    // story.
    let _ = std::fs::remove_dir_all(&args.data_dir);
    let policies = args.data_dir.join("policies");
    std::fs::create_dir_all(&policies)?;
    std::fs::write(policies.join("hubspot-contacts.yaml"), EXAMPLE_POLICY)?;
    std::fs::write(policies.join("pseudonym.key"), EXAMPLE_KEY)?;

    let crm = tokio::net::TcpListener::bind(args.crm).await?;
    args.crm = crm.local_addr()?;
    tokio::spawn(serve_crm(crm));
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    args.listen = listener.local_addr()?;
    let admin_listener = tokio::net::TcpListener::bind(args.admin_listen).await?;
    args.admin_listen = admin_listener.local_addr()?;

    let config = Config {
        listen: args.listen,
        upstream: format!("http://{}", args.crm),
        policies,
        data_dir: args.data_dir.clone(),
        admin: crate::config::AdminConfig {
            listen: Some(args.admin_listen),
            tokens: vec![crate::config::AdminToken::from_secret("demo", ADMIN_TOKEN)],
            ..crate::config::AdminConfig::default()
        },
        ..Config::default()
    };
    let gateway = crate::server::build(&config).await?;
    let admin = crate::admin::Admin::new(gateway.clone(), &config.admin)?;
    let now = now_ms();
    let event = |subject: &str, purpose: &str, kind| ConsentEvent {
        subject: subject.to_owned(),
        purpose: purpose.to_owned(),
        kind,
        at_ms: now,
        expires_at_ms: None,
        source: Some("demo".to_owned()),
        proof: None,
        actor: Some("demo".to_owned()),
        recorded_at_ms: None,
    };
    gateway
        .consent
        .record(&[
            event("101", "marketing", EventKind::Granted),
            event("102", "marketing", EventKind::Granted),
            event("103", "marketing", EventKind::Granted),
            event("103", "marketing", EventKind::Withdrawn),
            event("105", "marketing", EventKind::Granted),
            event("104", "analytics", EventKind::Objected),
        ])
        .await?;
    let base = format!("http://{}", args.listen);
    println!(
        r#"
Consentry demo: a sample CRM on http://{crm}, the gateway on {base}.
Consent: 101, 102 and 105 granted marketing; 103 granted, then withdrew; 104 objected to analytics.

1. Marketing sees a masked phone, no health or ethnicity data, and only the consenting contacts
   (103 and 104 are left out):
   curl -s {base}/crm/v3/objects/contacts -H 'X-Api-Key: {mk}' -H 'X-Purpose: marketing'

2. A single contact without consent is refused (403, problem+json):
   curl -s {base}/crm/v3/objects/contacts/103 -H 'X-Api-Key: {mk}' -H 'X-Purpose: marketing'

3. A purpose the caller may not declare is refused:
   curl -s {base}/crm/v3/objects/contacts -H 'X-Api-Key: {mk}' -H 'X-Purpose: support'

4. The support desk (contract) sees every contact, health notes included, birth dates as years:
   curl -s {base}/crm/v3/objects/contacts -H 'X-Api-Key: {sk}' -H 'X-Purpose: support'

5. Analytics (legitimate interest) sees pseudonyms; 104 objected and is left out:
   curl -s {base}/crm/v3/objects/contacts -H 'X-Api-Key: {sk}' -H 'X-Purpose: analytics'

6. Without a key:
   curl -s {base}/crm/v3/objects/contacts -H 'X-Purpose: marketing'

Record consent while it runs, through the admin API or the CLI (honoured on the next request),
and read a subject's state and history:
   curl -s -X POST {admin}/v1/consent/events -H 'Authorization: Bearer {token}' \
        -H 'Content-Type: application/json' \
        -d '{{"subject": "104", "purpose": "marketing", "kind": "granted", "source": "web_form"}}'
   cargo run --release -- consent --data-dir {data} withdraw 101 marketing
   curl -s {admin}/v1/subjects/103/consent -H 'Authorization: Bearer {token}'
   curl -s {admin}/v1/subjects/103/history -H 'Authorization: Bearer {token}'
   curl -s {admin}/openapi.json

Stop with Ctrl-C.
"#,
        crm = args.crm,
        mk = MARKETING_KEY,
        sk = SUPPORT_KEY,
        data = args.data_dir.display(),
        admin = format_args!("http://{}", args.admin_listen),
        token = ADMIN_TOKEN,
    );
    if let Some(ready) = ready {
        let _ = ready.send(DemoAddrs {
            gateway: args.listen,
            admin: args.admin_listen,
            crm: args.crm,
        });
    }
    let lanes = crate::lanes::Lanes::start(crate::lanes::count(config.workers))?;
    crate::server::run_with_admin(
        listener,
        gateway,
        Some(&lanes),
        Some((admin_listener, admin)),
        &config,
        shutdown,
    )
    .await;
    Ok(())
}
