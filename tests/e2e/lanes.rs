//! Lanes: each client connection is served whole on one lane, with that lane's own
//! connections to the CRM; new connections go to the lane with the fewest open.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

use crate::support::{APP_KEY, PSEUDONYM_KEY, Reply, Upstream, contact, contacts, gateway, policy};

/// One client connection to the gateway, kept open between requests.
struct Connection {
    send: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

impl Connection {
    async fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Self { send }
    }

    /// The ids of the contacts in the marketing view of the list.
    async fn list_ids(&mut self) -> Vec<String> {
        let req = Request::get("/crm/v3/objects/contacts")
            .header("host", "gateway")
            .header("x-api-key", APP_KEY)
            .header("x-purpose", "marketing")
            .body(Empty::new())
            .unwrap();
        self.send.ready().await.unwrap();
        let rsp = tokio::time::timeout(Duration::from_secs(10), self.send.send_request(req))
            .await
            .expect("the gateway answered in time")
            .unwrap();
        assert_eq!(rsp.status(), 200);
        let body = rsp.into_body().collect().await.unwrap().to_bytes();
        let list: Value = serde_json::from_slice(&body).unwrap();
        list["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// Waits until the lanes count `want` open connections.
async fn open_on_lanes(gw: &crate::support::Gw, want: &[usize]) {
    let lanes = gw.lanes.as_ref().unwrap();
    for _ in 0..200 {
        if lanes.open_connections() == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(lanes.open_connections(), want);
}

#[tokio::test]
async fn connections_are_spread_over_the_lanes_and_never_share_an_upstream_connection() {
    let up = Upstream::replying(Reply::json(&contacts(&["1", "2", "3"]))).await;
    let gw = gateway(&up).lanes(2).start().await;
    gw.grant("1", "marketing").await;
    gw.grant("3", "marketing").await;

    let mut a = Connection::open(gw.addr).await;
    assert_eq!(a.list_ids().await, ["1", "3"]);
    open_on_lanes(&gw, &[1, 0]).await;
    let mut b = Connection::open(gw.addr).await;
    assert_eq!(b.list_ids().await, ["1", "3"]);
    open_on_lanes(&gw, &[1, 1]).await;

    // Requests take turns between the connections, with time for each upstream connection to
    // go back to its pool: one shared pool would hand the same upstream connection to both.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(a.list_ids().await, ["1", "3"]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(b.list_ids().await, ["1", "3"]);
    }
    let peers: Vec<SocketAddr> = up.seen().iter().map(|s| s.peer).collect();
    assert_eq!(peers.len(), 8);
    let of_a: HashSet<_> = peers.iter().step_by(2).collect();
    let of_b: HashSet<_> = peers.iter().skip(1).step_by(2).collect();
    assert!(
        of_a.is_disjoint(&of_b),
        "an upstream connection carried requests of both lanes: {peers:?}"
    );

    // A third connection goes to the lane with fewer open, once one has closed.
    drop(a);
    open_on_lanes(&gw, &[0, 1]).await;
    let mut c = Connection::open(gw.addr).await;
    assert_eq!(c.list_ids().await, ["1", "3"]);
    open_on_lanes(&gw, &[1, 1]).await;
    drop((b, c));
    open_on_lanes(&gw, &[0, 0]).await;
}

#[tokio::test]
async fn without_lanes_a_connection_is_served_all_the_same() {
    let up = Upstream::replying(Reply::json(&contacts(&["1", "2"]))).await;
    let gw = gateway(&up).lanes(0).start().await;
    gw.grant("2", "marketing").await;
    assert!(gw.lanes.is_none());
    let mut a = Connection::open(gw.addr).await;
    assert_eq!(a.list_ids().await, ["2"]);
    assert_eq!(a.list_ids().await, ["2"]);
}

/// `consentry serve` as a process: it answers through its lanes, each with its own upstream
/// connection, and on SIGTERM it drains, stops its lanes and exits.
#[tokio::test]
async fn the_binary_serves_on_its_lanes_and_exits_on_sigterm() {
    let up = Upstream::replying(Reply::json(&contact("1"))).await;
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policy");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(policies.join("policy.yaml"), policy()).unwrap();
    std::fs::write(policies.join("pseudonym.key"), PSEUDONYM_KEY).unwrap();
    // A free port: bound, read, released for the gateway to take.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_consentry"))
        .arg("serve")
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--upstream")
        .arg(up.url())
        .arg("--policies")
        .arg(&policies)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--workers")
        .arg("2")
        .env_remove("CONSENTRY_CONFIG")
        .env_remove("CONSENTRY_ADMIN_LISTEN")
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let mut child = Killed(child);
    let mut connections = Vec::new();
    for _ in 0..50 {
        match TcpStream::connect(addr).await {
            Ok(_) => break,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    for _ in 0..2 {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        connections.push(send);
    }
    for send in &mut connections {
        for _ in 0..2 {
            let req = Request::get("/crm/v3/objects/contacts/1")
                .header("host", "gateway")
                .header("x-api-key", APP_KEY)
                .header("x-purpose", "support")
                .body(Empty::<Bytes>::new())
                .unwrap();
            send.ready().await.unwrap();
            let rsp = send.send_request(req).await.unwrap();
            assert_eq!(rsp.status(), 200);
            let body = rsp.into_body().collect().await.unwrap().to_bytes();
            let record: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(record["id"], "1");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The two connections went to two lanes, each reaching the CRM over its own connection.
    let peers: HashSet<SocketAddr> = up.seen().iter().map(|s| s.peer).collect();
    assert_eq!(up.seen().len(), 4);
    assert_eq!(
        peers.len(),
        2,
        "{:?}",
        up.seen().iter().map(|s| s.peer).collect::<Vec<_>>()
    );

    let pid = child.0.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut status = None;
    for _ in 0..150 {
        status = child.0.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = status.expect("the gateway exits within 15 s of SIGTERM");
    assert!(status.success(), "{status}");
}

/// A child process, killed if the test ends before it does.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A consent lookup on a cache miss runs on the runtime that built the gateway, in
/// `consentry serve` the one `cli::main_runtime` makes: one of its threads busy for longer
/// than the lookup timeout (a policy being compiled, an admin import being parsed) while a
/// request waits for its lookup does not make the lane withhold a subject who consented.
#[test]
fn a_busy_main_thread_does_not_withhold_consented_subjects() {
    // The CRM runs on a runtime of its own, so that it answers whatever the gateway's does.
    let crm = tokio::runtime::Runtime::new().unwrap();
    let up = crm.block_on(Upstream::replying(Reply::json(&contacts(&["1", "2"]))));
    let runtime = consentry::cli::main_runtime().unwrap();
    runtime.block_on(async {
        let gw = gateway(&up)
            .lanes(2)
            .config(|c| c.consent.lookup_timeout_ms = 200)
            .start()
            .await;
        gw.grant("1", "marketing").await;
        // The client runs on a thread of its own, so that it does not wait for the runtime.
        let (go, told) = std::sync::mpsc::channel::<()>();
        let addr = gw.addr;
        let client = std::thread::spawn(move || {
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            told.recv().unwrap();
            let request = format!(
                "GET /crm/v3/objects/contacts HTTP/1.1\r\nHost: gateway\r\n\
                 X-Api-Key: {APP_KEY}\r\nX-Purpose: marketing\r\nConnection: close\r\n\r\n"
            );
            stream.write_all(request.as_bytes()).unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).unwrap();
            response
        });
        // The connection is accepted and handed to a lane.
        tokio::time::sleep(Duration::from_millis(200)).await;
        go.send(()).unwrap();
        let busy = tokio::spawn(async {
            std::thread::sleep(Duration::from_millis(700));
        });
        let response = tokio::task::spawn_blocking(move || client.join().unwrap())
            .await
            .unwrap();
        busy.await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        let body = response.split_once("\r\n\r\n").unwrap().1;
        let list: Value = serde_json::from_str(body).unwrap();
        assert_eq!(list["results"].as_array().unwrap().len(), 1, "{body}");
        assert_eq!(list["results"][0]["id"], "1", "{body}");
    });
}
