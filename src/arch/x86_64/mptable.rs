//! The Intel MultiProcessor table: how a Linux guest without ACPI finds its vCPUs, the IOAPIC
//! and the ISA interrupt routing.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout;

const MPC_SPEC_REV: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
/// Family 6, the signature Linux expects from a modern CPU.
const CPU_SIGNATURE: u32 = 0x600;
/// FPU and APIC present.
const CPU_FEATURES: u32 = 0x201;
const IRQ_TYPE_INT: u8 = 0;
const IRQ_TYPE_NMI: u8 = 1;
const IRQ_TYPE_EXTINT: u8 = 3;

/// Errors writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// More vCPUs than xAPIC ids (the IOAPIC takes the id after the last vCPU).
    #[error("an MP table describes at most 254 vCPUs, {0} asked")]
    TooManyCpus(u32),
    /// The table does not fit in guest memory.
    #[error("cannot write the MP table to guest memory")]
    Write,
}

/// Builds the MP floating pointer followed by the configuration table, for a table placed at
/// `base`.
pub fn build(base: u64, cpu_count: u32) -> Result<Vec<u8>, MptableError> {
    if cpu_count == 0 || cpu_count > 254 {
        return Err(MptableError::TooManyCpus(cpu_count));
    }
    let ioapic_id = cpu_count as u8;
    let table_addr = base + 16;

    let mut entries = Vec::new();
    let mut entry_count: u16 = 0;
    for cpu in 0..cpu_count {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend_from_slice(&[0, cpu as u8, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        entry_count += 1;
    }
    entries.extend_from_slice(&[1, 0]);
    entries.extend_from_slice(b"ISA   ");
    entry_count += 1;
    entries.extend_from_slice(&[2, ioapic_id, layout::IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(layout::IOAPIC_START as u32).to_le_bytes());
    entry_count += 1;
    for irq in 0..layout::IOAPIC_PINS as u8 {
        entries.extend_from_slice(&[3, IRQ_TYPE_INT, 0, 0, 0, irq, ioapic_id, irq]);
        entry_count += 1;
    }
    // LINT0 would take a PIC's ExtINT (there is none: it stays idle), LINT1 NMIs, on every
    // local APIC.
    entries.extend_from_slice(&[4, IRQ_TYPE_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[4, IRQ_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    entry_count += 2;

    let table_len = 44 + entries.len();
    let mut table = Vec::with_capacity(table_len);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&(table_len as u16).to_le_bytes());
    table.extend_from_slice(&[MPC_SPEC_REV, 0]);
    table.extend_from_slice(b"EMBER   ");
    table.extend_from_slice(b"MICROVM     ");
    table.extend_from_slice(&0u32.to_le_bytes());
    table.extend_from_slice(&0u16.to_le_bytes());
    table.extend_from_slice(&entry_count.to_le_bytes());
    table.extend_from_slice(&(layout::LAPIC_START as u32).to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes());
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut out = Vec::with_capacity(16 + table.len());
    out.extend_from_slice(b"_MP_");
    out.extend_from_slice(&(table_addr as u32).to_le_bytes());
    out.extend_from_slice(&[1, MPC_SPEC_REV, 0, 0, 0, 0, 0, 0]);
    out[10] = checksum(&out);
    out.extend_from_slice(&table);
    Ok(out)
}

/// The byte that makes `bytes` sum to zero.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b)))
}

/// Writes the MP table for `cpu_count` vCPUs at its fixed place in the EBDA.
pub fn write(mem: &GuestMemoryMmap, cpu_count: u32) -> Result<(), MptableError> {
    let bytes = build(layout::MPTABLE_START, cpu_count)?;
    if layout::MPTABLE_START + bytes.len() as u64 > layout::HIMEM_START {
        return Err(MptableError::Write);
    }
    mem.write_slice(&bytes, GuestAddress(layout::MPTABLE_START))
        .map_err(|_| MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b))
    }

    #[test]
    fn checksums_and_counts() {
        let t = build(layout::MPTABLE_START, 4).unwrap();
        assert_eq!(&t[..4], b"_MP_");
        assert_eq!(sum(&t[..16]), 0);
        let table = &t[16..];
        assert_eq!(&table[..4], b"PCMP");
        let len = u16::from_le_bytes([table[4], table[5]]) as usize;
        assert_eq!(len, table.len());
        assert_eq!(sum(table), 0);
        let count = u16::from_le_bytes([table[34], table[35]]);
        assert_eq!(count, 4 + 1 + 1 + 24 + 2);
        // Processor entries: the first is the BSP, APIC ids count up.
        assert_eq!(table[44], 0);
        assert_eq!(table[47], CPU_ENABLED | CPU_BOOTPROCESSOR);
        assert_eq!(table[44 + 20 + 1], 1);
        assert_eq!(table[44 + 20 + 3], CPU_ENABLED);
        let ptr = u32::from_le_bytes([t[4], t[5], t[6], t[7]]) as u64;
        assert_eq!(ptr, layout::MPTABLE_START + 16);
    }

    #[test]
    fn largest_table_fits_below_1m() {
        let t = build(layout::MPTABLE_START, 254).unwrap();
        // Below the ACPI tables, which follow it in the BIOS area.
        assert!(layout::MPTABLE_START + t.len() as u64 <= layout::ACPI_START);
        assert!(build(0, 0).is_err());
        assert!(build(0, 255).is_err());
    }
}
