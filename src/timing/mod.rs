//! The startup timeline: CLOCK_MONOTONIC stamps of every phase, VMM side and guest side.
//!
//! Each phase is recorded once (the first time wins), lock-free, from whichever thread sees it:
//! a `clock_gettime` and an atomic store, so the timeline is always on and costs next to
//! nothing. Only `--timings` reads it, looks up the process start time and prints the report.

pub mod process_start;
pub mod report;

use std::sync::atomic::{AtomicU64, Ordering};

/// A startup phase, in the order a normal boot passes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// The kernel created this process (its own record, not main()).
    ProcessStart,
    /// Arguments validated; the initrd read or generated.
    ConfigParsed,
    /// /dev/kvm opened, API version and capabilities checked.
    KvmReady,
    /// VM and its TSS created.
    VmCreated,
    /// Guest memory mapped and registered with KVM.
    MemoryMapped,
    /// Kernel, initrd, command line and boot parameters in guest memory.
    KernelLoaded,
    /// Every vCPU created and configured.
    VcpusConfigured,
    /// The first KVM_RUN was issued.
    FirstKvmRun,
    /// The guest wrote its first console byte (the kernel is alive).
    FirstConsoleByte,
    /// The guest init wrote the boot timer (userspace reached).
    UserspaceReached,
    /// A `process` started in the guest (its init said so over the channel).
    WorkloadStart,
    /// The guest init reported the workload's status (the workload ended).
    WorkloadEnd,
    /// The guest (or a signal) asked the VM to stop.
    ShutdownRequested,
    /// vCPUs joined, VM and guest memory released.
    VmTornDown,
    /// ember is about to exit.
    ProcessExit,
}

impl Phase {
    /// Every phase, in boot order.
    pub const ALL: [Phase; 15] = [
        Phase::ProcessStart,
        Phase::ConfigParsed,
        Phase::KvmReady,
        Phase::VmCreated,
        Phase::MemoryMapped,
        Phase::KernelLoaded,
        Phase::VcpusConfigured,
        Phase::FirstKvmRun,
        Phase::FirstConsoleByte,
        Phase::UserspaceReached,
        Phase::WorkloadStart,
        Phase::WorkloadEnd,
        Phase::ShutdownRequested,
        Phase::VmTornDown,
        Phase::ProcessExit,
    ];

    /// The phase's name in reports and the JSON schema.
    pub fn name(self) -> &'static str {
        match self {
            Phase::ProcessStart => "process_start",
            Phase::ConfigParsed => "config_parsed",
            Phase::KvmReady => "kvm_ready",
            Phase::VmCreated => "vm_created",
            Phase::MemoryMapped => "memory_mapped",
            Phase::KernelLoaded => "kernel_loaded",
            Phase::VcpusConfigured => "vcpus_configured",
            Phase::FirstKvmRun => "first_kvm_run",
            Phase::FirstConsoleByte => "first_console_byte",
            Phase::UserspaceReached => "userspace_reached",
            Phase::WorkloadStart => "workload_start",
            Phase::WorkloadEnd => "workload_end",
            Phase::ShutdownRequested => "shutdown_requested",
            Phase::VmTornDown => "vm_torn_down",
            Phase::ProcessExit => "process_exit",
        }
    }

    /// Whether the guest, rather than ember, causes this phase.
    pub fn is_guest_side(self) -> bool {
        matches!(
            self,
            Phase::FirstConsoleByte
                | Phase::UserspaceReached
                | Phase::WorkloadStart
                | Phase::WorkloadEnd
        )
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the live timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// The stamps of one ember process, shared by every thread.
#[derive(Debug, Default)]
pub struct Timeline {
    stamps: [AtomicU64; Phase::ALL.len()],
}

impl Timeline {
    /// An empty timeline.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `phase` now unless it already happened; returns `true` the first time.
    pub fn mark(&self, phase: Phase) -> bool {
        if self.stamps[phase as usize].load(Ordering::Relaxed) != 0 {
            return false;
        }
        self.mark_at(phase, monotonic_ns())
    }

    /// Records `phase` at a given CLOCK_MONOTONIC time unless it already happened.
    pub fn mark_at(&self, phase: Phase, ns: u64) -> bool {
        self.stamps[phase as usize]
            .compare_exchange(0, ns.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// When `phase` happened (CLOCK_MONOTONIC ns), if it did.
    pub fn get(&self, phase: Phase) -> Option<u64> {
        match self.stamps[phase as usize].load(Ordering::Relaxed) {
            0 => None,
            ns => Some(ns),
        }
    }

    /// The recorded phases, in time order (ties in boot order).
    pub fn recorded(&self) -> Vec<(Phase, u64)> {
        let mut v: Vec<(Phase, u64)> = Phase::ALL
            .iter()
            .filter_map(|&p| self.get(p).map(|ns| (p, ns)))
            .collect();
        v.sort_by_key(|&(p, ns)| (ns, p));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_mark_wins() {
        let t = Timeline::new();
        assert_eq!(t.get(Phase::UserspaceReached), None);
        assert!(t.mark(Phase::UserspaceReached));
        let first = t.get(Phase::UserspaceReached).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(!t.mark(Phase::UserspaceReached));
        assert_eq!(t.get(Phase::UserspaceReached), Some(first));
    }

    #[test]
    fn recorded_is_in_time_order() {
        let t = Timeline::new();
        t.mark_at(Phase::VmCreated, 30);
        t.mark_at(Phase::ProcessStart, 10);
        t.mark_at(Phase::ConfigParsed, 20);
        t.mark_at(Phase::KvmReady, 20);
        let names: Vec<&str> = t.recorded().iter().map(|(p, _)| p.name()).collect();
        assert_eq!(
            names,
            ["process_start", "config_parsed", "kvm_ready", "vm_created"]
        );
    }

    #[test]
    fn names_are_unique_and_in_order() {
        let mut names: Vec<&str> = Phase::ALL.iter().map(|p| p.name()).collect();
        assert!(Phase::ALL.windows(2).all(|w| w[0] < w[1]));
        names.dedup();
        assert_eq!(names.len(), Phase::ALL.len());
    }

    #[test]
    fn monotonic_advances() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(b >= a && a > 0);
    }
}
