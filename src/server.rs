//! Accepting connections and serving them (HTTP/1.1 and h2c with prior knowledge on one
//! port), until shutdown; then draining requests in flight. The proxy listener ([`run`]) and
//! the admin listener (`crate::admin::serve`) share the same loop ([`serve_http`]): the same
//! header timeouts, connection cap and drain.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::{Service, service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::lanes::Lanes;
use crate::proxy::Gateway;
use crate::proxy::pipeline;

/// Serves `listener` until `shutdown` resolves, then waits up to the configured grace period
/// for requests in flight. Connections are served on the calling runtime.
pub async fn run(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    config: &Config,
    shutdown: impl Future<Output = ()>,
) {
    run_on(listener, gateway, None, config, shutdown).await;
}

/// As [`run`], with each connection served on one of `lanes` when given.
pub async fn run_on(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    lanes: Option<&Lanes>,
    config: &Config,
    shutdown: impl Future<Output = ()>,
) {
    let service = move |peer: SocketAddr| {
        let gw = gateway.clone();
        service_fn(move |req| {
            let gw = gw.clone();
            async move { Ok::<_, Infallible>(pipeline::handle(gw, req, peer).await) }
        })
    };
    serve_http(
        listener,
        config,
        config.limits.max_connections,
        lanes,
        service,
        shutdown,
    )
    .await;
}

/// Serves the proxy on `listener`, on `lanes` when given, and, when given, the admin API on
/// its own listener (on the calling runtime), until `shutdown` resolves; each then drains its
/// own requests.
pub async fn run_with_admin(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    lanes: Option<&Lanes>,
    admin: Option<(TcpListener, crate::admin::Admin)>,
    config: &Config,
    shutdown: impl Future<Output = ()>,
) {
    let (stop, stopped) = watch::channel(false);
    let stopping = async move {
        shutdown.await;
        let _ = stop.send(true);
    };
    let until_stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stopped| *stopped).await;
    };
    let proxy = run_on(
        listener,
        gateway,
        lanes,
        config,
        until_stopped(stopped.clone()),
    );
    let admin = async {
        if let Some((listener, admin)) = admin {
            crate::admin::serve(listener, admin, config, until_stopped(stopped)).await;
        }
    };
    tokio::join!(stopping, proxy, admin);
}

/// What every connection of one listener shares.
struct Shared {
    builder: auto::Builder<TokioExecutor>,
    header_timeout: Duration,
    idle_timeout: Duration,
    drain_timeout: Duration,
    epoch: tokio::time::Instant,
}

/// Serves `listener` with the service `service(peer)` makes for each connection, at most
/// `max_connections` at once, on `lanes` when given (else on the calling runtime), until
/// `shutdown` resolves; then waits up to the configured grace period for requests in flight.
pub async fn serve_http<M, S, B>(
    listener: TcpListener,
    config: &Config,
    max_connections: usize,
    lanes: Option<&Lanes>,
    service: M,
    shutdown: impl Future<Output = ()>,
) where
    M: Fn(SocketAddr) -> S,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(config.timeouts.client_header_ms))
        .max_buf_size(config.limits.max_header_bytes.max(8192))
        .max_headers(config.limits.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.limits.max_header_bytes).unwrap_or(u32::MAX))
        // A peer that does not answer pings within the client header timeout is gone or not
        // speaking HTTP/2: its connection slot is freed.
        .keep_alive_interval(Duration::from_millis(config.timeouts.client_header_ms))
        .keep_alive_timeout(Duration::from_millis(config.timeouts.client_header_ms))
        .max_concurrent_streams(256);
    let shared = Arc::new(Shared {
        builder,
        header_timeout: Duration::from_millis(config.timeouts.client_header_ms),
        idle_timeout: Duration::from_millis(config.timeouts.idle_ms.max(1)),
        drain_timeout: Duration::from_millis(config.timeouts.shutdown_ms),
        epoch: tokio::time::Instant::now(),
    });
    let (closing_tx, closing) = watch::channel(false);
    let connections = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = service(peer);
        let shared = Arc::clone(&shared);
        let closing = closing.clone();
        match lanes.and_then(Lanes::pick) {
            None => {
                connections.spawn(async move {
                    serve_connection(stream, service, &shared, closing).await;
                    drop(permit);
                });
            }
            Some(lane) => {
                // The socket leaves this runtime's reactor for the lane's.
                let stream = match stream.into_std() {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepted connection lost");
                        continue;
                    }
                };
                let handle = lane.handle.clone();
                connections.spawn_on(
                    async move {
                        match tokio::net::TcpStream::from_std(stream) {
                            Ok(stream) => serve_connection(stream, service, &shared, closing).await,
                            Err(e) => tracing::warn!(error = %e, "accepted connection lost"),
                        }
                        drop((lane, permit));
                    },
                    &handle,
                );
            }
        }
    }
    drop(listener);
    let _ = closing_tx.send(true);
    connections.close();
    let grace = Duration::from_millis(config.timeouts.shutdown_ms);
    tokio::select! {
        () = connections.wait() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(grace) => tracing::warn!("shutdown grace period over; closing"),
    }
}

/// Serves one accepted connection until it ends, closes when idle, or is dropped when it does
/// not finish within its time after a graceful close (`closing`: the listener is draining).
async fn serve_connection<S, B>(
    stream: tokio::net::TcpStream,
    inner: S,
    shared: &Shared,
    mut closing: watch::Receiver<bool>,
) where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let epoch = shared.epoch;
    let idle_timeout = shared.idle_timeout;
    let last_request = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = Arc::clone(&last_request);
    let service = service_fn(move |req| {
        seen.store(millis_since(epoch), std::sync::atomic::Ordering::Relaxed);
        inner.call(req)
    });
    // The protocol detection has no timeout of its own: a client that sends nothing (or part
    // of the HTTP/2 preface) would hold its connection slot for ever.
    if !sniff(&stream, shared.header_timeout).await {
        return;
    }
    last_request.store(millis_since(epoch), std::sync::atomic::Ordering::Relaxed);
    let conn = shared
        .builder
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    // Set once a graceful close began (idle, or the listener draining): the connection then
    // has this long to finish, after which it is dropped, so that a client that stops reading
    // cannot hold its slot for ever.
    let mut hard_stop: Option<tokio::time::Instant> = None;
    loop {
        let last = last_request.load(std::sync::atomic::Ordering::Relaxed);
        let idle_at = epoch + Duration::from_millis(last) + idle_timeout;
        let stop_at = hard_stop.unwrap_or(idle_at);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            _ = closing.changed(), if hard_stop.is_none() => {
                conn.as_mut().graceful_shutdown();
                hard_stop = Some(tokio::time::Instant::now() + shared.drain_timeout);
            }
            () = tokio::time::sleep_until(idle_at), if hard_stop.is_none() => {
                // No request started for the idle timeout (an HTTP/2 peer that answers pings,
                // a quiet keep-alive client, or one that stopped reading its responses): close
                // gracefully, which lets a response still streaming finish within the idle
                // timeout again.
                let last = last_request.load(std::sync::atomic::Ordering::Relaxed);
                if epoch + Duration::from_millis(last) + idle_timeout <= tokio::time::Instant::now() {
                    conn.as_mut().graceful_shutdown();
                    hard_stop = Some(tokio::time::Instant::now() + idle_timeout);
                }
            }
            () = tokio::time::sleep_until(stop_at), if hard_stop.is_some() => {
                tracing::debug!("connection did not finish after a graceful close: dropped");
                break;
            }
        }
    }
}

/// Milliseconds from `epoch` to now.
fn millis_since(epoch: tokio::time::Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Waits, at most `limit`, until the first bytes on `stream` tell HTTP/1 from HTTP/2 (the
/// whole preface, or a byte that departs from it). `false`: the client closed or was too slow.
async fn sniff(stream: &tokio::net::TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; PREFACE.len()];
    tokio::time::timeout(limit, async {
        // Peeking at bytes already buffered returns at once, so a client that stops part way
        // through the preface is polled, with a growing pause: thousands of such clients must
        // not keep the workers busy.
        let mut pause = Duration::from_millis(2);
        let mut seen = 0;
        loop {
            match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) if n >= PREFACE.len() || buf[..n] != PREFACE[..n] => return true,
                Ok(n) => {
                    if n > seen {
                        seen = n;
                        pause = Duration::from_millis(2);
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(250));
                }
            }
        }
    })
    .await
    .unwrap_or(false)
}

/// Resolves on SIGTERM or SIGINT.
pub async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received; draining");
}

/// Starting the gateway failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the policy in {dir} does not compile:\n{errors}")]
    Policy {
        dir: std::path::PathBuf,
        errors: crate::policy::diagnostic::PolicyErrors,
    },
    #[error("the consent store cannot be opened: {0}")]
    Store(#[from] crate::consent::open::OpenError),
    #[error("{0}")]
    Config(String),
}

/// Builds the shared state of a gateway from its configuration: compiles the policy (never
/// starting on one that does not compile), opens the consent store, prepares the upstream
/// client.
pub async fn build(config: &Config) -> Result<Arc<Gateway>, StartError> {
    config
        .validate()
        .map_err(|e| StartError::Config(e.to_string()))?;
    let policy =
        crate::policy::load_dir(&config.policies).map_err(|errors| StartError::Policy {
            dir: config.policies.clone(),
            errors,
        })?;
    let (consent, records) =
        crate::consent::open::open_records(config, crate::consent::open::Use::Gateway).await?;
    let upstream = crate::proxy::upstream::Upstream::new(
        &config.upstream,
        Duration::from_millis(config.timeouts.connect_ms),
        Duration::from_millis(config.timeouts.header_ms),
        crate::lanes::count(config.workers),
    )
    .map_err(StartError::Config)?;
    tracing::info!(
        revision = %policy.revision,
        routes = policy.routes.len(),
        purposes = policy.purposes.len(),
        callers = policy.callers.len(),
        "policy loaded"
    );
    Ok(Arc::new(Gateway {
        policy: arc_swap::ArcSwap::from_pointee(policy),
        consent,
        records,
        upstream,
        limits: config.limits,
        total_timeout: Duration::from_millis(config.timeouts.total_ms),
        public_url: config
            .public_url
            .as_deref()
            .map(|url| Arc::from(url.trim_end_matches('/'))),
    }))
}

/// Reloads the policy on SIGHUP: a policy that compiles replaces the running one for the next
/// requests; one that does not is logged and the running one stays.
pub async fn reload_on_hangup(gateway: Arc<Gateway>, dir: std::path::PathBuf) {
    #[cfg(unix)]
    {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            // Compiling a policy takes a while: not on a thread that consent lookups and
            // accepting connections need.
            let (gateway, dir) = (gateway.clone(), dir.clone());
            let _ = tokio::task::spawn_blocking(move || reload(&gateway, &dir)).await;
        }
    }
    #[cfg(not(unix))]
    let _ = (gateway, dir);
}

/// Compiles the policy in `dir` and, if it compiles, makes it the running one.
pub fn reload(gateway: &Gateway, dir: &std::path::Path) -> bool {
    match crate::policy::load_dir(dir) {
        Ok(policy) => {
            tracing::info!(revision = %policy.revision, routes = policy.routes.len(), "policy reloaded");
            gateway.policy.store(Arc::new(policy));
            true
        }
        Err(errors) => {
            // FAIL-CLOSED: a policy that does not compile is never loaded; the running one stays.
            tracing::error!(
                "policy reload refused, the running policy stays:\n{}",
                errors.render()
            );
            false
        }
    }
}
