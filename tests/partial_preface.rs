//! Thousands of connections that stop part way through the HTTP/2 preface must not keep the
//! gateway's workers busy while it waits for the rest (at most `timeouts.client_header_ms`).
//!
//! In its own test binary: the check reads the CPU time of the whole process, which no other
//! test may share.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::time::Duration;

use consentry::config::Config;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// User plus system CPU time of this process, in clock ticks (1/100 s).
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("a stat line")
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_prefaces_do_not_keep_the_workers_busy() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        policies: std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/examples"),
        data_dir: dir.path().join("data"),
        ..Config::default()
    };
    let gateway = consentry::server::build(&config).await.unwrap();
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        consentry::server::run(listener, gateway, &config, async {
            let _ = stopped.await;
        })
        .await;
    });
    let mut conns = Vec::new();
    for _ in 0..2000 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        conns.push(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = cpu_ticks();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let used = cpu_ticks() - before;
    drop(conns);
    let _ = stop.send(());
    let _ = server.await;
    // Polling every few milliseconds took several seconds of CPU here; waiting costs ~nothing.
    assert!(
        used < 60,
        "the gateway burnt {:.2} s of CPU in 3 s waiting on partial prefaces",
        used as f64 / 100.0
    );
}
