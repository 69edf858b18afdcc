//! The CPUID each vCPU sees: KVM's supported set (KVM_GET_SUPPORTED_CPUID), normalised per
//! vCPU (APIC id, topology, hypervisor bit) and to the CPU's reset state: the bits that mirror
//! control registers (OSXSAVE, OSPKE) clear, and the XSAVE area sizes those of XCR0 = x87|SSE.
//! KVM recomputes these as the guest changes CR4 and XCR0, from the same supported set, so
//! what the guest reads stays consistent with what KVM allows.
//!
//! There is no feature-hiding template: on the PVM hosts it was meant for, KVM replaces
//! leaves 1, 7 and 0xd after KVM_SET_CPUID2, so hiding features there has to go through the
//! kernel command line instead (config::PVM_CMDLINE_EXTRA, docs/hosts.md).

use kvm_bindings::{CpuId, kvm_cpuid_entry2};

/// Bits needed to hold `n` distinct values (the APIC-id shift for `n` cores).
fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Leaf 1 ECX bit 24: the local APIC timer's TSC-deadline mode.
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
/// Leaf 1 ECX bit 27: OSXSAVE, a copy of CR4.OSXSAVE (clear at reset).
const LEAF1_ECX_OSXSAVE: u32 = 1 << 27;
/// Leaf 7.0 ECX bit 4: OSPKE, a copy of CR4.PKE (clear at reset).
const LEAF7_ECX_OSPKE: u32 = 1 << 4;
/// Size of the legacy XSAVE area plus its header: what XCR0 = x87|SSE (the reset value, with
/// IA32_XSS = 0) needs, in both the standard and the compacted format.
const XSAVE_LEGACY_SIZE: u32 = 512 + 64;

/// Adjusts one CPUID entry for vCPU `cpu_id` of `cpu_count`.
fn normalise_entry(e: &mut kvm_cpuid_entry2, cpu_id: u32, cpu_count: u32) {
    let apic_id = cpu_id;
    match e.function {
        0x1 => {
            // EBX: [31:24] initial APIC id, [23:16] logical processors per package.
            e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | ((cpu_count & 0xff) << 16);
            // ECX bit 31: running under a hypervisor. Bit 24: the TSC-deadline mode of the
            // local APIC timer, which KVM emulates (KVM_CAP_TSC_DEADLINE_TIMER, a required
            // capability) but leaves out of its supported set. With it and kvmclock a Linux
            // guest needs no PIT to calibrate or drive its timer, and there is none.
            e.ecx |= (1 << 31) | LEAF1_ECX_TSC_DEADLINE;
            e.ecx &= !LEAF1_ECX_OSXSAVE;
            // EDX bit 28 (HTT): the package has more than one logical processor.
            if cpu_count > 1 {
                e.edx |= 1 << 28;
            } else {
                e.edx &= !(1 << 28);
            }
        }
        0x4 => {
            // Deterministic cache parameters: one package of `cpu_count` single-thread cores;
            // L1/L2 per core, L3 shared by all.
            let cores_minus_1 = cpu_count.saturating_sub(1).min(63);
            let level = (e.eax >> 5) & 0x7;
            let sharing = if level >= 3 {
                cores_minus_1.min(0xfff)
            } else {
                0
            };
            e.eax = (e.eax & 0x3ff) | (sharing << 14) | (cores_minus_1 << 26);
        }
        0x7 if e.index == 0 => e.ecx &= !LEAF7_ECX_OSPKE,
        // EBX of sub-leaves 0 and 1: the XSAVE area size for the features enabled now (XCR0,
        // and XCR0 | IA32_XSS), which at reset are x87 and SSE only. ECX of sub-leaf 0 (the
        // size for everything KVM allows) stays as KVM reported it.
        0xd if e.index <= 1 => e.ebx = XSAVE_LEGACY_SIZE,
        0xb | 0x1f => {
            // Extended topology: level 0 = SMT (one thread per core), level 1 = core.
            e.edx = apic_id;
            match e.index {
                0 => {
                    e.eax = 0;
                    e.ebx = 1;
                    e.ecx = 1 << 8;
                }
                1 => {
                    e.eax = bits_for(cpu_count);
                    e.ebx = cpu_count;
                    e.ecx = (2 << 8) | 1;
                }
                n => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = n & 0xff;
                }
            }
        }
        _ => {}
    }
}

/// Returns the CPUID for vCPU `cpu_id` of `cpu_count`, derived from KVM's supported set.
pub fn vcpu_cpuid(supported: &CpuId, cpu_id: u32, cpu_count: u32) -> CpuId {
    let mut cpuid = supported.clone();
    for e in cpuid.as_mut_slice() {
        normalise_entry(e, cpu_id, cpu_count);
    }
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0xffff_ffff,
            ecx: 0xffff_ffff,
            edx: 0xffff_ffff,
            ..Default::default()
        }
    }

    #[test]
    fn leaf1_carries_apic_id_count_hypervisor_and_tsc_deadline_bits() {
        let mut e = entry(1, 0);
        e.ecx = 0;
        normalise_entry(&mut e, 5, 8);
        assert_eq!(e.ebx >> 24, 5);
        assert_eq!((e.ebx >> 16) & 0xff, 8);
        assert_eq!(e.ebx & 0xffff, 0xffff);
        assert_ne!(e.ecx & (1 << 31), 0);
        assert_ne!(e.ecx & (1 << 24), 0);
        assert_ne!(e.edx & (1 << 28), 0);

        let mut one = entry(1, 0);
        normalise_entry(&mut one, 0, 1);
        assert_eq!(one.edx & (1 << 28), 0);
    }

    #[test]
    fn control_register_mirrors_and_xsave_sizes_start_at_reset() {
        let mut l1 = entry(1, 0);
        normalise_entry(&mut l1, 0, 1);
        assert_eq!(l1.ecx & LEAF1_ECX_OSXSAVE, 0);
        let mut l7 = entry(7, 0);
        normalise_entry(&mut l7, 0, 1);
        assert_eq!(l7.ecx, !LEAF7_ECX_OSPKE);
        assert_eq!(l7.ebx, 0xffff_ffff);
        for index in [0, 1] {
            let mut d = entry(0xd, index);
            normalise_entry(&mut d, 0, 1);
            assert_eq!((d.eax, d.ebx, d.ecx), (0xffff_ffff, 576, 0xffff_ffff));
        }
        // Per-component sub-leaves (offset and size of each state) are KVM's.
        let mut avx = entry(0xd, 2);
        normalise_entry(&mut avx, 0, 1);
        assert_eq!(avx.ebx, 0xffff_ffff);
    }

    #[test]
    fn topology_leaf_describes_cores() {
        let mut smt = entry(0xb, 0);
        normalise_entry(&mut smt, 3, 6);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 3));
        let mut core = entry(0xb, 1);
        normalise_entry(&mut core, 3, 6);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (3, 6, 0x201, 3));
        let mut end = entry(0xb, 2);
        normalise_entry(&mut end, 3, 6);
        assert_eq!((end.ebx, end.ecx & 0xff00), (0, 0));
    }

    #[test]
    fn cache_leaf_counts_cores() {
        let mut l3 = entry(4, 3);
        l3.eax = 3 << 5 | 0x3;
        normalise_entry(&mut l3, 0, 4);
        assert_eq!(l3.eax >> 26, 3);
        assert_eq!((l3.eax >> 14) & 0xfff, 3);
        let mut l1 = entry(4, 0);
        l1.eax = 1 << 5 | 0x1;
        normalise_entry(&mut l1, 0, 4);
        assert_eq!((l1.eax >> 14) & 0xfff, 0);
    }

    #[test]
    fn bits_for_counts() {
        assert_eq!(bits_for(1), 0);
        assert_eq!(bits_for(2), 1);
        assert_eq!(bits_for(3), 2);
        assert_eq!(bits_for(32), 5);
        assert_eq!(bits_for(33), 6);
    }
}
