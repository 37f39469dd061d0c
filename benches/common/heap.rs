//! A global allocator for benchmarks that counts live heap bytes and their peak, so that a
//! bench can report the peak above a baseline (`LIVE` before the measured work, `PEAK` reset
//! to it). Shared by the bench binaries through `#[path = "common/heap.rs"] mod heap;`.

use std::alloc::{GlobalAlloc, Layout, System as SystemAlloc};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Counts live heap bytes and their peak, allocating with `A` (the system's allocator, or
/// mimalloc where a bench measures what the `mqlsync` binary does: it runs on mimalloc).
pub struct Counting<A = SystemAlloc>(pub A);

pub static LIVE: AtomicUsize = AtomicUsize::new(0);
/// Whether allocations are counted now. A bench that times work on several threads turns it
/// off for the timed runs: the counters are one cache line that every allocation of every
/// thread writes, which the measured binary does not pay.
pub static COUNTING: AtomicBool = AtomicBool::new(true);
pub static PEAK: AtomicUsize = AtomicUsize::new(0);

/// Starts a measurement: the peak is reset to what is live now, which is returned.
pub fn baseline() -> usize {
    let live = LIVE.load(Ordering::Relaxed);
    PEAK.store(live, Ordering::Relaxed);
    live
}

/// The peak since [`baseline`] returned `start`, above it.
pub fn peak_above(start: usize) -> usize {
    PEAK.load(Ordering::Relaxed).saturating_sub(start)
}

/// Raises the peak to `live` when above it. Read first: the peak rarely moves, and a write
/// on every allocation would bounce its cache line between the threads of a bench.
fn raise_peak(live: usize) {
    if live > PEAK.load(Ordering::Relaxed) {
        PEAK.fetch_max(live, Ordering::Relaxed);
    }
}

unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { self.0.alloc(layout) };
        if !p.is_null() && COUNTING.load(Ordering::Relaxed) {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            raise_peak(live);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { self.0.dealloc(p, layout) };
        if COUNTING.load(Ordering::Relaxed) {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = unsafe { self.0.realloc(p, layout, new_size) };
        if !q.is_null() && COUNTING.load(Ordering::Relaxed) {
            if new_size >= layout.size() {
                let grown = new_size - layout.size();
                let live = LIVE.fetch_add(grown, Ordering::Relaxed) + grown;
                raise_peak(live);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        q
    }
}
