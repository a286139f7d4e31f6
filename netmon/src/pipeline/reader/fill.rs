//! How full the kernel → userspace ring buffer is: `producer_pos - consumer_pos`, read
//! from the ring's own metadata pages (`stats.ring_buffer`, `netmon_ring_buffer_*`).
//!
//! Why this way: the kernel keeps both positions in the first two pages of the ring's
//! mapping (consumer page, then producer page; `kernel/bpf/ringbuf.c`), and any
//! process holding the map fd may map them read-only. aya's `RingBuf` maps them too but
//! keeps them private, so this module maps the same two pages once more, read-only.
//! Reading them is two atomic loads: exact (the very difference the kernel compares
//! with the ring's size before it refuses a reservation), free for the programs (no
//! `bpf_ringbuf_query(BPF_RB_AVAIL_DATA)` per event, no extra map), and readable from
//! any thread, so a scrape sees the fill even while the event loop is stalled.
//!
//! The reader samples at every drain step ([`RingFill::sample`]), keeping the peak
//! since the last `stats` line and since the last scrape. Never writes the ring.
use std::{
    os::fd::{AsRawFd, BorrowedFd},
    ptr::NonNull,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

/// Bytes in use out of `size`, from the two positions (they only grow, and may wrap).
pub fn used_bytes(consumer: usize, producer: usize, size: u64) -> u64 {
    (producer.wrapping_sub(consumer) as u64).min(size)
}

/// `used / size`, 0 for an empty (or unknown) ring.
pub fn ratio(used: u64, size: u64) -> f64 {
    if size == 0 {
        0.0
    } else {
        used as f64 / size as f64
    }
}

/// The two metadata pages, mapped read-only.
struct Pages {
    base: NonNull<u8>,
    page: usize,
}

// SAFETY: the mapping is read-only shared memory the kernel updates; it is only read
// through atomics, from any thread.
unsafe impl Send for Pages {}
unsafe impl Sync for Pages {}

impl Pages {
    fn map(fd: BorrowedFd<'_>) -> std::io::Result<Pages> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        // SAFETY: a fresh read-only shared mapping of the ring's consumer and producer
        // pages (offset 0, two pages); the kernel allows read-only mappings of them.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * page,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Pages {
            base: NonNull::new(ptr.cast()).expect("mmap returned a non-null mapping"),
            page,
        })
    }

    fn positions(&self) -> (usize, usize) {
        // SAFETY: both words lie at the start of a page of the live mapping and are
        // naturally aligned; the kernel writes them with release stores.
        unsafe {
            let consumer = &*self.base.as_ptr().cast::<AtomicUsize>();
            let producer = &*self.base.as_ptr().add(self.page).cast::<AtomicUsize>();
            (
                consumer.load(Ordering::Acquire),
                producer.load(Ordering::Acquire),
            )
        }
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), 2 * self.page) };
    }
}

struct Inner {
    pages: Pages,
    size: u64,
    peak_since_stats: AtomicU64,
    peak_since_scrape: AtomicU64,
}

/// A handle on the ring's fill; cheap to clone, shared by the reader and the metrics.
#[derive(Clone)]
pub struct RingFill(Arc<Inner>);

/// One reading: bytes in use now and the ring's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reading {
    pub size: u64,
    pub used: u64,
}

impl RingFill {
    /// Maps the metadata pages of the ring buffer whose map fd is `fd`, of `size` bytes
    /// (its `max_entries`). The mapping stays valid after the fd is closed.
    pub fn new(fd: BorrowedFd<'_>, size: u32) -> std::io::Result<RingFill> {
        Ok(RingFill(Arc::new(Inner {
            pages: Pages::map(fd)?,
            size: u64::from(size),
            peak_since_stats: AtomicU64::new(0),
            peak_since_scrape: AtomicU64::new(0),
        })))
    }

    /// The fill now.
    pub fn now(&self) -> Reading {
        let (consumer, producer) = self.0.pages.positions();
        Reading {
            size: self.0.size,
            used: used_bytes(consumer, producer, self.0.size),
        }
    }

    /// Reads the fill and raises both peaks to it; the reader calls it before each
    /// drain step, when the ring is fullest.
    pub fn sample(&self) -> Reading {
        let r = self.now();
        self.0.peak_since_stats.fetch_max(r.used, Ordering::Relaxed);
        self.0
            .peak_since_scrape
            .fetch_max(r.used, Ordering::Relaxed);
        r
    }

    /// The fill now and the peak since the previous call (for `stats`).
    pub fn take_for_stats(&self) -> (Reading, u64) {
        let r = self.now();
        let peak = self.0.peak_since_stats.swap(0, Ordering::Relaxed);
        (r, peak.max(r.used))
    }

    /// The fill now and the peak since the previous call (for a scrape).
    pub fn take_for_scrape(&self) -> (Reading, u64) {
        let r = self.now();
        let peak = self.0.peak_since_scrape.swap(0, Ordering::Relaxed);
        (r, peak.max(r.used))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn used_bytes_is_the_distance_between_positions_even_across_a_wrap() {
        assert_eq!(used_bytes(0, 0, 4096), 0);
        assert_eq!(used_bytes(100, 356, 4096), 256);
        assert_eq!(used_bytes(usize::MAX - 7, 8, 4096), 16);
        // A position read torn between two loads never claims more than the ring.
        assert_eq!(used_bytes(0, 1 << 20, 4096), 4096);
        assert_eq!(ratio(1024, 4096), 0.25);
        assert_eq!(ratio(5, 0), 0.0);
    }
}
