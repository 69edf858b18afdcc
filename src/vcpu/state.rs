//! A vCPU's state as plain data: what KVM gives back for a paused vCPU, saved into a snapshot
//! and set on a fresh vCPU to continue it. The order of both is KVM's (its API document and
//! what Firecracker and Cloud Hypervisor learned): the MP state is read first (reading it
//! makes KVM process a pending INIT or SIPI), the vCPU events last (they may depend on the
//! registers); on restore the special registers go before the LAPIC (its base is an MSR the
//! special registers carry) and the MSRs before the events.

use kvm_bindings::{
    CpuId, Msrs, kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

/// The busy bit of a TSS descriptor's type (11: a busy 64-bit TSS, 9: an available one).
const TSS_BUSY: u8 = 0x2;

/// What KVM keeps for one vCPU.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    /// The vCPU's id (its APIC id).
    pub id: u32,
    /// The CPUID it was given.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// Running, halted, waiting for INIT-SIPI, ...
    pub mp_state: kvm_mp_state,
    /// General registers.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers, the APIC base, EFER.
    pub sregs: kvm_sregs,
    /// x87, SSE, AVX and the other XSAVE components.
    pub xsave: kvm_xsave,
    /// XCR0.
    pub xcrs: kvm_xcrs,
    /// DR0-DR7.
    pub debugregs: kvm_debugregs,
    /// The local APIC's registers, its timer's among them.
    pub lapic: kvm_lapic_state,
    /// The MSRs KVM lists, with their values (the TSC and kvmclock's among them).
    pub msrs: Vec<kvm_msr_entry>,
    /// Pending exceptions, interrupts, NMIs and SMIs.
    pub events: kvm_vcpu_events,
    /// The TSC frequency, in kHz, the guest calibrated against (0: KVM would not say).
    pub tsc_khz: u32,
}

/// A KVM call that failed, named.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct StateError {
    /// What was being read or written.
    pub what: &'static str,
    /// The error.
    pub source: kvm_ioctls::Error,
}

/// The most CPUID entries a vCPU has (KVM's own limit).
const MAX_CPUID_ENTRIES: usize = kvm_bindings::KVM_MAX_CPUID_ENTRIES;

/// How many MSRs one KVM_GET_MSRS or KVM_SET_MSRS carries.
const MSR_CHUNK: usize = 64;

fn err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> StateError {
    move |source| StateError { what, source }
}

impl VcpuState {
    /// Reads the state of a vCPU that is not running (its thread paused). `msr_index` is the
    /// list of MSRs to save (KVM_GET_MSR_INDEX_LIST); those KVM refuses to read for this vCPU
    /// are left out.
    pub fn save(fd: &VcpuFd, id: u32, msr_index: &[u32]) -> Result<Self, StateError> {
        let mp_state = fd.get_mp_state().map_err(err("get the MP state"))?;
        let regs = fd.get_regs().map_err(err("get the registers"))?;
        let sregs = fd.get_sregs().map_err(err("get the special registers"))?;
        let xsave = fd.get_xsave().map_err(err("get the XSAVE state"))?;
        let xcrs = fd.get_xcrs().map_err(err("get the XCRs"))?;
        let debugregs = fd
            .get_debug_regs()
            .map_err(err("get the debug registers"))?;
        let lapic = fd.get_lapic().map_err(err("get the LAPIC"))?;
        let tsc_khz = fd.get_tsc_khz().unwrap_or(0);
        let msrs = read_msrs(fd, msr_index)?;
        let cpuid = fd
            .get_cpuid2(MAX_CPUID_ENTRIES)
            .map_err(err("get the CPUID"))?
            .as_slice()
            .to_vec();
        let events = fd.get_vcpu_events().map_err(err("get the vCPU events"))?;
        Ok(Self {
            id,
            cpuid,
            mp_state,
            regs,
            sregs,
            xsave,
            xcrs,
            debugregs,
            lapic,
            msrs,
            events,
            tsc_khz,
        })
    }

    /// Whether the vCPU was an AMD one (CPUID leaf 0: "AuthenticAMD").
    fn amd(&self) -> bool {
        self.cpuid
            .iter()
            .find(|e| e.function == 0)
            .is_some_and(|e| (e.ebx, e.edx, e.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163))
    }

    /// Sets this state on a freshly created vCPU, before it first runs.
    pub fn restore(&self, fd: &VcpuFd) -> Result<(), StateError> {
        let cpuid = CpuId::from_entries(&self.cpuid).map_err(|_| StateError {
            what: "set the CPUID (too many entries)",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        fd.set_cpuid2(&cpuid).map_err(err("set the CPUID"))?;
        if self.tsc_khz != 0 && fd.get_tsc_khz().is_ok_and(|k| k != self.tsc_khz) {
            // Without TSC scaling the guest's clocks would run at this host's rate, not the
            // one it calibrated: refused by KVM, said by the caller.
            fd.set_tsc_khz(self.tsc_khz)
                .map_err(err("set the TSC frequency the snapshot's guest calibrated"))?;
        }
        fd.set_mp_state(self.mp_state)
            .map_err(err("set the MP state"))?;
        fd.set_regs(&self.regs).map_err(err("set the registers"))?;
        let mut sregs = self.sregs;
        if self.amd() {
            // KVM on AMD reports the task register busy whatever the VMCB holds (its
            // svm_get_segment sets the bit); the VMCB itself keeps what LTR cached, an
            // available TSS. Given back as that: QEMU's SVM emulation (the hardware tier)
            // refuses a user-mode port access through a busy TSS, which kills a restored
            // Linux guest's init at its first status write.
            sregs.tr.type_ &= !TSS_BUSY;
        }
        fd.set_sregs(&sregs)
            .map_err(err("set the special registers"))?;
        // SAFETY: a kvm_xsave is KVM's legacy 4 KiB area, which is what get_xsave read and
        // what set_xsave passes; no larger (XSAVE2) buffer is involved.
        unsafe { fd.set_xsave(&self.xsave) }.map_err(err("set the XSAVE state"))?;
        fd.set_xcrs(&self.xcrs).map_err(err("set the XCRs"))?;
        fd.set_debug_regs(&self.debugregs)
            .map_err(err("set the debug registers"))?;
        fd.set_lapic(&self.lapic).map_err(err("set the LAPIC"))?;
        for chunk in self.msrs.chunks(MSR_CHUNK) {
            let msrs = Msrs::from_entries(chunk).map_err(|_| StateError {
                what: "set the MSRs (list too long)",
                source: kvm_ioctls::Error::new(libc::E2BIG),
            })?;
            let set = fd.set_msrs(&msrs).map_err(err("set the MSRs"))?;
            if set != chunk.len() {
                let index = chunk.get(set).map(|m| m.index).unwrap_or(0);
                log::warn!("vCPU {}: KVM refused MSR {index:#x} on restore", self.id);
                return Err(StateError {
                    what: "set the MSRs (one refused: the host's KVM differs)",
                    source: kvm_ioctls::Error::new(libc::EINVAL),
                });
            }
        }
        fd.set_vcpu_events(&self.events)
            .map_err(err("set the vCPU events"))?;
        Ok(())
    }
}

/// Reads every MSR in `index` that KVM will read for this vCPU. KVM_GET_MSRS stops at the
/// first MSR it refuses and says how many it read: that one is skipped and the rest read on.
fn read_msrs(fd: &VcpuFd, index: &[u32]) -> Result<Vec<kvm_msr_entry>, StateError> {
    let mut out = Vec::with_capacity(index.len());
    let mut pos = 0;
    while pos < index.len() {
        let take = (index.len() - pos).min(MSR_CHUNK);
        let entries: Vec<kvm_msr_entry> = index[pos..pos + take]
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| StateError {
            what: "get the MSRs (list too long)",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        let read = fd
            .get_msrs(&mut msrs)
            .map_err(err("get the MSRs"))?
            .min(take);
        out.extend_from_slice(&msrs.as_slice()[..read]);
        pos += read;
        if read < take {
            // The one at `pos` was refused.
            pos += 1;
        }
    }
    Ok(out)
}
