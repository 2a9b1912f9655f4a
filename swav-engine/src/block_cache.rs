//! A global allocator that keeps large freed blocks for reuse: [`BlockCache`].
//!
//! A training step on the CPU allocates the same large buffers every step (activations,
//! convolution outputs, gradients: tens of MiB each for a ResNet-50 at 224 px). The system
//! allocator hands blocks this large back to the kernel on free (glibc `mmap`s everything above
//! 32 MiB), so the next step faults every page in again and the kernel zeroes each one: on this
//! project's 2-core dev machine that was 21-37 % of a CPU step (`clear_page_erms` in `perf`).
//! [`BlockCache`] keeps freed blocks of at least [`BlockCache::MIN_BLOCK`] bytes, up to a byte
//! budget, and hands one back when a block of the same rounded size and alignment is asked for
//! again; everything else goes straight to [`System`].
//!
//! By default the budget follows the process: the cache holds at most 1.25 times the largest
//! total of large blocks the program has had live at once (its peak), so a loop that repeats its
//! allocations runs on the memory of its first pass (the blocks freed after the peak need the
//! quarter), and the resident set stays below 2.25 times that peak whatever the program does.
//!
//! A binary opts in:
//!
//! ```no_run
//! #[global_allocator]
//! static ALLOC: swav_engine::BlockCache = swav_engine::BlockCache::new();
//! ```
//!
//! The environment variable `SWAV_BLOCK_CACHE_MB` (read once, on the first large free) sets a
//! fixed budget in MiB instead; `0` turns the cache off.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// How many freed blocks the cache can hold at once.
const SLOTS: usize = 512;

/// One kept block: its address, its rounded size, its alignment and when it was kept
/// (`size == 0`: empty slot).
#[derive(Clone, Copy)]
struct Slot {
    ptr: usize,
    size: usize,
    align: usize,
    kept_at: u64,
}

const EMPTY: Slot = Slot {
    ptr: 0,
    size: 0,
    align: 0,
    kept_at: 0,
};

/// The kept blocks, the bytes they hold and a counter that orders their arrival.
struct Shelf {
    slots: [Slot; SLOTS],
    held: usize,
    clock: u64,
}

impl Shelf {
    /// Hands the longest-kept block back to the system allocator; `false` if none is kept.
    fn evict_oldest(&mut self) -> bool {
        let Some(slot) = self
            .slots
            .iter_mut()
            .filter(|s| s.size != 0)
            .min_by_key(|s| s.kept_at)
        else {
            return false;
        };
        // SAFETY: the slot holds a block System allocated with exactly this layout (see
        // `BlockCache::alloc`), owned by nobody since it was freed into the cache.
        unsafe {
            System.dealloc(
                slot.ptr as *mut u8,
                Layout::from_size_align_unchecked(slot.size, slot.align),
            );
        }
        let size = slot.size;
        *slot = EMPTY;
        self.held -= size;
        true
    }
}

/// A [`GlobalAlloc`] over [`System`] that keeps freed blocks of at least
/// [`BlockCache::MIN_BLOCK`] bytes (up to a byte budget) and reuses them for requests of the
/// same rounded size and alignment. See the [module docs](self).
pub struct BlockCache {
    shelf: Mutex<Shelf>,
    /// The fixed byte budget; [`Self::UNSET`] until the environment is read, [`Self::PEAK`]
    /// when the budget follows the peak of live large blocks.
    budget: AtomicUsize,
    /// Bytes of large blocks handed out and not yet freed, and their highest total.
    live: AtomicUsize,
    peak: AtomicUsize,
    hits: AtomicUsize,
    misses: AtomicUsize,
}

/// What a [`BlockCache`] has done so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockCacheStats {
    /// Large requests served from a kept block.
    pub hits: usize,
    /// Large requests that went to the system allocator.
    pub misses: usize,
    /// Bytes held in kept blocks now.
    pub held_bytes: usize,
    /// The byte budget in force now (1.25 times the peak of live large blocks unless fixed).
    pub budget_bytes: usize,
    /// The highest total of large blocks live at once so far.
    pub peak_live_bytes: usize,
}

impl BlockCache {
    /// Requests below this size (1 MiB) go straight to the system allocator.
    pub const MIN_BLOCK: usize = 1 << 20;
    /// Large sizes are rounded up to a multiple of this (64 KiB), so that requests differing by
    /// a few bytes share blocks.
    pub const GRANULE: usize = 64 << 10;
    const UNSET: usize = usize::MAX;
    const PEAK: usize = usize::MAX - 1;
    const LARGEST_FIXED: usize = usize::MAX - 2;

    /// A cache whose budget is fixed by `SWAV_BLOCK_CACHE_MB` when set, else follows the peak
    /// of live large blocks (1.25 times it).
    pub const fn new() -> Self {
        Self::with_budget_bytes(Self::UNSET)
    }

    /// A cache with a fixed byte budget (`0` keeps nothing), ignoring the environment.
    pub const fn with_budget(bytes: usize) -> Self {
        Self::with_budget_bytes(if bytes > Self::LARGEST_FIXED {
            Self::LARGEST_FIXED
        } else {
            bytes
        })
    }

    /// A cache whose budget follows the peak of live large blocks (1.25 times it), ignoring the
    /// environment.
    pub const fn following_peak() -> Self {
        Self::with_budget_bytes(Self::PEAK)
    }

    const fn with_budget_bytes(budget: usize) -> Self {
        Self {
            shelf: Mutex::new(Shelf {
                slots: [EMPTY; SLOTS],
                held: 0,
                clock: 0,
            }),
            budget: AtomicUsize::new(budget),
            live: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            hits: AtomicUsize::new(0),
            misses: AtomicUsize::new(0),
        }
    }

    /// Hits, misses, held bytes and the budget so far.
    pub fn stats(&self) -> BlockCacheStats {
        let held_bytes = self.shelf.lock().map(|s| s.held).unwrap_or(0);
        BlockCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            held_bytes,
            budget_bytes: self.budget(),
            peak_live_bytes: self.peak.load(Ordering::Relaxed),
        }
    }

    /// Hands every kept block back to the system allocator.
    pub fn release(&self) {
        let Ok(mut shelf) = self.shelf.lock() else {
            return;
        };
        while shelf.evict_oldest() {}
    }

    fn budget(&self) -> usize {
        let mut budget = self.budget.load(Ordering::Relaxed);
        if budget == Self::UNSET {
            // Reading the environment allocates; this runs in `dealloc` of a large block, before
            // the shelf is locked, and the small allocations go to System.
            budget = std::env::var("SWAV_BLOCK_CACHE_MB")
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .map(|mb| mb.saturating_mul(1 << 20).min(Self::LARGEST_FIXED))
                .unwrap_or(Self::PEAK);
            self.budget.store(budget, Ordering::Relaxed);
        }
        if budget == Self::PEAK {
            let peak = self.peak.load(Ordering::Relaxed);
            peak.saturating_add(peak / 4)
        } else {
            budget
        }
    }

    fn handed_out(&self, bytes: usize) {
        let live = self.live.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(live, Ordering::Relaxed);
    }

    /// The layout a large request is served with: its size rounded up to [`Self::GRANULE`].
    fn rounded(layout: Layout) -> Option<Layout> {
        if layout.size() < Self::MIN_BLOCK {
            return None;
        }
        let size = layout.size().checked_next_multiple_of(Self::GRANULE)?;
        Layout::from_size_align(size, layout.align()).ok()
    }

    /// A large block for `layout` (served with `rounded`): a kept one if there is one (zeroed
    /// here when asked), else a fresh one from the system.
    ///
    /// # Safety
    /// `rounded` is [`Self::rounded`] of `layout`, a valid non-zero layout.
    unsafe fn alloc_large(&self, layout: Layout, rounded: Layout, zeroed: bool) -> *mut u8 {
        if let Some(ptr) = self.take(rounded) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            self.handed_out(rounded.size());
            if zeroed {
                // SAFETY: the kept block is `rounded.size() >= layout.size()` bytes and ours.
                unsafe { std::ptr::write_bytes(ptr, 0, layout.size()) };
            }
            return ptr;
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        // SAFETY: `rounded` has a non-zero size and a valid alignment; fresh system memory from
        // `alloc_zeroed` comes zeroed.
        let ptr = unsafe {
            if zeroed {
                System.alloc_zeroed(rounded)
            } else {
                System.alloc(rounded)
            }
        };
        if !ptr.is_null() {
            self.handed_out(rounded.size());
        }
        ptr
    }

    /// Takes a kept block of exactly this layout, if there is one.
    fn take(&self, layout: Layout) -> Option<*mut u8> {
        let mut shelf = self.shelf.lock().ok()?;
        let slot = shelf
            .slots
            .iter_mut()
            .find(|s| s.size == layout.size() && s.align == layout.align())?;
        let ptr = slot.ptr as *mut u8;
        *slot = EMPTY;
        shelf.held -= layout.size();
        Some(ptr)
    }

    /// Keeps a freed block, handing the longest-kept ones back to the system when the budget
    /// or the slots are full; `false` if the block itself is larger than the budget.
    fn keep(&self, ptr: *mut u8, layout: Layout) -> bool {
        let budget = self.budget();
        if layout.size() > budget {
            return false;
        }
        let Ok(mut shelf) = self.shelf.lock() else {
            return false;
        };
        while shelf.held + layout.size() > budget && shelf.evict_oldest() {}
        if !shelf.slots.iter().any(|s| s.size == 0) {
            shelf.evict_oldest();
        }
        shelf.clock += 1;
        let kept_at = shelf.clock;
        let Some(slot) = shelf.slots.iter_mut().find(|s| s.size == 0) else {
            return false;
        };
        *slot = Slot {
            ptr: ptr as usize,
            size: layout.size(),
            align: layout.align(),
            kept_at,
        };
        shelf.held += layout.size();
        true
    }
}

impl Default for BlockCache {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: every block handed out is either System's (small requests, passed through unchanged)
// or a System block of the request's rounded layout (size rounded up to GRANULE, same
// alignment), which is at least as large and as aligned as asked; a block is on the shelf only
// while nobody holds it, and leaves it under the lock before it is handed out again.
unsafe impl GlobalAlloc for BlockCache {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match Self::rounded(layout) {
            // SAFETY: the caller's layout is valid and non-zero (GlobalAlloc's contract).
            Some(rounded) => unsafe { self.alloc_large(layout, rounded, false) },
            // SAFETY: forwarded with the caller's layout.
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match Self::rounded(layout) {
            // SAFETY: as in `alloc`.
            Some(rounded) => unsafe { self.alloc_large(layout, rounded, true) },
            // SAFETY: forwarded with the caller's layout.
            None => unsafe { System.alloc_zeroed(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match Self::rounded(layout) {
            Some(rounded) => {
                self.live.fetch_sub(rounded.size(), Ordering::Relaxed);
                if !self.keep(ptr, rounded) {
                    // SAFETY: a large block is always allocated from System with `rounded`.
                    unsafe { System.dealloc(ptr, rounded) };
                }
            }
            // SAFETY: a small block came from System with this very layout.
            None => unsafe { System.dealloc(ptr, layout) },
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new_layout = match Layout::from_size_align(new_size, layout.align()) {
            Ok(l) => l,
            Err(_) => return std::ptr::null_mut(),
        };
        if Self::rounded(layout).is_none() && Self::rounded(new_layout).is_none() {
            // SAFETY: both sizes are small, so the block is System's with `layout`.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: `new_layout` is valid and non-zero (GlobalAlloc's contract for realloc).
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks hold at least min(old, new) bytes and do not overlap; the old
            // one was allocated by `self` with `layout`.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    fn layout(size: usize) -> Layout {
        Layout::from_size_align(size, 64).expect("layout")
    }

    #[test]
    fn a_freed_large_block_is_handed_out_again_for_the_same_size() {
        let cache = BlockCache::with_budget(64 * MIB);
        let l = layout(3 * MIB + 5);
        // SAFETY: every block is written within its size and freed with its layout.
        unsafe {
            let a = cache.alloc(l);
            assert!(!a.is_null());
            a.write_bytes(7, l.size());
            cache.dealloc(a, l);
            assert_eq!(cache.stats().held_bytes, 3 * MIB + BlockCache::GRANULE);
            // A request rounding to the same size gets the same block.
            let l2 = layout(3 * MIB + 100);
            let b = cache.alloc(l2);
            assert_eq!(a, b);
            assert_eq!(cache.stats().held_bytes, 0);
            // A different size does not.
            let c = cache.alloc(layout(2 * MIB));
            assert_ne!(c, b);
            cache.dealloc(b, l2);
            cache.dealloc(c, layout(2 * MIB));
        }
        let s = cache.stats();
        assert_eq!((s.hits, s.misses), (1, 2));
        cache.release();
        assert_eq!(cache.stats().held_bytes, 0);
    }

    #[test]
    fn a_reused_block_asked_for_zeroed_is_zeroed() {
        let cache = BlockCache::with_budget(64 * MIB);
        let l = layout(2 * MIB);
        // SAFETY: as above.
        unsafe {
            let a = cache.alloc(l);
            a.write_bytes(0xAB, l.size());
            cache.dealloc(a, l);
            let b = cache.alloc_zeroed(l);
            assert_eq!(a, b);
            let bytes = std::slice::from_raw_parts(b, l.size());
            assert!(bytes.iter().all(|&x| x == 0));
            cache.dealloc(b, l);
        }
        cache.release();
    }

    #[test]
    fn small_blocks_and_blocks_over_budget_are_not_kept() {
        let cache = BlockCache::with_budget(5 * MIB);
        // SAFETY: as above.
        unsafe {
            let small = layout(MIB / 2);
            let s = cache.alloc(small);
            cache.dealloc(s, small);
            assert_eq!(cache.stats().held_bytes, 0);
            let l = layout(4 * MIB);
            let a = cache.alloc(l);
            let b = cache.alloc(l);
            cache.dealloc(a, l);
            // The second 4 MiB block would exceed the 5 MiB budget: the first goes back.
            cache.dealloc(b, l);
            assert_eq!(cache.stats().held_bytes, 4 * MIB);
            // A block larger than the budget is never kept.
            let huge = layout(6 * MIB);
            let h = cache.alloc(huge);
            cache.dealloc(h, huge);
            assert_eq!(cache.stats().held_bytes, 4 * MIB);
        }
        let off = BlockCache::with_budget(0);
        // SAFETY: as above.
        unsafe {
            let l = layout(2 * MIB);
            let a = off.alloc(l);
            off.dealloc(a, l);
        }
        assert_eq!(off.stats().held_bytes, 0);
        cache.release();
    }

    #[test]
    fn by_default_the_cache_holds_at_most_a_quarter_more_than_the_peak_of_live_blocks() {
        let cache = BlockCache::following_peak();
        let l = layout(2 * MIB);
        // SAFETY: as above.
        unsafe {
            let a = cache.alloc(l);
            let b = cache.alloc(l);
            let c = cache.alloc(layout(4 * MIB));
            assert_eq!(cache.stats().peak_live_bytes, 8 * MIB);
            assert_eq!(cache.stats().budget_bytes, 10 * MIB);
            cache.dealloc(a, l);
            cache.dealloc(b, l);
            cache.dealloc(c, layout(4 * MIB));
            assert_eq!(cache.stats().held_bytes, 8 * MIB);
            // A new size misses; keeping it when it is freed would exceed the 10 MiB budget,
            // so the longest-kept block (the first 2 MiB one) goes back to the system.
            let d = cache.alloc(layout(3 * MIB));
            assert_eq!(cache.stats().peak_live_bytes, 8 * MIB);
            cache.dealloc(d, layout(3 * MIB));
            assert_eq!(cache.stats().held_bytes, 9 * MIB);
            // The 4, 3 and 2 MiB blocks all come from the shelf now.
            let c = cache.alloc(layout(4 * MIB));
            let d = cache.alloc(layout(3 * MIB));
            let a = cache.alloc(l);
            assert_eq!(cache.stats().held_bytes, 0);
            cache.dealloc(a, l);
            cache.dealloc(c, layout(4 * MIB));
            cache.dealloc(d, layout(3 * MIB));
        }
        let s = cache.stats();
        assert_eq!((s.hits, s.misses), (3, 4));
        // 4 + 3 + 2 MiB were live together at the end: the peak, and so the budget, grew.
        assert_eq!(s.peak_live_bytes, 9 * MIB);
        assert_eq!(s.budget_bytes, 9 * MIB + 9 * MIB / 4);
        cache.release();
    }

    #[test]
    fn realloc_keeps_the_contents_across_the_threshold() {
        let cache = BlockCache::with_budget(64 * MIB);
        // SAFETY: as above; realloc gets the block's current layout.
        unsafe {
            let small = layout(1000);
            let p = cache.alloc(small);
            for i in 0..1000 {
                *p.add(i) = (i % 251) as u8;
            }
            let big = cache.realloc(p, small, 3 * MIB);
            let back = cache.realloc(big, layout(3 * MIB), 2 * MIB);
            let shrunk = cache.realloc(back, layout(2 * MIB), 500);
            for i in 0..500 {
                assert_eq!(*shrunk.add(i), (i % 251) as u8);
            }
            cache.dealloc(shrunk, layout(500));
        }
        cache.release();
    }

    #[test]
    fn blocks_move_between_threads() {
        let cache = std::sync::Arc::new(BlockCache::with_budget(256 * MIB));
        let l = layout(2 * MIB);
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let cache = cache.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        // SAFETY: as above.
                        unsafe {
                            let p = cache.alloc(l);
                            p.write_bytes((t * 50 + i) as u8, l.size());
                            assert_eq!(*p.add(l.size() - 1), (t * 50 + i) as u8);
                            cache.dealloc(p, l);
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("thread");
        }
        let s = cache.stats();
        assert_eq!(s.hits + s.misses, 200);
        assert!(s.misses <= 4, "at most one fresh block per thread: {s:?}");
        cache.release();
    }
}
