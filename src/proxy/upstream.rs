//! The pooled keep-alive client to the one upstream CRM, with connect and response-head
//! timeouts: one pool per lane ([`crate::lanes`]), so that a request and its upstream
//! connection are served by the same thread, and one for every other thread.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Request, Response, Uri};
use http_body_util::Limited;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::body::BoxError;
use super::refusal::Refusal;

/// The scheme and authority of the URIs handed to the pools. The pools key their connections by
/// them and hash the authority byte by byte at every checkout and return; the upstream is
/// one, so its URIs carry a one-letter name, and [`Dial`] connects to the upstream's address
/// whatever name it is asked for. The name never goes on the wire: HTTP/1.1 requests carry
/// their path alone, and `Host` is the upstream's authority (`Upstream::host`).
const POOL_ORIGIN: &str = "http://u";

/// Most idle connections kept open to the CRM, shared out among the lanes' pools.
const IDLE_CONNECTIONS: usize = 256;

/// Largest read from an upstream connection.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// The body sent upstream: the client's request body, bounded.
pub type UpstreamBody = Limited<Incoming>;

type Pool = Client<Dial, UpstreamBody>;

/// The upstream CRM.
#[derive(Clone)]
pub struct Upstream {
    /// The pool of threads that are not lanes.
    shared: Pool,
    /// The pool of each lane, in lane order.
    lanes: std::sync::Arc<[Pool]>,
    /// A path prefix of the upstream URL (`http://crm/api` -> `/api`), without trailing slash.
    prefix: String,
    /// The upstream's authority, sent as `Host`.
    pub host: HeaderValue,
    /// The upstream's base URL as links it writes start (`http://host:port/prefix`), with and
    /// without the default port.
    pub bases: std::sync::Arc<[Box<str>]>,
    header_timeout: Duration,
}

impl Upstream {
    /// A client for the upstream at `url` (`http://host:port[/prefix]`), with a pool for each
    /// of `lanes` lanes.
    pub fn new(
        url: &str,
        connect_timeout: Duration,
        header_timeout: Duration,
        lanes: usize,
    ) -> Result<Self, String> {
        let uri: Uri = url.parse().map_err(|e| format!("upstream `{url}`: {e}"))?;
        let authority = uri
            .authority()
            .ok_or_else(|| format!("upstream `{url}` has no host"))?
            .clone();
        if uri.scheme_str() != Some("http") {
            return Err(format!("upstream `{url}` must use http://"));
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let connector = Dial {
            inner: connector,
            to: format!("http://{authority}")
                .parse()
                .map_err(|e| format!("upstream `{url}`: {e}"))?,
        };
        let pool = || {
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(60))
                // At most `IDLE_CONNECTIONS` idle connections to the CRM in all.
                .pool_max_idle_per_host(IDLE_CONNECTIONS.div_ceil(lanes.max(1)))
                // Upstream bodies arrive in chunks of at most this size: what one response
                // holds in memory at once stays small whatever the body's size.
                .http1_max_buf_size(READ_BUFFER_BYTES)
                .build(connector.clone())
        };
        let prefix = uri.path().trim_end_matches('/').to_owned();
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|e| format!("upstream `{url}`: {e}"))?;
        let host_only = authority.host();
        let bases = match authority.port_u16() {
            Some(80) => vec![
                format!("http://{authority}{prefix}"),
                format!("http://{host_only}{prefix}"),
            ],
            Some(_) => vec![format!("http://{authority}{prefix}")],
            None => vec![
                format!("http://{authority}{prefix}"),
                format!("http://{host_only}:80{prefix}"),
            ],
        };
        Ok(Self {
            shared: pool(),
            lanes: (0..lanes).map(|_| pool()).collect(),
            bases: bases.into_iter().map(Box::from).collect(),
            prefix,
            host,
            header_timeout,
        })
    }

    /// The upstream URI for a normalised path and the request's query.
    pub fn uri_for(&self, path: &str, query: Option<&str>) -> Result<Uri, Refusal> {
        let mut text = String::with_capacity(POOL_ORIGIN.len() + path.len() + 64);
        text.push_str(POOL_ORIGIN);
        text.push_str(&self.prefix);
        text.push_str(path);
        if let Some(q) = query {
            text.push('?');
            text.push_str(q);
        }
        text.parse()
            .map_err(|_| Refusal::BadRequest("the request target cannot be forwarded"))
    }

    /// The pool of the calling thread: its lane's, or the one of threads that are not lanes.
    fn pool(&self) -> &Pool {
        crate::lanes::current()
            .checked_sub(1)
            .and_then(|lane| self.lanes.get(lane))
            .unwrap_or(&self.shared)
    }

    /// Sends a request and waits for the response head.
    pub async fn send(&self, req: Request<UpstreamBody>) -> Result<Response<Incoming>, Refusal> {
        match tokio::time::timeout(self.header_timeout, self.pool().request(req)).await {
            Err(_) => Err(Refusal::UpstreamTimeout),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "upstream request failed");
                if is_body_limit(&e) {
                    Err(Refusal::RequestTooLarge)
                } else {
                    Err(Refusal::UpstreamUnavailable)
                }
            }
            Ok(Ok(rsp)) => Ok(rsp),
        }
    }
}

/// Connects to the upstream's address, whatever URI the pool asks for (see [`POOL_ORIGIN`]).
#[derive(Clone)]
pub struct Dial {
    inner: HttpConnector,
    /// The upstream's scheme and authority.
    to: Uri,
}

impl tower::Service<Uri> for Dial {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, _asked: Uri) -> Self::Future {
        let connecting = self.inner.call(self.to.clone());
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}

fn is_body_limit(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bases(url: &str) -> Vec<String> {
        let up = Upstream::new(url, Duration::from_secs(1), Duration::from_secs(1), 1).unwrap();
        up.bases.iter().map(|b| b.to_string()).collect()
    }

    #[test]
    fn links_name_the_upstream_with_and_without_its_default_port() {
        assert_eq!(
            bases("http://crm.internal/api/"),
            ["http://crm.internal/api", "http://crm.internal:80/api"]
        );
        assert_eq!(
            bases("http://crm.internal:80"),
            ["http://crm.internal:80", "http://crm.internal"]
        );
        assert_eq!(bases("http://[::1]:8000/x"), ["http://[::1]:8000/x"]);
    }
}
