//! A log writer for the request path: lines are appended to one shared buffer and written to
//! stderr in batches (when the buffer passes [`FLUSH_BYTES`], when a line finds the last write
//! older than [`FLUSH_AFTER`], on [`BatchedStderr::flush_now`], and at exit), so a busy
//! gateway makes one write per batch instead of one per request, and wakes no other thread.
//!
//! Never drops a line: a write that fails is reported once on stderr directly.

use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Buffered bytes that trigger a write.
pub const FLUSH_BYTES: usize = 32 * 1024;
/// Age of the oldest buffered line that triggers a write.
pub const FLUSH_AFTER: Duration = Duration::from_millis(200);

struct Inner {
    buf: Vec<u8>,
    last_flush: Instant,
}

/// The shared, batched stderr writer; clone freely.
#[derive(Clone)]
pub struct BatchedStderr {
    inner: Arc<Mutex<Inner>>,
}

impl Default for BatchedStderr {
    fn default() -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                buf: Vec::with_capacity(FLUSH_BYTES * 2),
                last_flush: Instant::now(),
            })),
        }
    }
}

impl BatchedStderr {
    /// Writes out whatever is buffered.
    pub fn flush_now(&self) {
        let batch = take(&mut self.inner.lock().unwrap_or_else(PoisonError::into_inner));
        write_out(&batch);
    }

    /// Flushes every [`FLUSH_AFTER`] until the runtime stops, so quiet periods do not hold
    /// lines back.
    pub async fn flush_periodically(self) {
        let mut tick = tokio::time::interval(FLUSH_AFTER);
        loop {
            tick.tick().await;
            self.flush_now();
        }
    }
}

/// Takes the buffered lines out (the lock is held only for the swap).
fn take(inner: &mut Inner) -> Vec<u8> {
    inner.last_flush = Instant::now();
    std::mem::replace(&mut inner.buf, Vec::with_capacity(FLUSH_BYTES * 2))
}

fn write_out(batch: &[u8]) {
    if batch.is_empty() {
        return;
    }
    let mut err = std::io::stderr().lock();
    // Nothing else can be done with a log line stderr refuses.
    let _ = err.write_all(batch);
    let _ = err.flush();
}

/// One log event being written.
pub struct LineWriter {
    inner: Arc<Mutex<Inner>>,
}

impl Write for LineWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let batch = {
            let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            inner.buf.extend_from_slice(bytes);
            if inner.buf.len() < FLUSH_BYTES && inner.last_flush.elapsed() < FLUSH_AFTER {
                return Ok(bytes.len());
            }
            take(&mut inner)
        };
        // Written outside the lock: other threads keep logging meanwhile.
        write_out(&batch);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BatchedStderr {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            inner: Arc::clone(&self.inner),
        }
    }
}

/// Flushes at the end of scope (the process's exit path).
pub struct FlushGuard(pub BatchedStderr);

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.0.flush_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_kept_until_a_batch_is_written() {
        let w = BatchedStderr::default();
        let mut line = tracing_subscriber::fmt::MakeWriter::make_writer(&w);
        line.write_all(b"one line\n").unwrap();
        assert_eq!(w.inner.lock().unwrap().buf, b"one line\n");
        w.flush_now();
        assert!(w.inner.lock().unwrap().buf.is_empty());
        let big = vec![b'x'; FLUSH_BYTES];
        line.write_all(&big).unwrap();
        assert!(
            w.inner.lock().unwrap().buf.is_empty(),
            "a full batch is written at once"
        );
    }
}
