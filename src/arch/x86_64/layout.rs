//! Every guest-physical address ember uses, in one place.
//!
//! Low memory follows the PC conventions Linux expects (EBDA below 640 KiB, BIOS area up to
//! 1 MiB); the 32-bit MMIO gap sits below 4 GiB so that the IOAPIC, the LAPIC and ember's own
//! MMIO devices have somewhere to live when the guest has more than 3 GiB of RAM.

/// The boot GDT (five 8-byte descriptors).
pub const BOOT_GDT_START: u64 = 0x500;
/// The boot IDT: empty, the guest installs its own before enabling interrupts.
pub const BOOT_IDT_START: u64 = 0x540;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH memory map, right after the start info.
pub const PVH_MEMMAP_START: u64 = 0x6040;
/// Most PVH memory-map entries that fit before the zero page.
pub const PVH_MEMMAP_MAX_ENTRIES: usize = ((ZERO_PAGE_START - PVH_MEMMAP_START) / 24) as usize;
/// Linux boot protocol `boot_params` (the "zero page").
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the 64-bit boot protocol (grows down, below the page tables).
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity-mapping page tables: PML4, then PDPT, then one page directory per GiB.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPT_START: u64 = 0xa000;
/// First page directory (2 MiB pages).
pub const PD_START: u64 = 0xb000;
/// Most page directories (GiB of identity map) that fit below the command line.
pub const PD_MAX: u64 = 64;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x6_0000;
/// Largest command line, NUL included: the x86 kernel's COMMAND_LINE_SIZE.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Extended BIOS data area: reserved in the e820 map; the MP table lives here.
pub const EBDA_START: u64 = 0x9_fc00;
/// Start of the MP floating pointer and configuration table.
pub const MPTABLE_START: u64 = EBDA_START;
/// ACPI tables, RSDP first: in the BIOS area, where a kernel scanning for the RSDP looks.
pub const ACPI_START: u64 = 0xe_0000;
/// End of the ACPI table area.
pub const ACPI_END: u64 = HIMEM_START;
/// Start of high memory: kernels are loaded at or above it.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap: no RAM between here and 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Firecracker's boot-timer MMIO byte: the first address of the gap.
pub const BOOT_TIMER_MMIO: u64 = MMIO_GAP_START;
/// I/O port of ember's ACPI sleep-control (and sleep-status) register (FADT).
pub const POWER_SLEEP_PORT: u64 = 0x600;
/// I/O port of ember's ACPI reset register (FADT).
pub const POWER_RESET_PORT: u64 = 0x601;
/// The value the FADT tells the kernel to write to the reset register.
pub const POWER_RESET_VALUE: u8 = 1;
/// The three pages KVM needs for the TSS on Intel hosts (KVM_SET_TSS_ADDR): at the top of the
/// MMIO gap, above the local APIC, where QEMU and Firecracker put them too.
pub const KVM_TSS_START: u64 = 0xfffb_d000;
/// Where virtio-mmio devices' register windows go (4 KiB each), inside the MMIO gap.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// The size of that area: room for 4096 devices.
pub const VIRTIO_MMIO_SIZE: u64 = 0x0100_0000;
/// The interrupt lines (IOAPIC pins, GSIs) ember hands to devices: 4 is COM1's, 0-3 are the
/// legacy ISA ones (timer, keyboard, cascade, COM2), left free; the IOAPIC has 24 pins.
pub const DEVICE_IRQ_FIRST: u32 = 5;
/// The last of them.
pub const DEVICE_IRQ_LAST: u32 = 23;
/// The IOAPIC's MMIO base (ember's own IOAPIC, `devices::ioapic`).
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// The IOAPIC's pins: GSIs 0-23.
pub const IOAPIC_PINS: usize = 24;
/// The IOAPIC's version: 0x20, the first with an EOI register.
pub const IOAPIC_VERSION: u8 = 0x20;
/// The local APIC's MMIO base.
pub const LAPIC_START: u64 = 0xfee0_0000;

// The boot structures must not overlap; checked when ember compiles.
const _: () = assert!(BOOT_IDT_START >= BOOT_GDT_START + 5 * 8);
const _: () = assert!(PVH_MEMMAP_START >= PVH_INFO_START + 0x38);
const _: () = assert!(PD_START + PD_MAX * 0x1000 <= CMDLINE_START);
const _: () = assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
const _: () = assert!(BOOT_STACK_POINTER < PML4_START);
const _: () = assert!(ACPI_START > MPTABLE_START && ACPI_END <= HIMEM_START);
const _: () = assert!(KVM_TSS_START >= LAPIC_START + 0x1000);
const _: () = assert!(VIRTIO_MMIO_START > BOOT_TIMER_MMIO);
const _: () = assert!(VIRTIO_MMIO_START + VIRTIO_MMIO_SIZE <= IOAPIC_START);
const _: () = assert!(KVM_TSS_START + 3 * 0x1000 <= MMIO_GAP_END);

/// The RAM ranges (start, length) for `mem_size` bytes of guest memory, split around the
/// MMIO gap.
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_size - MMIO_GAP_START),
        ]
    }
}

/// One past the highest guest-physical RAM address for `mem_size` bytes of memory.
pub fn ram_end(mem_size: u64) -> u64 {
    ram_ranges(mem_size)
        .last()
        .map(|&(start, len)| start + len)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_range() {
        assert_eq!(ram_ranges(128 << 20), vec![(0, 128 << 20)]);
        assert_eq!(ram_end(128 << 20), 128 << 20);
    }

    #[test]
    fn large_memory_skips_the_gap() {
        let ranges = ram_ranges(8 << 30);
        assert_eq!(
            ranges,
            vec![
                (0, MMIO_GAP_START),
                (MMIO_GAP_END, (8 << 30) - MMIO_GAP_START)
            ]
        );
        assert_eq!(
            ram_end(8 << 30),
            (8 << 30) + (MMIO_GAP_END - MMIO_GAP_START)
        );
    }
}
