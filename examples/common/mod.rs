//! What the examples share: guest memory as one anonymous mapping, registered at guest address 0.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;

/// Maps `size` bytes of anonymous memory for a guest; the mapping lives as long as the process.
pub fn map_guest_memory(size: usize) -> std::io::Result<*mut u8> {
    // SAFETY: a fresh anonymous mapping that nothing else uses.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if mem == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    Ok(mem.cast())
}

/// Registers `size` bytes at `mem` (from [`map_guest_memory`]) as memslot 0, at guest address 0.
pub fn register(vm: &VmFd, mem: *mut u8, size: usize) -> Result<(), kvm_ioctls::Error> {
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: size as u64,
        userspace_addr: mem as u64,
    };
    // SAFETY: the mapping is never unmapped while the process runs.
    unsafe { vm.set_user_memory_region(region) }
}
