//! What KVM's in-kernel irqchip costs around it on this host: the `KVM_SET_USER_MEMORY_REGION`
//! ioctl with and without the irqchip (and PIT, TSS) created before it, the irqchip's own
//! creation, and the close of a VM (one vCPU, 128 MiB registered) with and without an irqchip;
//! each also for a split irqchip (`KVM_CAP_SPLIT_IRQCHIP`: only the LAPICs in KVM, the PIC,
//! IOAPIC and PIT left to the VMM, as Cloud Hypervisor and QEMU's microvm can do), where KVM
//! has it. Each case runs on fresh VMs; the figures are min-max over the runs.
//! docs/startup-latency.md quotes them.
//!
//!     cargo run --release --example kvm_irqchip_cost [RUNS]

use std::time::{Duration, Instant};

use kvm_bindings::{KVM_CAP_SPLIT_IRQCHIP, kvm_enable_cap, kvm_pit_config};
use kvm_ioctls::{Cap, Kvm, VmFd};

mod common;

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
    let mem = common::map_guest_memory(MEM_SIZE)?;
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
            common::register(&vm, mem, MEM_SIZE)?;
            Ok(start.elapsed())
        })?;
        println!("memslot after {before}: {t}");
    }
    let t = times(runs, || {
        let vm = kvm.create_vm()?;
        common::register(&vm, mem, MEM_SIZE)?;
        let start = Instant::now();
        setup(&vm, true, true, true)?;
        Ok(start.elapsed())
    })?;
    println!("TSS, irqchip, PIT after the memslot: {t}");
    let split = kvm.check_extension(Cap::SplitIrqchip);
    if split {
        let t = times(runs, || {
            let vm = kvm.create_vm()?;
            common::register(&vm, mem, MEM_SIZE)?;
            let start = Instant::now();
            split_irqchip(&vm)?;
            Ok(start.elapsed())
        })?;
        println!("a split irqchip after the memslot: {t}");
        let t = times(runs, || {
            let vm = kvm.create_vm()?;
            split_irqchip(&vm)?;
            let start = Instant::now();
            common::register(&vm, mem, MEM_SIZE)?;
            Ok(start.elapsed())
        })?;
        println!("memslot after a split irqchip: {t}");
    } else {
        println!("no split irqchip here (KVM_CAP_SPLIT_IRQCHIP is absent)");
    }
    for (with, irqchip) in [
        ("without an irqchip", Irqchip::None),
        ("with an irqchip", Irqchip::InKernel),
        ("with an irqchip and PIT", Irqchip::InKernelWithPit),
        ("with a split irqchip", Irqchip::Split),
    ] {
        if irqchip == Irqchip::Split && !split {
            continue;
        }
        let t = times(runs, || {
            let vm = kvm.create_vm()?;
            common::register(&vm, mem, MEM_SIZE)?;
            match irqchip {
                Irqchip::None => {}
                Irqchip::InKernel => setup(&vm, false, true, false)?,
                Irqchip::InKernelWithPit => setup(&vm, false, true, true)?,
                Irqchip::Split => split_irqchip(&vm)?,
            }
            let vcpu = vm.create_vcpu(0)?;
            let start = Instant::now();
            drop(vcpu);
            drop(vm);
            Ok(start.elapsed())
        })?;
        println!("closing a VM {with}: {t}");
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Irqchip {
    None,
    InKernel,
    InKernelWithPit,
    Split,
}

/// LAPICs in KVM, and 24 routes for a userspace IOAPIC's pins.
fn split_irqchip(vm: &VmFd) -> Res<()> {
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_SPLIT_IRQCHIP,
        ..Default::default()
    };
    cap.args[0] = 24;
    vm.enable_cap(&cap)?;
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
