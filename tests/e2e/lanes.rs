//! Lanes: each client connection is served whole on one lane, with that lane's own
//! connections to the CRM; new connections go to the lane with the fewest open.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

use crate::support::{APP_KEY, Reply, Upstream, contacts, gateway};

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
async fn without_lanes_connections_are_served_on_the_calling_runtime() {
    let up = Upstream::replying(Reply::json(&contacts(&["1", "2"]))).await;
    let gw = gateway(&up).lanes(0).start().await;
    gw.grant("2", "marketing").await;
    assert!(gw.lanes.is_none());
    let mut a = Connection::open(gw.addr).await;
    assert_eq!(a.list_ids().await, ["2"]);
    assert_eq!(a.list_ids().await, ["2"]);
}
