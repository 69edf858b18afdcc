//! The KVM floor: the least any VMM must do on this host to run a guest instruction. One VM,
//! 128 MiB of memory in one memslot, one vCPU in flat 32-bit protected mode, a guest that writes
//! "k\n" to port 0x3f8 and halts; no irqchip, no devices, no threads, no filters. `ember bench`
//! runs it as the `kvm-floor` baseline: its time to workload (the guest's first byte) is KVM's
//! own ioctl time plus a process start, the floor ember's start is measured against. It prints
//! the CLOCK_MONOTONIC time of its first KVM_RUN on stderr (`first_kvm_run_ns=N`), which the
//! bench sets against ember's `first_kvm_run`.
//!
//!     cargo build --release --example kvm_floor

use std::io::Write;

use kvm_ioctls::{Kvm, VcpuExit};

mod common;

const MEM_SIZE: usize = 128 << 20;
const CODE_AT: u64 = 0x1000;
/// mov dx, 0x3f8; mov al, 'k'; out dx, al; mov al, '\n'; out dx, al; hlt
const GUEST: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, 0xb0, b'k', 0xee, 0xb0, b'\n', 0xee, 0xf4,
];

fn main() {
    if let Err(e) = run() {
        eprintln!("kvm_floor: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let kvm = Kvm::new()?;
    let vm = kvm.create_vm()?;
    let mem = common::map_guest_memory(MEM_SIZE)?;
    // SAFETY: the code fits in the mapping at CODE_AT, which nothing else uses yet.
    unsafe {
        std::ptr::copy_nonoverlapping(GUEST.as_ptr(), mem.add(CODE_AT as usize), GUEST.len())
    };
    common::register(&vm, mem, MEM_SIZE)?;
    let mut vcpu = vm.create_vcpu(0)?;
    let mut sregs = vcpu.get_sregs()?;
    for (seg, selector, type_) in [
        (&mut sregs.cs, 0x10, 0xb),
        (&mut sregs.ds, 0x18, 0x3),
        (&mut sregs.es, 0x18, 0x3),
        (&mut sregs.fs, 0x18, 0x3),
        (&mut sregs.gs, 0x18, 0x3),
        (&mut sregs.ss, 0x18, 0x3),
    ] {
        seg.base = 0;
        seg.limit = 0xffff_ffff;
        seg.selector = selector;
        seg.type_ = type_;
        seg.present = 1;
        seg.dpl = 0;
        seg.db = 1;
        seg.s = 1;
        seg.l = 0;
        seg.g = 1;
    }
    sregs.cr0 |= 1;
    vcpu.set_sregs(&sregs)?;
    let mut regs = vcpu.get_regs()?;
    regs.rip = CODE_AT;
    regs.rflags = 2;
    vcpu.set_regs(&regs)?;
    // The first KVM_RUN's CLOCK_MONOTONIC time, on stderr: `ember bench` sets it against
    // ember's own `first_kvm_run` stamp.
    eprintln!("first_kvm_run_ns={}", ember::timing::monotonic_ns());
    let mut out = std::io::stdout().lock();
    for _ in 0..16 {
        match vcpu.run()? {
            VcpuExit::IoOut(0x3f8, data) => {
                out.write_all(data)?;
                out.flush()?;
            }
            VcpuExit::Hlt => return Ok(()),
            other => return Err(format!("unexpected exit {other:?}").into()),
        }
    }
    Err("the guest did not halt".into())
}
