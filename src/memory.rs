//! Guest memory: anonymous mappings (faulted in lazily, so an 8 GiB guest costs only what it
//! touches) laid around the 32-bit MMIO gap, one KVM memslot per region.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::x86_64::layout;

/// Errors creating or registering guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// mmap refused the size.
    #[error("cannot map {mib} MiB of guest memory: {source}; give the guest less")]
    Map {
        /// The size asked.
        mib: u64,
        /// The error.
        source: vm_memory::mmap::FromRangesError,
    },
    /// KVM refused a memslot.
    #[error("KVM refused guest memory slot {slot} ({size} bytes at {addr:#x}): {source}")]
    Slot {
        /// The slot.
        slot: u32,
        /// Guest-physical start.
        addr: u64,
        /// Size in bytes.
        size: u64,
        /// The error.
        source: kvm_ioctls::Error,
    },
}

/// Maps `mem_size` bytes of guest RAM.
pub fn create(mem_size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let ranges: Vec<(GuestAddress, usize)> = layout::ram_ranges(mem_size)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|source| MemoryError::Map {
        mib: mem_size >> 20,
        source,
    })
}

/// One guest RAM region as KVM sees it: where it is in the guest, how big, where it is in
/// ember's address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// Guest-physical start.
    pub guest_addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// Host virtual address of the mapping.
    pub host_addr: u64,
}

/// The regions of `mem`, in order.
pub fn regions(mem: &GuestMemoryMmap) -> Vec<Region> {
    mem.iter()
        .map(|r| Region {
            guest_addr: r.start_addr().raw_value(),
            size: r.len(),
            host_addr: mem
                .get_host_address(r.start_addr())
                .map(|p| p as u64)
                .unwrap_or(0),
        })
        .collect()
}

/// Registers `regions` with KVM, one slot each. The mappings must stay alive for as long as
/// the VM fd exists, and until this returns.
pub fn register(vm: &VmFd, regions: &[Region]) -> Result<(), MemoryError> {
    for (slot, r) in regions.iter().enumerate() {
        let slot = slot as u32;
        let region_desc = kvm_userspace_memory_region {
            slot,
            guest_phys_addr: r.guest_addr,
            memory_size: r.size,
            userspace_addr: r.host_addr,
            flags: 0,
        };
        // SAFETY: the host range is a live mapping owned by the VM's GuestMemoryMmap, which
        // the Vmm keeps alive for as long as the VM fd exists (its fields drop the VM first).
        unsafe { vm.set_user_memory_region(region_desc) }.map_err(|source| MemoryError::Slot {
            slot,
            addr: region_desc.guest_phys_addr,
            size: region_desc.memory_size,
            source,
        })?;
    }
    Ok(())
}

/// Bytes of guest memory resident in host RAM (pages the guest touched), via mincore(2).
pub fn resident_bytes(mem: &GuestMemoryMmap) -> u64 {
    const PAGE: usize = 4096;
    let mut total = 0u64;
    for region in mem.iter() {
        let Ok(addr) = mem.get_host_address(region.start_addr()) else {
            continue;
        };
        let len = region.len() as usize;
        let mut vec = vec![0u8; len.div_ceil(PAGE)];
        // SAFETY: [addr, addr + len) is one live, page-aligned mapping owned by `mem`; `vec`
        // has a byte per page of it.
        let rc = unsafe { libc::mincore(addr.cast(), len, vec.as_mut_ptr()) };
        if rc == 0 {
            total += vec.iter().filter(|&&b| b & 1 != 0).count() as u64 * PAGE as u64;
        }
    }
    total
}

/// Total physical memory of the host in bytes (MemTotal), from sysinfo(2): one system call
/// on the boot path instead of opening and parsing /proc/meminfo.
pub fn host_mem_total() -> Option<u64> {
    // SAFETY: sysinfo is plain data, filled by the call.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: a live sysinfo struct.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return None;
    }
    info.totalram.checked_mul(u64::from(info.mem_unit.max(1)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_mem_total_is_memtotal() {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        let kib: u64 = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(super::host_mem_total(), Some(kib * 1024));
    }

    use super::*;

    #[test]
    fn regions_follow_layout() {
        let mem = create(5 << 30).unwrap();
        let regions: Vec<(u64, u64)> = mem
            .iter()
            .map(|r| (r.start_addr().raw_value(), r.len()))
            .collect();
        assert_eq!(regions, layout::ram_ranges(5 << 30));
    }

    #[test]
    fn resident_counts_touched_pages_only() {
        use vm_memory::Bytes;
        let mem = create(64 << 20).unwrap();
        assert_eq!(resident_bytes(&mem), 0);
        mem.write_obj(1u64, GuestAddress(0x10_0000)).unwrap();
        mem.write_obj(1u64, GuestAddress(0x20_0000)).unwrap();
        let r = resident_bytes(&mem);
        assert!((2 * 4096..=2 * (2 << 20)).contains(&r), "{r}");
    }
}
