//! Reusable receive buffers. Streaming gigabytes through fresh allocations
//! makes the kernel zero every new page (measured: almost half the CPU of a
//! shard stream went to `clear_page`), so chunk and shard buffers come from
//! a pool, and the `Bytes` handed out give their buffer back to the pool
//! when the last clone is dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Buffers below this size come from the allocator: small ones are cheap.
const POOLED_MIN_BYTES: usize = 1 << 20;
/// Free buffers unused this long are released.
const IDLE_FOR: Duration = Duration::from_secs(10);

/// Free buffers kept for reuse, by size class (a power of two).
pub struct BufferPool {
    free: Mutex<Free>,
    /// Bytes of free buffers kept at most; more are released.
    idle_budget_bytes: usize,
}

#[derive(Default)]
struct Free {
    /// Most recently returned last.
    by_class: HashMap<usize, Vec<(Vec<u8>, Instant)>>,
    bytes: usize,
}

impl Free {
    /// Releases buffers idle for longer than [`IDLE_FOR`].
    fn trim(&mut self) {
        let mut released = 0;
        for buffers in self.by_class.values_mut() {
            // The oldest are first: returned buffers are pushed at the end.
            let stale = buffers.partition_point(|(_, since)| since.elapsed() > IDLE_FOR);
            released += buffers.drain(..stale).map(|(b, _)| b.len()).sum::<usize>();
        }
        self.bytes -= released;
    }
}

impl BufferPool {
    pub fn new(idle_budget_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            free: Mutex::new(Free::default()),
            idle_budget_bytes,
        })
    }

    /// A buffer of `len` bytes whose contents are unspecified (the caller
    /// overwrites all of them).
    pub fn take(self: &Arc<Self>, len: usize) -> PoolBuf {
        if len < POOLED_MIN_BYTES {
            return PoolBuf {
                buf: vec![0; len],
                len,
                pool: None,
            };
        }
        let class = len.next_power_of_two();
        let reused = {
            let mut free = self.free.lock().expect("buffer pool");
            free.trim();
            let buf = free.by_class.get_mut(&class).and_then(Vec::pop);
            if buf.is_some() {
                free.bytes -= class;
            }
            buf.map(|(buf, _)| buf)
        };
        PoolBuf {
            // Zeroed memory straight from the OS costs no memset.
            buf: reused.unwrap_or_else(|| vec![0; class]),
            len,
            pool: Some(self.clone()),
        }
    }

    fn give_back(&self, buf: Vec<u8>) {
        let class = buf.len();
        let mut free = self.free.lock().expect("buffer pool");
        free.trim();
        if free.bytes + class <= self.idle_budget_bytes {
            free.bytes += class;
            free.by_class
                .entry(class)
                .or_default()
                .push((buf, Instant::now()));
        }
    }

    /// Bytes of free buffers held now.
    pub fn idle_bytes(&self) -> usize {
        self.free.lock().expect("buffer pool").bytes
    }
}

/// A buffer from a [`BufferPool`]: `len` usable bytes, returned to the
/// pool when dropped (also after [`PoolBuf::freeze`], when the last `Bytes`
/// clone goes).
pub struct PoolBuf {
    /// Exactly the size class long (or `len` when not pooled).
    buf: Vec<u8>,
    len: usize,
    pool: Option<Arc<BufferPool>>,
}

impl PoolBuf {
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf[..self.len]
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Immutable, cheaply cloned bytes that still return the buffer.
    pub fn freeze(self) -> Bytes {
        if self.pool.is_none() {
            let mut this = self;
            let mut buf = std::mem::take(&mut this.buf);
            buf.truncate(this.len);
            return Bytes::from(buf);
        }
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for PoolBuf {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for PoolBuf {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.give_back(std::mem::take(&mut self.buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_when_the_last_bytes_clone_goes() {
        let pool = BufferPool::new(64 << 20);
        let mut buf = pool.take(3 << 20);
        buf.as_mut_slice().fill(7);
        let ptr = buf.as_ref().as_ptr();
        let bytes = buf.freeze();
        let clone = bytes.slice(10..20);
        assert_eq!(bytes.len(), 3 << 20);
        drop(bytes);
        assert_eq!(pool.idle_bytes(), 0, "a clone still holds it");
        assert_eq!(&clone[..], &[7u8; 10]);
        drop(clone);
        assert_eq!(pool.idle_bytes(), 4 << 20);
        let again = pool.take(4 << 20);
        assert_eq!(again.as_ref().as_ptr(), ptr, "the same memory is reused");
        assert_eq!(pool.idle_bytes(), 0);
    }

    #[test]
    fn small_buffers_and_the_budget() {
        let pool = BufferPool::new(4 << 20);
        let small = pool.take(100).freeze();
        assert_eq!(small.len(), 100);
        drop(small);
        assert_eq!(pool.idle_bytes(), 0);
        let (a, b) = (pool.take(4 << 20), pool.take(4 << 20));
        drop(a);
        drop(b);
        assert_eq!(pool.idle_bytes(), 4 << 20, "only the budget is kept");
    }
}
