//! Allocator tuning shared by every shardfs binary.
//!
//! The binaries use mimalloc (declared in each `main.rs`). Bulk transfers
//! allocate and free many MiB-sized buffers per second; by default freed
//! memory goes back to the kernel after 10 ms and comes back as fresh pages
//! that the kernel must zero, which cost a third of a reader's CPU in
//! measurements. [`keep_freed_memory`] keeps it for reuse instead: a process
//! holds on to its peak memory use, which the servers' memory budgets and
//! the clients' read-ahead and put budgets bound.

/// mimalloc's `mi_option_purge_delay` (see its `mimalloc.h`).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Never return freed memory to the kernel. Call first thing in `main`.
pub fn keep_freed_memory() {
    // SAFETY: sets a process-wide mimalloc option; safe at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}
