//! What KVM's in-kernel irqchip costs around it on this host: the `KVM_SET_USER_MEMORY_REGION`
//! ioctl with and without the irqchip (and PIT, TSS) created before it, and the close of a VM
//! (one vCPU, 128 MiB registered) with and without an irqchip. Each case runs on fresh VMs;
//! the figures are min-max over the runs. docs/startup-latency.md quotes them.
//!
//!     cargo run --release --example kvm_irqchip_cost [RUNS]

use std::time::{Duration, Instant};

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VmFd};

const MEM_SIZE: usize = 128 << 20;
const TSS: usize = 0xfffb_d000;

fn main() {
    let runs = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(8);
    if let Err(e) = measure(runs) {
        eprintln!("kvm_irqchip_cost: {e}");
        std::process::exit(1);
    }
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn measure(runs: usize) -> Res<()> {
    let kvm = Kvm::new()?;
    let mem = map()?;
    for (before, tss, irqchip, pit) in [
        ("nothing", false, false, false),
        ("the TSS address", true, false, false),
        ("KVM_CREATE_IRQCHIP", false, true, false),
        ("KVM_CREATE_IRQCHIP, KVM_CREATE_PIT2", false, true, true),
        ("TSS, irqchip, PIT", true, true, true),
    ] {
        let t = times(runs, || {
            let vm = kvm.create_vm()?;
            setup(&vm, tss, irqchip, pit)?;
            let start = Instant::now();
            register(&vm, mem)?;
            Ok(start.elapsed())
        })?;
        println!("memslot after {before}: {t}");
    }
    let t = times(runs, || {
        let vm = kvm.create_vm()?;
        register(&vm, mem)?;
        let start = Instant::now();
        setup(&vm, true, true, true)?;
        Ok(start.elapsed())
    })?;
    println!("TSS, irqchip, PIT after the memslot: {t}");
    for irqchip in [false, true] {
        let t = times(runs, || {
            let vm = kvm.create_vm()?;
            register(&vm, mem)?;
            setup(&vm, false, irqchip, false)?;
            let vcpu = vm.create_vcpu(0)?;
            let start = Instant::now();
            drop(vcpu);
            drop(vm);
            Ok(start.elapsed())
        })?;
        let with = if irqchip { "with" } else { "without" };
        println!("closing a VM {with} an irqchip: {t}");
    }
    Ok(())
}

fn setup(vm: &VmFd, tss: bool, irqchip: bool, pit: bool) -> Res<()> {
    if tss {
        vm.set_tss_address(TSS)?;
    }
    if irqchip {
        vm.create_irq_chip()?;
    }
    if pit {
        vm.create_pit2(kvm_pit_config::default())?;
    }
    Ok(())
}

fn register(vm: &VmFd, mem: u64) -> Res<()> {
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: MEM_SIZE as u64,
        userspace_addr: mem,
    };
    // SAFETY: the mapping is never unmapped while this process runs.
    unsafe { vm.set_user_memory_region(region)? };
    Ok(())
}

/// One anonymous mapping every VM registers; it lives as long as the process.
fn map() -> Res<u64> {
    // SAFETY: a fresh anonymous mapping that nothing else uses.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            MEM_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if mem == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(mem as u64)
}

/// `f` run `runs` times, as "min-max ms (n runs)".
fn times(runs: usize, mut f: impl FnMut() -> Res<Duration>) -> Res<String> {
    let mut v = (0..runs).map(|_| f()).collect::<Res<Vec<_>>>()?;
    v.sort();
    let ms = |d: &Duration| d.as_secs_f64() * 1e3;
    Ok(match (v.first(), v.last()) {
        (Some(lo), Some(hi)) => format!("{:.2}-{:.2} ms ({runs} runs)", ms(lo), ms(hi)),
        _ => "no runs".into(),
    })
}
