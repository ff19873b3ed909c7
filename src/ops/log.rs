//! A log writer for the request path: lines are appended to one shared buffer and written to
//! stderr in batches (when the buffer passes [`FLUSH_BYTES`], when a line finds the last write
//! older than [`FLUSH_AFTER`], on [`BatchedStderr::flush_now`], and at exit), so a busy
//! gateway makes one write per batch instead of one per request, and wakes no other thread.
//!
//! Never drops a line: a write that fails is reported once on stderr directly.

use std::fmt;
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::{DefaultFields, Writer};

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

/// The fields of text log lines, written as [`DefaultFields`] writes them (`name=value`, each
/// value as `Debug` shows it, one space between): without colours, the default still styles
/// every field name through `nu_ansi_term`, which cost about half of the request path's log
/// line. Lines with colours, and fields the default treats apart (the `message`, errors with
/// their sources, `log.*` metadata, raw `r#` names), are left to the default whole.
#[derive(Debug, Default, Clone, Copy)]
pub struct PlainFields;

thread_local! {
    /// The fields of the line being formatted on this thread.
    static FIELDS: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Field text a thread keeps room for between lines.
const FIELDS_KEPT: usize = 4 * 1024;

impl<'w> FormatFields<'w> for PlainFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        if !writer.has_ansi_escapes() {
            // One pass into the thread's buffer, one write of it: a field the default must
            // write after all costs only the buffer's contents.
            let written = FIELDS.try_with(|cell| {
                let mut buf = cell.try_borrow_mut().ok()?;
                buf.clear();
                let mut plain = Plain {
                    buf: &mut buf,
                    plain: true,
                    result: Ok(()),
                };
                fields.record(&mut plain);
                let Plain { plain, result, .. } = plain;
                let written = plain.then(|| result.and_then(|()| writer.write_str(&buf)));
                if buf.capacity() > FIELDS_KEPT {
                    *buf = String::new();
                }
                written
            });
            if let Ok(Some(result)) = written {
                return result;
            }
        }
        DefaultFields::new().format_fields(writer, fields)
    }
}

/// The fields of one line as [`PlainFields`] writes them, and whether all of them could be.
struct Plain<'a> {
    buf: &'a mut String,
    /// False once a field needs the default formatter.
    plain: bool,
    /// The first error a value's `Debug` returned.
    result: fmt::Result,
}

impl Plain<'_> {
    /// Starts a field: false (write nothing) if the line goes to the default after all, or if
    /// the field is one the default writes apart.
    fn start(&mut self, field: &Field) -> bool {
        let name = field.name();
        if name == "message" || name.starts_with("log.") || name.starts_with("r#") {
            self.plain = false;
        }
        if !self.plain || self.result.is_err() {
            return false;
        }
        if !self.buf.is_empty() {
            self.buf.push(' ');
        }
        true
    }
}

impl Visit for Plain<'_> {
    fn record_error(&mut self, _field: &Field, _value: &(dyn std::error::Error + 'static)) {
        // The default writes an error's sources too.
        self.plain = false;
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        // Printable ASCII other than a quote or a backslash: `Debug` writes it as it is, quoted.
        let as_is = value
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\');
        if !as_is {
            return self.record_debug(field, &value);
        }
        if self.start(field) {
            for piece in [field.name(), "=\"", value, "\""] {
                self.buf.push_str(piece);
            }
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.start(field) {
            let mut digits = itoa::Buffer::new();
            for piece in [field.name(), "=", digits.format(value)] {
                self.buf.push_str(piece);
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.start(field) {
            use std::fmt::Write as _;
            self.result = write!(self.buf, "{}={value:?}", field.name());
        }
    }
}

/// Timestamps as tracing-subscriber's `SystemTime` writes them (RFC 3339 in UTC, microseconds:
/// `2026-11-24T20:02:01.123456Z`), with the date and time up to the second formatted once per
/// second per thread instead of once per line.
#[derive(Debug, Clone, Copy, Default)]
pub struct SecondClock;

thread_local! {
    /// The second last formatted on this thread, and its text up to the seconds.
    static SECOND: std::cell::Cell<(i64, [u8; 19])> = const { std::cell::Cell::new((i64::MIN, [0; 19])) };
}

impl tracing_subscriber::fmt::time::FormatTime for SecondClock {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        let stamp = stamp(std::time::SystemTime::now());
        match stamp.as_ref().and_then(|s| std::str::from_utf8(s).ok()) {
            Some(text) => w.write_str(text),
            // Before 1970 or after 9999: written the default's way.
            None => tracing_subscriber::fmt::time::SystemTime.format_time(w),
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` of `now`, the part up to the second from this thread's last
/// one when it is the same second; `None` outside 1970 to 9999.
fn stamp(now: std::time::SystemTime) -> Option<[u8; 27]> {
    let since = now.duration_since(std::time::UNIX_EPOCH).ok()?;
    let secs = i64::try_from(since.as_secs()).ok()?;
    let prefix = match SECOND.try_with(std::cell::Cell::get) {
        Ok((second, prefix)) if second == secs => prefix,
        _ => {
            let prefix = second_text(secs)?;
            let _ = SECOND.try_with(|c| c.set((secs, prefix)));
            prefix
        }
    };
    let mut text = *b"0000-00-00T00:00:00.000000Z";
    text.get_mut(..19)?.copy_from_slice(&prefix);
    zero_padded(since.subsec_micros(), text.get_mut(20..26)?);
    Some(text)
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix time in UTC, for years 0 to 9999.
fn second_text(secs: i64) -> Option<[u8; 19]> {
    let t = time::OffsetDateTime::from_unix_timestamp(secs).ok()?;
    let year = u32::try_from(t.year()).ok().filter(|y| *y <= 9999)?;
    let mut text = *b"0000-00-00T00:00:00";
    for (n, at) in [
        (year, 0..4),
        (u32::from(u8::from(t.month())), 5..7),
        (u32::from(t.day()), 8..10),
        (u32::from(t.hour()), 11..13),
        (u32::from(t.minute()), 14..16),
        (u32::from(t.second()), 17..19),
    ] {
        zero_padded(n, text.get_mut(at)?);
    }
    Some(text)
}

/// Writes `n` in decimal into all of `digits`, zero-padded on the left (higher digits that do
/// not fit are left out).
fn zero_padded(mut n: u32, digits: &mut [u8]) {
    for digit in digits.iter_mut().rev() {
        // INVARIANT: a remainder of 10 is one digit.
        *digit = b'0' + (n % 10) as u8;
        n /= 10;
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

    /// A writer into a shared buffer, for a subscriber under test.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The lines `events` log through the text format, fields written by `fields`.
    fn lines<N>(fields: N, ansi: bool, events: fn()) -> String
    where
        N: for<'w> FormatFields<'w> + Send + Sync + 'static,
    {
        let out = Captured::default();
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .without_time()
            .with_ansi(ansi)
            .fmt_fields(fields)
            .with_writer(move || sink.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, events);
        let bytes = out.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[derive(Debug)]
    struct Failed;
    impl std::fmt::Display for Failed {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("failed\x1b[31m")
        }
    }
    impl std::error::Error for Failed {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&std::fmt::Error)
        }
    }

    fn events() {
        let strange = "q\"uote\\ \u{1b}[2J\n\t\u{0}é☃";
        tracing::info!(
            target: "consentry::decision",
            caller = strange,
            zero = 0u64,
            most = u64::MAX,
            purpose = "marketing",
            status = 200u16,
            delta = -3i64,
            ok = true,
            ratio = 0.5f64,
            method = %http::Method::GET,
            list = ?["a", strange],
            big = u128::MAX,
        );
        tracing::info!(route = "contact", "a message {}", strange);
        tracing::warn!(
            error = &Failed as &(dyn std::error::Error + 'static),
            "store down"
        );
        tracing::warn!(error = &Failed as &(dyn std::error::Error + 'static));
        tracing::info!(r#type = "raw", n = 1);
        tracing::info!(log.target = "from.log", n = 2);
        let span = tracing::info_span!("request", id = strange, n = 3u64);
        let _in = span.enter();
        tracing::info!(inside = strange);
        tracing::info!(target: "empty", "");
    }

    #[test]
    fn plain_fields_write_what_the_default_writes() {
        for ansi in [false, true] {
            let plain = lines(PlainFields, ansi, events);
            let default = lines(DefaultFields::new(), ansi, events);
            assert_eq!(plain, default, "ansi {ansi}");
            // Eight events; the default leaves the line feed of a message as it is.
            assert_eq!(plain.lines().count(), 9, "{plain}");
        }
        // The decision line as a reader sees it.
        let plain = lines(PlainFields, false, events);
        assert!(
            plain
                .contains(r#"caller="q\"uote\\ \u{1b}[2J\n\t\0é☃" zero=0 most=18446744073709551615 purpose="marketing" status=200"#),
            "{plain}"
        );
    }

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

#[cfg(test)]
mod clock_tests {
    use tracing_subscriber::fmt::format::Writer;
    use tracing_subscriber::fmt::time::{FormatTime, SystemTime};

    use super::{SecondClock, second_text};

    fn text(timer: &impl FormatTime) -> String {
        let mut s = String::new();
        timer
            .format_time(&mut Writer::new(&mut s))
            .expect("formats");
        s
    }

    #[test]
    fn the_second_is_written_in_utc_as_rfc_3339_writes_it() {
        for (secs, expected) in [
            (0, "1970-01-01T00:00:00"),
            (951_782_400, "2000-02-29T00:00:00"),
            (1_795_550_521, "2026-11-24T20:02:01"),
            (253_402_300_799, "9999-12-31T23:59:59"),
            (-62_167_219_200, "0000-01-01T00:00:00"),
        ] {
            let text = second_text(secs).map(|t| String::from_utf8_lossy(&t).into_owned());
            assert_eq!(text.as_deref(), Some(expected), "{secs}");
        }
        assert_eq!(second_text(253_402_300_800), None, "year 10000");
        assert_eq!(second_text(-62_167_219_201), None, "year -1");
    }

    #[test]
    fn lines_are_stamped_as_the_default_timer_stamps_them() {
        let mut checked = 0;
        for _ in 0..1000 {
            let before = text(&SystemTime);
            let ours = text(&SecondClock);
            let after = text(&SystemTime);
            // Across a second's change the seconds may differ; compare within one second.
            if before.get(..19) != after.get(..19) {
                continue;
            }
            assert_eq!(ours.len(), before.len(), "{ours} beside {before}");
            assert_eq!(ours.get(..20), before.get(..20), "{ours} beside {before}");
            assert!(ours.ends_with('Z'));
            assert!(ours[20..26].bytes().all(|b| b.is_ascii_digit()), "{ours}");
            assert!(before.as_str() <= ours.as_str() && ours.as_str() <= after.as_str());
            checked += 1;
        }
        assert!(checked > 0, "every try straddled a second");
    }
}
