//! Taking a snapshot of a running VM (at the guest's "ready", `--snapshot-on-ready`) and
//! restoring one into a fresh VM in a new process.
//!
//! Taking it, on the VMM thread: every vCPU is paused (a vCPU that was in a port write
//! completes it first: KVM finishes a pending I/O exit on the next KVM_RUN, before it honours
//! `immediate_exit`), each vCPU's thread reads its own state, then the VM's clock, the IOAPIC
//! and the UART are read, the memory file is written, and last the state file that vouches
//! for it.
//!
//! Restoring it, in this order, each step needing the one before: the snapshot's files are
//! checked (`snapshot::load`); the CPU is checked (every feature the guest was given must be
//! this host's too); the VM is created with the memory file mapped copy-on-write and the UART
//! in its saved state; the IOAPIC takes its registers (and so its routes: an interrupt raised
//! now already goes where the guest pointed it); each vCPU is created and given its state
//! (CPUID first, the events last: `vcpu::state`); the clock last of all, just before the
//! vCPUs run, so that the guest's time moves on by the time it was away (`KVM_CLOCK_REALTIME`).

use std::time::Duration;

use kvm_bindings::{CpuId, KVM_CLOCK_REALTIME, kvm_cpuid_entry2};

use super::{
    Base, Extras, Ram, RequestError, Runtime, VmReply, VmRequest, Vmm, VmmError, attach_host_device,
};
use crate::arch::x86_64::cpuid::vcpu_cpuid;
use crate::devices::manager::{DeviceState, Registrar};
use crate::exit::ExitReason;
use crate::snapshot::{self, Loaded, SnapshotError, VmState};
use crate::sync::lock;
use crate::timing::Phase;
use crate::vcpu::{Vcpu, VcpuState};

/// How long a snapshot waits for every vCPU to pause, and for each to save its state.
const SNAPSHOT_LIMIT: Duration = Duration::from_secs(5);

impl Vmm {
    /// The guest said "ready" (port 0x3f0, 124): with `--snapshot-on-ready`, snapshot the VM,
    /// then stop it or let it go on. Once per run: a guest saying it again is ignored.
    pub(super) fn on_ready(&mut self) {
        let Some(plan) = self.snapshot_on_ready.take() else {
            log::debug!("the guest said ready; no snapshot was asked for");
            return;
        };
        let result = self.take_snapshot(&plan.files);
        if result.is_ok() {
            self.exit.snapshot_written();
        }
        match result {
            Ok(()) if plan.continue_after => {
                log::info!("snapshot written to {}", plan.files.dir.display());
                self.handle().resume();
            }
            Ok(()) => self.exit.request(ExitReason::Snapshotted),
            Err(e) => self.exit.request(ExitReason::SnapshotFailed(e.to_string())),
        }
    }

    /// Does what a front end asked ([`super::VmHandle::ask`]).
    pub(super) fn serve(&mut self, request: VmRequest) -> VmReply {
        match request {
            VmRequest::Pause => {
                if !self.handle().pause(SNAPSHOT_LIMIT) {
                    return Err(RequestError::Failed(format!(
                        "its vCPUs did not all pause within {SNAPSHOT_LIMIT:?}"
                    )));
                }
                self.paused = true;
                Ok(())
            }
            VmRequest::Resume => {
                self.handle().resume();
                self.paused = false;
                Ok(())
            }
            VmRequest::Snapshot(_) if !self.paused => Err(RequestError::BadState(
                "the VM is running: pause it before a snapshot".into(),
            )),
            VmRequest::Snapshot(files) => {
                let r = self.take_snapshot(&files);
                r.map_err(|e| RequestError::Failed(e.to_string()))
            }
        }
    }

    /// Pauses every vCPU and writes the VM into `files`. The vCPUs stay paused.
    fn take_snapshot(&self, files: &snapshot::SnapshotFiles) -> Result<(), SnapshotError> {
        let handle = self.handle();
        if !handle.pause(SNAPSHOT_LIMIT) {
            return Err(SnapshotError::Unsupported(format!(
                "its vCPUs did not all pause within {SNAPSHOT_LIMIT:?}"
            )));
        }
        let mut vcpus = Vec::with_capacity(self.controls.len());
        for c in &self.controls {
            let id = c.id();
            let msrs = self.msr_index.clone();
            let saved = c.serve(SNAPSHOT_LIMIT, move |fd| {
                VcpuState::save(fd, id, &msrs).map_err(|e| e.to_string())
            });
            match saved {
                Some(Ok(state)) => vcpus.push(state),
                Some(Err(what)) => {
                    return Err(SnapshotError::Unsupported(format!("vCPU {id}: {what}")));
                }
                None => {
                    return Err(SnapshotError::Unsupported(format!(
                        "vCPU {id} did not save its state within {SNAPSHOT_LIMIT:?}"
                    )));
                }
            }
        }
        // The devices after the vCPUs: nothing of theirs moves while the vCPUs are paused,
        // as their queues are served on this thread.
        let mut devices = Vec::with_capacity(self.devices.len());
        for a in &self.devices {
            let transport = lock(&a.transport);
            let saved = transport.save().map_err(|why| {
                SnapshotError::Unsupported(format!("{}: {why}", a.place.spec.name()))
            })?;
            if let Some(note) = transport.save_note() {
                log::warn!("{note}");
            }
            devices.push(DeviceState {
                place: a.place.clone(),
                transport: saved,
            });
        }
        let clock = self.vm.get_clock().map_err(|e| {
            SnapshotError::Unsupported(format!("KVM would not give the VM's clock: {e}"))
        })?;
        let state = VmState {
            mem_size: self.mem_size,
            vcpus,
            clock,
            ioapic: lock(&self.ioapic).state(),
            serial: lock(&self.serial).state(),
            devices,
            exec: self.exec.clone(),
        };
        snapshot::write(files, &state, &self.mem)
    }

    /// A VM continued from the snapshot `snap`, ready to run.
    pub fn restore(snap: Loaded, mut runtime: Runtime) -> Result<Self, VmmError> {
        let timeline = runtime.timeline.clone();
        let vm = &snap.vm;
        let count = u32::try_from(vm.vcpus.len()).unwrap_or(u32::MAX);
        let mut base = Base::create(
            count,
            "the snapshot's vCPUs",
            Ram::Snapshot(&snap.memory, vm.mem_size),
            "the snapshot's memory",
            Some(&vm.serial),
            runtime.console_in,
            &mut runtime,
        )?;
        // The devices' host sides, opened again by id from the paths the snapshot names (or
        // those a reattachment gave): their state goes back after the vCPUs' (below).
        let mut registrar = Registrar {
            vm: &base.vm,
            mem: &base.mem,
            mmio: &mut base.mmio,
            events: &mut base.events,
            logs: &base.guest_logs,
        };
        let mut devices = Vec::with_capacity(vm.devices.len());
        for saved in &vm.devices {
            devices.push(attach_host_device(
                &mut registrar,
                &saved.place,
                vm.mem_size,
            )?);
        }
        let supported = base.supported()?;
        lock(&base.ioapic)
            .restore(&vm.ioapic)
            .map_err(|what| SnapshotError::Host {
                path: snap.dir.clone(),
                what,
            })?;
        let mut vcpus = Vec::with_capacity(vm.vcpus.len());
        for saved in &vm.vcpus {
            let template = vcpu_cpuid(&supported, saved.id, count);
            let (vcpu, offered) =
                Vcpu::for_restore(&base.vm, saved.id, &template, &base.guest_logs)?;
            // Before any of the state: KVM refuses parts of another CPU's (its XSAVE layout,
            // say) with a bare EINVAL, where this says why.
            check_cpu(&snap, saved, &offered)?;
            vcpu.set_state(saved)?;
            vcpus.push(vcpu);
        }
        let mut clock = vm.clock;
        // KVM_SET_CLOCK takes only this flag: with it, KVM adds the wall-clock time since the
        // snapshot, so the guest's clocks move on instead of resuming in the past.
        clock.flags &= KVM_CLOCK_REALTIME;
        base.vm
            .set_clock(&clock)
            .map_err(|source| VmmError::VmIoctl {
                what: "set the snapshot's clock",
                source,
            })?;
        // Last, with the vCPUs' LAPICs in place: a restored device may raise its interrupt
        // again at once.
        for (saved, attached) in vm.devices.iter().zip(&devices) {
            lock(&attached.transport)
                .restore(&saved.transport)
                .map_err(|why| VmmError::Device {
                    input: saved.place.input.clone(),
                    reason: format!("its saved state cannot be restored: {why}"),
                })?;
        }
        timeline.mark(Phase::VcpusConfigured);
        let extras = Extras {
            vcpus,
            session: None,
            share_setup: Duration::ZERO,
            timeout: None,
            entry: None,
            mem_size: vm.mem_size,
            devices,
            exec: vm.exec.clone(),
        };
        Ok(Self::assemble(base, extras, runtime))
    }

    /// Stops a restored VM after `after` if it is still running (`--timeout`).
    pub fn set_timeout(&mut self, after: Option<Duration>) {
        self.timeout = after;
    }
}

/// The CPUID leaves whose feature bits a guest may use once it has seen them: (leaf, subleaf).
const FEATURE_LEAVES: &[(u32, u32)] = &[
    (0x1, 0),
    (0x7, 0),
    (0x7, 1),
    (0xd, 0),
    (0xd, 1),
    (0x8000_0001, 0),
    (0x8000_0008, 0),
];

/// Bits of leaf 1 that are the vCPU's or the OS's, not the CPU's: ECX's OSXSAVE (27) and
/// hypervisor (31) bits.
const LEAF1_ECX_NOT_FEATURES: u32 = (1 << 27) | (1 << 31);
/// Leaf 7's ECX bit that is the OS's: OSPKE (4), CR4.PKE as the guest set it (a Linux guest
/// does where the CPU has protection keys).
const LEAF7_ECX_NOT_FEATURES: u32 = 1 << 4;

/// Refuses a snapshot whose vCPU `saved` was given a CPU feature this host's KVM does not
/// offer (`offered`: what it makes of ember's CPUID for this host), or another vendor's CPU:
/// the guest would run on until it used one, then fault.
fn check_cpu(snap: &Loaded, saved: &VcpuState, offered: &CpuId) -> Result<(), SnapshotError> {
    let find = |entries: &[kvm_cpuid_entry2], leaf: u32, sub: u32| {
        entries
            .iter()
            .find(|e| e.function == leaf && (e.index == sub || e.flags & 1 == 0))
            .copied()
    };
    let refuse = |what: String| {
        Err(SnapshotError::Host {
            path: snap.dir.clone(),
            what,
        })
    };
    let vendor = |e: Option<kvm_cpuid_entry2>| e.map(|e| (e.ebx, e.edx, e.ecx));
    if vendor(find(&saved.cpuid, 0, 0)) != vendor(find(offered.as_slice(), 0, 0)) {
        return refuse(
            "the snapshot was taken on another CPU vendor's host: restore it on the kind of host it was taken on"
                .into(),
        );
    }
    for &(leaf, sub) in FEATURE_LEAVES {
        let Some(saved) = find(&saved.cpuid, leaf, sub) else {
            continue;
        };
        let here = find(offered.as_slice(), leaf, sub).unwrap_or_default();
        let regs = [
            ("eax", saved.eax, here.eax),
            ("ebx", saved.ebx, here.ebx),
            ("ecx", saved.ecx, here.ecx),
            ("edx", saved.edx, here.edx),
        ];
        for (name, was, is) in regs {
            // Leaf 1's EAX is the family and model, EBX the APIC id and counts: not features.
            // Leaf 0x8000_0008 gives address sizes in EAX, which must match exactly.
            let (was, is) = match (leaf, name) {
                (0x1, "eax" | "ebx") => continue,
                (0x1, "ecx") => (was & !LEAF1_ECX_NOT_FEATURES, is & !LEAF1_ECX_NOT_FEATURES),
                (0x7, "ecx") if sub == 0 => {
                    (was & !LEAF7_ECX_NOT_FEATURES, is & !LEAF7_ECX_NOT_FEATURES)
                }
                (0xd, "ebx" | "ecx") => continue,
                (0x8000_0008, "eax") if was & 0xff != is & 0xff => {
                    return refuse(format!(
                        "the guest had {}-bit physical addresses, this host gives {}: restore it on the kind of host it was taken on",
                        was & 0xff,
                        is & 0xff
                    ));
                }
                (0x8000_0008, _) => continue,
                _ => (was, is),
            };
            let missing = was & !is;
            if missing != 0 {
                return refuse(format!(
                    "the guest's CPU had features this host's KVM does not offer (CPUID leaf {leaf:#x}.{sub} {name} bits {missing:#010x}): restore it on the kind of host it was taken on"
                ));
            }
        }
    }
    Ok(())
}
