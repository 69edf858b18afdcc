//! The CPUID each vCPU sees: KVM's supported set, normalised per vCPU (APIC id, topology,
//! hypervisor bit) and, on PVM hosts, with the features the host cannot emulate hidden.

use kvm_bindings::{CpuId, kvm_cpuid_entry2};

/// How a vCPU's CPUID is shaped beyond the per-vCPU normalisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuTemplate {
    /// What KVM supports, unchanged.
    Host,
    /// Hide the instructions a PVM-based /dev/kvm cannot emulate in guest kernel mode
    /// (see docs/hosts.md). Every feature hidden is one Linux can run without.
    Pvm,
}

/// Leaf 1 ECX bits hidden by the PVM template, with the instruction each one gates.
const PVM_HIDDEN_LEAF1_ECX: &[(u32, &str)] = &[
    (13, "CX16: lock cmpxchg16b in the slab allocator"),
    (19, "SSE4.1"),
    (20, "SSE4.2: crc32"),
    (22, "MOVBE"),
    (23, "POPCNT: hweight"),
    (25, "AES-NI"),
    (26, "XSAVE: xsave/xrstor in FPU set-up"),
    (27, "OSXSAVE"),
    (28, "AVX"),
    (29, "F16C"),
    (30, "RDRAND"),
    (1, "PCLMULQDQ"),
    (9, "SSSE3"),
    (12, "FMA"),
];
/// Leaf 7 subleaf 0 EBX bits hidden by the PVM template.
const PVM_HIDDEN_LEAF7_EBX: &[(u32, &str)] = &[
    (3, "BMI1"),
    (5, "AVX2"),
    (8, "BMI2"),
    (9, "ERMS: rep movsb fast paths"),
    (11, "RTM"),
    (4, "HLE"),
    (16, "AVX-512F"),
    (18, "RDSEED"),
    (19, "ADX"),
    (20, "SMAP: stac/clac"),
    (23, "CLFLUSHOPT"),
    (24, "CLWB"),
    (29, "SHA"),
    (10, "INVPCID"),
    (0, "FSGSBASE"),
];
/// Leaf 7 subleaf 0 ECX bits hidden by the PVM template.
const PVM_HIDDEN_LEAF7_ECX: &[(u32, &str)] = &[
    (1, "AVX512_VBMI"),
    (2, "UMIP"),
    (22, "RDPID"),
    (5, "WAITPKG"),
];
/// Extended leaf 0x80000001 ECX bits hidden by the PVM template.
const PVM_HIDDEN_EXT1_ECX: &[(u32, &str)] = &[(5, "LZCNT/ABM"), (8, "PREFETCHW")];

/// Describes the PVM template, one line per hidden feature, for docs and `ember host`.
pub fn pvm_template_description() -> Vec<String> {
    let mut out = Vec::new();
    for (leaf, bits) in [
        ("CPUID.1:ECX", PVM_HIDDEN_LEAF1_ECX),
        ("CPUID.7.0:EBX", PVM_HIDDEN_LEAF7_EBX),
        ("CPUID.7.0:ECX", PVM_HIDDEN_LEAF7_ECX),
        ("CPUID.80000001h:ECX", PVM_HIDDEN_EXT1_ECX),
    ] {
        for (bit, what) in bits {
            out.push(format!("{leaf}[{bit}] {what}"));
        }
    }
    out
}

fn clear_bits(reg: &mut u32, bits: &[(u32, &str)]) {
    for (bit, _) in bits {
        *reg &= !(1u32 << bit);
    }
}

/// Bits needed to hold `n` distinct values (the APIC-id shift for `n` cores).
fn bits_for(n: u32) -> u32 {
    if n <= 1 { 0 } else { 32 - (n - 1).leading_zeros() }
}

/// Adjusts one CPUID entry for vCPU `cpu_id` of `cpu_count`.
fn normalise_entry(e: &mut kvm_cpuid_entry2, cpu_id: u32, cpu_count: u32, template: CpuTemplate) {
    let apic_id = cpu_id;
    match e.function {
        0x1 => {
            // EBX: [31:24] initial APIC id, [23:16] logical processors per package.
            e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | ((cpu_count & 0xff) << 16);
            // ECX bit 31: running under a hypervisor.
            e.ecx |= 1 << 31;
            // EDX bit 28 (HTT): the package has more than one logical processor.
            if cpu_count > 1 {
                e.edx |= 1 << 28;
            } else {
                e.edx &= !(1 << 28);
            }
            if template == CpuTemplate::Pvm {
                clear_bits(&mut e.ecx, PVM_HIDDEN_LEAF1_ECX);
            }
        }
        0x4 => {
            // Deterministic cache parameters: one package of `cpu_count` single-thread cores;
            // L1/L2 per core, L3 shared by all.
            let cores_minus_1 = cpu_count.saturating_sub(1).min(63);
            let level = (e.eax >> 5) & 0x7;
            let sharing = if level >= 3 { cores_minus_1.min(0xfff) } else { 0 };
            e.eax = (e.eax & 0x3ff) | (sharing << 14) | (cores_minus_1 << 26);
        }
        0x7 if e.index == 0 && template == CpuTemplate::Pvm => {
            clear_bits(&mut e.ebx, PVM_HIDDEN_LEAF7_EBX);
            clear_bits(&mut e.ecx, PVM_HIDDEN_LEAF7_ECX);
        }
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
        0xd if template == CpuTemplate::Pvm => {
            // No XSAVE: no XSAVE state components either.
            e.eax = 0;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        }
        0x8000_0001 if template == CpuTemplate::Pvm => {
            clear_bits(&mut e.ecx, PVM_HIDDEN_EXT1_ECX);
        }
        _ => {}
    }
}

/// Returns the CPUID for vCPU `cpu_id` of `cpu_count`, derived from KVM's supported set.
pub fn vcpu_cpuid(supported: &CpuId, cpu_id: u32, cpu_count: u32, template: CpuTemplate) -> CpuId {
    let mut cpuid = supported.clone();
    for e in cpuid.as_mut_slice() {
        normalise_entry(e, cpu_id, cpu_count, template);
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
    fn leaf1_carries_apic_id_count_and_hypervisor_bit() {
        let mut e = entry(1, 0);
        e.ecx = 0;
        normalise_entry(&mut e, 5, 8, CpuTemplate::Host);
        assert_eq!(e.ebx >> 24, 5);
        assert_eq!((e.ebx >> 16) & 0xff, 8);
        assert_eq!(e.ebx & 0xffff, 0xffff);
        assert_ne!(e.ecx & (1 << 31), 0);
        assert_ne!(e.edx & (1 << 28), 0);

        let mut one = entry(1, 0);
        normalise_entry(&mut one, 0, 1, CpuTemplate::Host);
        assert_eq!(one.edx & (1 << 28), 0);
    }

    #[test]
    fn topology_leaf_describes_cores() {
        let mut smt = entry(0xb, 0);
        normalise_entry(&mut smt, 3, 6, CpuTemplate::Host);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 3));
        let mut core = entry(0xb, 1);
        normalise_entry(&mut core, 3, 6, CpuTemplate::Host);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (3, 6, 0x201, 3));
        let mut end = entry(0xb, 2);
        normalise_entry(&mut end, 3, 6, CpuTemplate::Host);
        assert_eq!((end.ebx, end.ecx & 0xff00), (0, 0));
    }

    #[test]
    fn cache_leaf_counts_cores() {
        let mut l3 = entry(4, 3);
        l3.eax = 3 << 5 | 0x3;
        normalise_entry(&mut l3, 0, 4, CpuTemplate::Host);
        assert_eq!(l3.eax >> 26, 3);
        assert_eq!((l3.eax >> 14) & 0xfff, 3);
        let mut l1 = entry(4, 0);
        l1.eax = 1 << 5 | 0x1;
        normalise_entry(&mut l1, 0, 4, CpuTemplate::Host);
        assert_eq!((l1.eax >> 14) & 0xfff, 0);
    }

    #[test]
    fn pvm_template_hides_cx16_and_xsave_only_on_pvm() {
        let mut host = entry(1, 0);
        normalise_entry(&mut host, 0, 1, CpuTemplate::Host);
        assert_ne!(host.ecx & (1 << 13), 0);
        let mut pvm = entry(1, 0);
        normalise_entry(&mut pvm, 0, 1, CpuTemplate::Pvm);
        assert_eq!(pvm.ecx & (1 << 13), 0);
        assert_eq!(pvm.ecx & (1 << 26), 0);
        assert_ne!(pvm.ecx & (1 << 31), 0);
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
