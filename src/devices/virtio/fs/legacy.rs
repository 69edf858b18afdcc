//! The vm-memory 0.17 and virtio-queue 0.17 view of a VM that fuse-backend-rs 0.14 works with
//! (ember is on 0.18 of both). The FUSE server reads and writes descriptor chains through its
//! own copies of those crates, so the virtio-fs device serves its queues with them: the same
//! guest pages, mapped once by ember, seen through a second set of types; the queues' state
//! handed over from the transport's at activation. Nothing is copied and nothing is mapped
//! twice.

use vm_memory::GuestMemoryMmap;
use vm_memory_fs as vm17;

use crate::memory;

/// Guest memory as vm-memory 0.17 sees it.
pub type Memory = vm17::GuestMemoryMmap<()>;
/// A split virtqueue as virtio-queue 0.17 sees it.
pub type Queue = virtio_queue_fs::Queue;

/// The view could not be made (an empty or odd memory layout).
#[derive(Debug, thiserror::Error)]
#[error("cannot see guest memory through vm-memory 0.17: {0}")]
pub struct LegacyError(String);

/// `mem`'s regions seen through vm-memory 0.17. The view does not own the pages: it must not
/// outlive `mem` (the device keeps a clone of `mem` beside it).
pub fn memory(mem: &GuestMemoryMmap) -> Result<Memory, LegacyError> {
    let err = |e: &dyn std::fmt::Display| LegacyError(e.to_string());
    let regions = memory::regions(mem)
        .into_iter()
        .map(|r| {
            // SAFETY: [host_addr, host_addr + size) is a live read-write mapping owned by
            // `mem`, which the caller keeps alive for as long as the view; a raw region never
            // unmaps what it was built over.
            let m = unsafe {
                vm17::MmapRegion::<()>::build_raw(
                    r.host_addr as *mut u8,
                    r.size as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_NORESERVE,
                )
            }
            .map_err(|e| err(&e))?;
            vm17::GuestRegionMmap::new(m, vm17::GuestAddress(r.guest_addr))
                .ok_or_else(|| err(&"a region ends past the address space"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Memory::from_regions(regions).map_err(|e| err(&e))
}

/// The queue the driver set up (virtio-queue 0.18's state) as virtio-queue 0.17 serves it.
pub fn queue(q: &virtio_queue::Queue) -> Result<Queue, LegacyError> {
    let s = q.state();
    let state = virtio_queue_fs::QueueState {
        max_size: s.max_size,
        next_avail: s.next_avail,
        next_used: s.next_used,
        event_idx_enabled: s.event_idx_enabled,
        size: s.size,
        ready: s.ready,
        desc_table: s.desc_table,
        avail_ring: s.avail_ring,
        used_ring: s.used_ring,
    };
    Queue::try_from(state).map_err(|e| LegacyError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};
    use vm_memory_fs::{Bytes as _, GuestAddress as GuestAddress17};

    #[test]
    fn both_views_see_the_same_pages() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 1 << 20),
            (GuestAddress(1 << 32), 1 << 20),
        ])
        .unwrap();
        let view = memory(&mem).unwrap();
        mem.write_obj(0xabcd_u32, GuestAddress(0x1000)).unwrap();
        assert_eq!(
            view.read_obj::<u32>(GuestAddress17(0x1000)).unwrap(),
            0xabcd
        );
        view.write_obj(7u8, GuestAddress17((1 << 32) + 5)).unwrap();
        assert_eq!(mem.read_obj::<u8>(GuestAddress((1 << 32) + 5)).unwrap(), 7);
        // Past the end of either region: refused by both.
        assert!(view.read_obj::<u8>(GuestAddress17(2 << 20)).is_err());
        drop(view);
        // The view unmapped nothing.
        assert_eq!(mem.read_obj::<u32>(GuestAddress(0x1000)).unwrap(), 0xabcd);
    }
}
