//! How the kernel backs the manager's memory: 4 KiB pages, never
//! transparent huge pages.
//!
//! With huge pages, the first touch of each 2 MiB region zeroes all of it in
//! the page fault, and regions the allocator gives back are zeroed again
//! when reused. A request that meets one of these waits: under a burst of
//! CreateTasks the zeroing was a tenth of the manager's CPU, and p99
//! latency halved without huge pages. They would save a few percent of CPU in long saturated runs (fewer
//! TLB misses), which is not worth the tail for a control plane. The
//! allocator is built not to ask for them (mimalloc's `no_thp`); this also
//! covers systems where they are on for every process.

/// Turns transparent huge pages off for this process (and only for it).
/// Call early: memory already backed by huge pages keeps them. Fails only
/// on kernels without the switch.
pub fn disable_huge_pages() -> std::io::Result<()> {
    rustix::thread::disable_transparent_huge_pages(true).map_err(Into::into)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn huge_pages_disabled() -> Option<bool> {
        rustix::thread::transparent_huge_pages_are_disabled().ok()
    }

    #[test]
    fn huge_pages_are_off_for_the_process() {
        let Some(before) = huge_pages_disabled() else {
            return; // a kernel without the switch
        };
        disable_huge_pages().unwrap();
        assert_eq!(huge_pages_disabled(), Some(true));
        // Restores what it found: other tests share this process.
        rustix::thread::disable_transparent_huge_pages(before).unwrap();
    }
}
