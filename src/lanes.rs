//! Lanes: the threads that serve the proxy's connections, each running its own single-threaded
//! tokio runtime.
//!
//! A client connection is served on one lane from its first byte to its last, with that lane's
//! own pooled connections to the CRM ([`crate::proxy::upstream`]): a request whose consent is
//! cached never leaves its thread, and no task is stolen or handed over between threads. This
//! is the layout of nginx's workers; on a machine of one or two cores it serves more requests
//! for the same CPU, and with a shorter tail, than a work-stealing pool (BENCHMARKS.md). As with
//! nginx, the streams of one HTTP/2 connection share one lane: a client that sends all its work
//! over one connection gets one core.
//!
//! The listener's accept loop, the admin API and the background tasks (the consent store's
//! change feed and its lookups on a cache miss, policy reload, log flushing) stay on the
//! runtime that started the lanes. A new connection goes to the lane with the fewest open
//! connections.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio::sync::watch;

thread_local! {
    /// The lane this thread serves, counted from 1; 0 on any other thread.
    static LANE: Cell<usize> = const { Cell::new(0) };
}

/// The number of the lane the calling thread serves, counted from 1 (0: not a lane's thread).
pub fn current() -> usize {
    LANE.with(Cell::get)
}

/// The lane count `workers` asks for: itself, or one per core for 0.
pub fn count(workers: usize) -> usize {
    if workers > 0 {
        workers
    } else {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    }
}

/// Running lanes; stopped, and their threads joined, when dropped.
pub struct Lanes {
    lanes: Vec<Lane>,
    stop: watch::Sender<bool>,
}

struct Lane {
    handle: Handle,
    /// Connections open on the lane.
    open: Arc<AtomicUsize>,
    /// `None` once joined.
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A connection's place on a lane: counted among the lane's open connections until dropped.
pub struct Ticket {
    /// The runtime of the lane, to spawn the connection on.
    pub handle: Handle,
    open: Arc<AtomicUsize>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Lanes {
    /// Starts `count` lanes (at least one), each a thread named `consentry-laneN` (what `top`
    /// shows of it in full up to lane 9: Linux keeps 15 bytes of a thread's name).
    pub fn start(count: usize) -> std::io::Result<Self> {
        let (stop, stopped) = watch::channel(false);
        let mut started = Self {
            lanes: Vec::with_capacity(count.max(1)),
            stop,
        };
        for number in 1..=count.max(1) {
            // On an error the lanes started so far stop with `started`'s drop.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            let mut stopped = stopped.clone();
            let thread = std::thread::Builder::new()
                .name(format!("consentry-lane{number}"))
                .spawn(move || {
                    LANE.with(|lane| lane.set(number));
                    // The lane's tasks run while this thread waits here; what is left when it
                    // stops (connections past the grace period) is dropped with the runtime.
                    runtime.block_on(async move {
                        let _ = stopped.wait_for(|stop| *stop).await;
                    });
                })?;
            started.lanes.push(Lane {
                handle,
                open: Arc::new(AtomicUsize::new(0)),
                thread: Some(thread),
            });
        }
        Ok(started)
    }

    /// A place for a new connection on the lane with the fewest open connections (the first
    /// of those on a tie); `None` if no lane runs any more (the caller serves the connection
    /// itself). A lane whose thread has ended, which only a bug could cause, is passed over:
    /// its runtime would drop every connection handed to it.
    pub fn pick(&self) -> Option<Ticket> {
        let lane = self
            .lanes
            .iter()
            .filter(|lane| lane.thread.as_ref().is_some_and(|t| !t.is_finished()))
            .min_by_key(|lane| lane.open.load(Ordering::Relaxed))?;
        lane.open.fetch_add(1, Ordering::Relaxed);
        Some(Ticket {
            handle: lane.handle.clone(),
            open: Arc::clone(&lane.open),
        })
    }

    /// Open connections on each lane, in lane order.
    pub fn open_connections(&self) -> Vec<usize> {
        self.lanes
            .iter()
            .map(|lane| lane.open.load(Ordering::Relaxed))
            .collect()
    }
}

impl Drop for Lanes {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for (number, lane) in (1..).zip(&mut self.lanes) {
            if let Some(Err(_)) = lane.thread.take().map(std::thread::JoinHandle::join) {
                tracing::error!(lane = number, "a lane's thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_goes_to_the_lane_with_the_fewest_open() {
        let lanes = Lanes::start(3).unwrap();
        let a = lanes.pick().unwrap();
        let b = lanes.pick().unwrap();
        let c = lanes.pick().unwrap();
        assert_eq!(lanes.open_connections(), [1, 1, 1]);
        drop(b);
        assert_eq!(lanes.open_connections(), [1, 0, 1]);
        let d = lanes.pick().unwrap();
        assert_eq!(lanes.open_connections(), [1, 1, 1]);
        let e = lanes.pick().unwrap();
        assert_eq!(lanes.open_connections(), [2, 1, 1]);
        drop((a, c, d, e));
        assert_eq!(lanes.open_connections(), [0, 0, 0]);
    }

    #[test]
    fn tasks_run_on_their_lane_and_stop_with_the_lanes() {
        let lanes = Lanes::start(2).unwrap();
        assert_eq!(current(), 0);
        let mut seen = Vec::new();
        let mut held = Vec::new();
        for _ in 0..2 {
            let ticket = lanes.pick().unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            drop(ticket.handle.spawn(async move {
                let name = std::thread::current().name().map(str::to_owned);
                let _ = tx.send((current(), name));
            }));
            seen.push(rx.recv().unwrap());
            held.push(ticket);
        }
        assert_eq!(
            seen,
            [
                (1, Some("consentry-lane1".to_owned())),
                (2, Some("consentry-lane2".to_owned()))
            ]
        );
        // A task still waiting when the lanes stop is dropped with its lane's runtime.
        let ticket = lanes.pick().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        drop(ticket.handle.spawn(async move {
            let _keep = tx;
            std::future::pending::<()>().await;
        }));
        drop((held, ticket));
        drop(lanes);
        assert!(rx.recv().is_err(), "the waiting task was dropped");
    }

    #[test]
    fn a_lane_whose_thread_ended_is_passed_over() {
        let mut lanes = Lanes::start(2).unwrap();
        let ended = std::thread::spawn(|| {});
        while !ended.is_finished() {
            std::thread::yield_now();
        }
        let first = lanes.lanes[0].thread.replace(ended);
        let a = lanes.pick().unwrap();
        let b = lanes.pick().unwrap();
        assert_eq!(lanes.open_connections(), [0, 2]);
        lanes.lanes[0].thread = first;
        let c = lanes.pick().unwrap();
        assert_eq!(lanes.open_connections(), [1, 2]);
        drop((a, b, c));
    }

    #[test]
    fn zero_workers_means_one_lane_per_core() {
        assert_eq!(count(3), 3);
        assert!(count(0) >= 1);
    }
}
