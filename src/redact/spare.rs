//! Byte buffers kept for the next body.
//!
//! Every body needs a few buffers of the size of its records and its output: the framer's,
//! the pending records' output, the output itself. Allocated afresh, each grows by doubling,
//! copying what it holds each time; and blocks of that size miss the allocator's per-thread
//! caches. A thread keeps a few emptied buffers instead and hands them out again.
//!
//! What a thread keeps is bounded: [`KEPT`] buffers of at most [`LARGEST`] bytes each. Larger
//! buffers (a body with a huge record) are freed as usual. A buffer handed out is always empty:
//! nothing of one body is ever seen by another.

use std::cell::RefCell;

/// Buffers a thread keeps at most.
pub const KEPT: usize = 8;

/// Capacity above which a buffer is freed rather than kept.
pub const LARGEST: usize = 128 * 1024;

thread_local! {
    static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for at least `capacity` bytes: a kept one if the thread has one.
pub fn take(capacity: usize) -> Vec<u8> {
    let kept = SPARE
        .try_with(|spare| spare.try_borrow_mut().ok().and_then(|mut s| s.pop()))
        .ok()
        .flatten();
    match kept {
        Some(mut buf) => {
            // Kept buffers are emptied when given back; cleared again, to hold whatever happens.
            buf.clear();
            buf.reserve(capacity);
            buf
        }
        None => Vec::with_capacity(capacity),
    }
}

/// Gives a buffer back for another body to use, emptied; freed if it is too large or the
/// thread keeps enough already.
pub fn give(mut buf: Vec<u8>) {
    if buf.capacity() == 0 || buf.capacity() > LARGEST {
        return;
    }
    buf.clear();
    // A thread being torn down keeps nothing: the buffer is freed.
    let _ = SPARE.try_with(|spare| {
        if let Ok(mut spare) = spare.try_borrow_mut()
            && spare.len() < KEPT
        {
            spare.push(buf);
        }
    });
}

/// A buffer that goes back to its thread's spares when the last view of it is dropped, for
/// output handed to the HTTP stack as [`bytes::Bytes`].
struct Returning(Vec<u8>);

impl AsRef<[u8]> for Returning {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        give(std::mem::take(&mut self.0));
    }
}

/// `buf` as `Bytes`, its allocation given back to the spares of the thread that drops the last
/// view of it.
pub fn into_bytes(buf: Vec<u8>) -> bytes::Bytes {
    if buf.is_empty() {
        give(buf);
        return bytes::Bytes::new();
    }
    bytes::Bytes::from_owner(Returning(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Empties this thread's spares (tests share threads).
    fn drain() {
        SPARE.with(|s| s.borrow_mut().clear());
    }

    fn kept() -> usize {
        SPARE.with(|s| s.borrow().len())
    }

    #[test]
    fn a_buffer_given_back_comes_out_again_empty() {
        drain();
        let mut buf = take(100);
        buf.extend_from_slice(b"a subject's data");
        let at = buf.as_ptr();
        give(buf);
        let again = take(10);
        assert!(again.is_empty(), "a kept buffer came out holding {again:?}");
        assert_eq!(
            again.as_ptr(),
            at,
            "the kept buffer was not the one handed out"
        );
        assert!(again.capacity() >= 100);
        drain();
    }

    #[test]
    fn a_kept_buffer_grows_to_the_room_asked_for() {
        drain();
        give(Vec::with_capacity(16));
        let buf = take(4096);
        assert!(buf.capacity() >= 4096);
        drain();
    }

    #[test]
    fn a_thread_keeps_few_buffers_and_no_large_one() {
        drain();
        give(Vec::with_capacity(LARGEST + 1));
        assert_eq!(kept(), 0, "a buffer above the largest kept size was kept");
        give(Vec::new());
        assert_eq!(kept(), 0, "a buffer without an allocation was kept");
        for _ in 0..KEPT + 5 {
            give(Vec::with_capacity(64));
        }
        assert_eq!(kept(), KEPT);
        drain();
    }

    #[test]
    fn bytes_give_their_buffer_back_when_the_last_view_goes() {
        drain();
        let mut buf = take(64);
        buf.extend_from_slice(b"{\"id\":\"1\"}");
        let bytes = into_bytes(buf);
        let view = bytes.slice(1..5);
        drop(bytes);
        assert_eq!(
            kept(),
            0,
            "the buffer came back while a view of it was alive"
        );
        assert_eq!(&view[..], b"\"id\"");
        drop(view);
        assert_eq!(kept(), 1);
        assert!(take(0).is_empty());
        drain();
    }
}
