//! ACPI tables (acpi_tables crate): how a stock kernel built with ACPI, which may have no MP
//! table support at all (Debian's cloud kernel), finds its vCPUs and IOAPIC (MADT), its devices
//! and their interrupts (DSDT), and how it powers off or resets the VM (a hardware-reduced
//! FADT whose sleep-control and reset registers are ember's `devices::power`, and `\_S5`).
//!
//! On a hardware-reduced platform Linux sets up no legacy PIC and no ISA interrupts of its own,
//! so a device the DSDT does not describe gets no interrupt: the serial console's writes then
//! fail with EIO. Every device with an interrupt is therefore in the DSDT.
//!
//! The tables sit in the BIOS area below 1 MiB (reserved in the e820 map), the RSDP first so
//! that a kernel that scans for it finds it too; the boot protocols also hand its address over.

use acpi_tables::Aml;
use acpi_tables::aml::{
    Device, EISAName, IO, Interrupt, Memory32Fixed, Name, Package, ResourceTemplate,
};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, MADT, ProcessorLocalApic,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout;

const OEM_ID: [u8; 6] = *b"EMBER ";
const OEM_TABLE_ID: [u8; 8] = *b"MICROVM ";
const OEM_REVISION: u32 = 1;
/// FADT IA-PC boot architecture flags: no VGA, no MSI, no CMOS RTC. The i8042 flag stays off
/// so that a kernel does not probe a keyboard; `reboot=k` still pulses its reset line.
const IAPC_NO_VGA: u16 = 1 << 2;
const IAPC_NO_MSI: u16 = 1 << 3;
const IAPC_NO_CMOS_RTC: u16 = 1 << 5;
/// ACPI sleep state S5 (soft off), the only one ember offers.
pub const SLEEP_TYPE_S5: u8 = 5;

/// A device the DSDT describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcpiDevice {
    /// A 16550-compatible UART (PNP0501): its I/O ports and interrupt line.
    Serial {
        /// First I/O port.
        port: u16,
        /// Interrupt line (GSI).
        irq: u32,
    },
    /// A virtio-mmio device (LNRO0005, which Linux's virtio_mmio driver matches): its register
    /// window and interrupt line.
    VirtioMmio {
        /// Guest-physical address of the window (below 4 GiB).
        addr: u64,
        /// The window's size.
        len: u64,
        /// Interrupt line (GSI).
        irq: u32,
    },
}

impl AcpiDevice {
    /// The device's AML, named `name` (four characters) under `\_SB_`.
    fn aml(&self, name: &str) -> Vec<u8> {
        match *self {
            AcpiDevice::Serial { port, irq } => bytes_of(&Device::new(
                format!("_SB_.{name}").as_str().into(),
                vec![
                    &Name::new("_HID".into(), &EISAName::new("PNP0501")),
                    &Name::new("_UID".into(), &0u8),
                    &Name::new(
                        "_CRS".into(),
                        &ResourceTemplate::new(vec![
                            &IO::new(port, port, 1, 8),
                            &Interrupt::new(true, true, false, false, irq),
                        ]),
                    ),
                ],
            )),
            AcpiDevice::VirtioMmio { addr, len, irq } => bytes_of(&Device::new(
                format!("_SB_.{name}").as_str().into(),
                vec![
                    &Name::new("_HID".into(), &"LNRO0005"),
                    &Name::new("_UID".into(), &(irq as u8)),
                    &Name::new(
                        "_CRS".into(),
                        &ResourceTemplate::new(vec![
                            &Memory32Fixed::new(true, addr as u32, len as u32),
                            &Interrupt::new(true, true, false, false, irq),
                        ]),
                    ),
                ],
            )),
        }
    }
}

/// Errors writing the tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// More vCPUs than 8-bit APIC ids (the IOAPIC takes the id after the last vCPU).
    #[error("the ACPI MADT describes at most 254 vCPUs, {0} asked")]
    TooManyCpus(u32),
    /// The tables do not fit in their area below 1 MiB.
    #[error("the ACPI tables ({0} bytes) do not fit below 1 MiB")]
    TooBig(u64),
}

/// One byte-wide I/O register, as a generic address.
fn io_register(port: u64) -> GAS {
    GAS::new(AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, port)
}

fn bytes_of(table: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    table.to_aml_bytes(&mut v);
    v
}

/// The tables for `cpu_count` vCPUs and `devices`, laid out from `base`: (guest address,
/// bytes) each, RSDP first.
pub fn build(
    base: u64,
    cpu_count: u32,
    devices: &[AcpiDevice],
) -> Result<Vec<(u64, Vec<u8>)>, AcpiError> {
    if cpu_count == 0 || cpu_count > 254 {
        return Err(AcpiError::TooManyCpus(cpu_count));
    }
    // DSDT: the devices, and \_S5_, which makes a kernel offer power-off through the sleep
    // register.
    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for (i, device) in devices.iter().enumerate() {
        dsdt.append_slice(&device.aml(&format!("DV{i:02X}")));
    }
    dsdt.append_slice(&bytes_of(&Name::new(
        "_S5_".into(),
        &Package::new(vec![&SLEEP_TYPE_S5]),
    )));
    let dsdt = dsdt.as_slice().to_vec();

    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(layout::LAPIC_START as u32),
    );
    for cpu in 0..cpu_count as u8 {
        madt.add_structure(ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(cpu_count as u8, layout::IOAPIC_START as u32, 0));
    // The MADT's flags word stays zero: no PCAT_COMPAT, as there are no 8259 PICs.
    let madt = bytes_of(&madt);

    // Addresses in order: RSDP, XSDT (three entries), FADT, DSDT, MADT, each 16-aligned.
    let align = |a: u64| a.next_multiple_of(16);
    let xsdt_addr = align(base + Rsdp::len() as u64);
    let fadt_addr = align(xsdt_addr + 36 + 3 * 8);
    let dsdt_addr = align(fadt_addr + acpi_tables::fadt::FADT::len() as u64);
    let madt_addr = align(dsdt_addr + dsdt.len() as u64);
    let end = madt_addr + madt.len() as u64;
    if end > layout::ACPI_END {
        return Err(AcpiError::TooBig(end - base));
    }

    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.iapc_boot_arch = (IAPC_NO_VGA | IAPC_NO_MSI | IAPC_NO_CMOS_RTC).into();
    fadt.reset_reg = io_register(layout::POWER_RESET_PORT);
    fadt.reset_value = layout::POWER_RESET_VALUE;
    fadt.sleep_control_reg = io_register(layout::POWER_SLEEP_PORT);
    fadt.sleep_status_reg = io_register(layout::POWER_SLEEP_PORT);
    let fadt = bytes_of(&fadt.finalize());

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for addr in [fadt_addr, madt_addr] {
        xsdt.add_entry(addr);
    }
    let xsdt = bytes_of(&xsdt);
    let rsdp = bytes_of(&Rsdp::new(OEM_ID, xsdt_addr));
    Ok(vec![
        (base, rsdp),
        (xsdt_addr, xsdt),
        (fadt_addr, fadt),
        (dsdt_addr, dsdt),
        (madt_addr, madt),
    ])
}

/// Writes the tables into guest memory; returns the RSDP's address for the boot protocol.
pub fn write(
    mem: &GuestMemoryMmap,
    cpu_count: u32,
    devices: &[AcpiDevice],
) -> Result<u64, AcpiError> {
    let tables = build(layout::ACPI_START, cpu_count, devices)?;
    for (addr, bytes) in &tables {
        mem.write_slice(bytes, GuestAddress(*addr))
            .map_err(|_| AcpiError::TooBig(bytes.len() as u64))?;
    }
    Ok(layout::ACPI_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sums_to_zero(b: &[u8]) -> bool {
        b.iter().fold(0u8, |a, &x| a.wrapping_add(x)) == 0
    }

    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }

    #[test]
    fn tables_link_up_and_check_out() {
        let com1 = AcpiDevice::Serial {
            port: 0x3f8,
            irq: 4,
        };
        let tables = build(layout::ACPI_START, 4, &[com1]).unwrap();
        let find = |sig: &[u8]| {
            tables
                .iter()
                .find(|(_, b)| &b[..sig.len()] == sig)
                .unwrap_or_else(|| panic!("{sig:?} missing"))
        };
        let (rsdp_addr, rsdp) = find(b"RSD PTR ");
        assert_eq!(*rsdp_addr, layout::ACPI_START);
        assert!(sums_to_zero(&rsdp[..20]) && sums_to_zero(rsdp));
        let (xsdt_addr, xsdt) = find(b"XSDT");
        assert_eq!(u64_at(rsdp, 24), *xsdt_addr);
        let (fadt_addr, fadt) = find(b"FACP");
        let (madt_addr, madt) = find(b"APIC");
        let (dsdt_addr, dsdt) = find(b"DSDT");
        assert_eq!(u64_at(xsdt, 36), *fadt_addr);
        assert_eq!(u64_at(xsdt, 44), *madt_addr);
        // FADT: X_DSDT at offset 140, hardware-reduced, the power registers.
        assert_eq!(u64_at(fadt, 140), *dsdt_addr);
        assert_ne!(u32_at(fadt, 112) & (1 << 20), 0);
        assert_eq!(u64_at(fadt, 116 + 4), layout::POWER_RESET_PORT);
        assert_eq!(fadt[128], layout::POWER_RESET_VALUE);
        assert_eq!(u64_at(fadt, 244 + 4), layout::POWER_SLEEP_PORT);
        // MADT: the LAPIC address, no PC-AT flag (no 8259s), four enabled CPUs, the IOAPIC.
        assert_eq!(u32_at(madt, 36), layout::LAPIC_START as u32);
        assert_eq!(u32_at(madt, 40), 0);
        for cpu in 0..4usize {
            let e = &madt[44 + cpu * 8..][..8];
            assert_eq!(
                (e[0], e[1], e[2], e[3], u32_at(e, 4)),
                (0, 8, cpu as u8, cpu as u8, 1)
            );
        }
        let io = &madt[44 + 32..][..12];
        assert_eq!((io[0], io[1], io[2]), (1, 12, 4));
        assert_eq!(u32_at(io, 4), layout::IOAPIC_START as u32);
        for (_, t) in tables.iter().skip(1) {
            assert_eq!(u32_at(t, 4) as usize, t.len());
            assert!(sums_to_zero(t), "{:?}", &t[..4]);
        }
        // DSDT: the UART (Device(\_SB.DV00), PNP0501 compressed to 41 d0 05 01, its ports and
        // IRQ 4 in an extended interrupt descriptor), then Name(_S5_, Package(1) {5}).
        let has = |needle: &[u8]| dsdt.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"DV00") && has(b"_HID") && has(&[0x41, 0xd0, 0x05, 0x01]));
        assert!(has(&[0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08]));
        assert!(has(&[0x89, 0x06, 0x00, 0x03, 0x01, 0x04, 0x00, 0x00, 0x00]));
        assert!(has(b"_S5_"));
        let virtio = AcpiDevice::VirtioMmio {
            addr: 0xd000_0000,
            len: 0x1000,
            irq: 5,
        };
        let tables = build(layout::ACPI_START, 1, &[com1, virtio]).unwrap();
        let dsdt = &tables[3].1;
        let has = |needle: &[u8]| dsdt.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"DV01") && has(b"LNRO0005\0"));
        // Memory32Fixed: read-write, base, length.
        assert!(has(&[
            0x86, 0x09, 0x00, 0x01, 0x00, 0x00, 0x00, 0xd0, 0x00, 0x10, 0x00, 0x00
        ]));
        assert!(sums_to_zero(dsdt));
    }

    #[test]
    fn cpu_counts() {
        assert!(build(layout::ACPI_START, 0, &[]).is_err());
        assert!(build(layout::ACPI_START, 255, &[]).is_err());
        let tables = build(layout::ACPI_START, 254, &[]).unwrap();
        let (addr, last) = tables.last().unwrap();
        assert!(addr + last.len() as u64 <= layout::ACPI_END);
    }
}
