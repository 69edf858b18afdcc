//! The boot vCPU's register state, computed once as plain data and then applied: GDT,
//! segments, control registers, identity page tables, general registers and FPU.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::boot::EntryPoint;
use super::layout;

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// Page-table entry flags: present, writable.
const PTE_PRESENT_RW: u64 = 0x3;
/// Page-directory entry flag for a 2 MiB page.
const PDE_PAGE_SIZE: u64 = 0x80;

/// GDT slots. The 64-bit boot protocol requires __BOOT_CS = 0x10 and __BOOT_DS = 0x18.
const GDT_CODE: usize = 2;
const GDT_DATA: usize = 3;
const GDT_TSS: usize = 4;

/// Errors from writing the boot-time CPU structures into guest memory.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// A boot structure lies outside guest memory.
    #[error("cannot write the boot {0} to guest memory")]
    Write(&'static str),
}

/// Packs a GDT descriptor from flags, base and limit.
fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((u64::from(base) & 0xff00_0000) << 32)
        | ((u64::from(flags) & 0xf0ff) << 40)
        | ((u64::from(limit) & 0x000f_0000) << 32)
        | ((u64::from(base) & 0x00ff_ffff) << 16)
        | (u64::from(limit) & 0x0000_ffff)
}

/// Unpacks a GDT descriptor into the segment KVM loads for selector `index * 8`.
fn segment_from_gdt(entry: u64, index: usize) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    kvm_segment {
        base,
        // KVM wants the byte-granular limit.
        limit: if g == 1 { (limit << 12) | 0xfff } else { limit },
        selector: (index * 8) as u16,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: if (entry >> 47) & 1 == 0 { 1 } else { 0 },
        padding: 0,
    }
}

/// The boot GDT for an entry mode: flat code (64-bit or 32-bit), flat data, a TSS.
fn gdt_for(entry: EntryPoint) -> [u64; 5] {
    let code = match entry {
        EntryPoint::Linux64(_) => gdt_entry(0xa09b, 0, 0xfffff),
        EntryPoint::Pvh(_) => gdt_entry(0xc09b, 0, 0xfffff),
    };
    [
        0,
        0,
        code,
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0x008b, 0, 0x67),
    ]
}

/// Number of GiB the boot identity map covers: all RAM, at least the low 4 GiB (so the APIC
/// and MMIO devices are reachable), at most what the page-directory area holds.
pub fn identity_map_gib(mem_size: u64) -> u64 {
    layout::ram_end(mem_size)
        .div_ceil(1 << 30)
        .clamp(4, layout::PD_MAX)
}

/// Writes PML4 → PDPT → page directories identity-mapping the first `identity_map_gib` GiB
/// with 2 MiB pages.
fn write_page_tables(mem: &GuestMemoryMmap, mem_size: u64) -> Result<(), RegsError> {
    let gib = identity_map_gib(mem_size);
    let err = |_| RegsError::Write("page tables");
    mem.write_obj(
        layout::PDPT_START | PTE_PRESENT_RW,
        GuestAddress(layout::PML4_START),
    )
    .map_err(err)?;
    let mut pdpt = vec![0u8; (gib * 8) as usize];
    let mut pds = vec![0u8; (gib * 4096) as usize];
    for g in 0..gib {
        let pd = layout::PD_START + g * 0x1000;
        pdpt[(g * 8) as usize..][..8].copy_from_slice(&(pd | PTE_PRESENT_RW).to_le_bytes());
        for i in 0..512u64 {
            let entry = ((g << 30) + (i << 21)) | PTE_PRESENT_RW | PDE_PAGE_SIZE;
            pds[((g * 512 + i) * 8) as usize..][..8].copy_from_slice(&entry.to_le_bytes());
        }
    }
    mem.write_slice(&pdpt, GuestAddress(layout::PDPT_START))
        .map_err(err)?;
    mem.write_slice(&pds, GuestAddress(layout::PD_START))
        .map_err(err)?;
    Ok(())
}

/// Writes the GDT, an empty IDT and (for 64-bit entry) the page tables; returns the special
/// registers the BSP starts with.
pub fn setup_sregs(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    entry: EntryPoint,
    mut sregs: kvm_sregs,
) -> Result<kvm_sregs, RegsError> {
    let gdt = gdt_for(entry);
    let gdt_bytes: Vec<u8> = gdt.iter().flat_map(|e| e.to_le_bytes()).collect();
    mem.write_slice(&gdt_bytes, GuestAddress(layout::BOOT_GDT_START))
        .map_err(|_| RegsError::Write("GDT"))?;
    mem.write_obj(0u64, GuestAddress(layout::BOOT_IDT_START))
        .map_err(|_| RegsError::Write("IDT"))?;

    let code = segment_from_gdt(gdt[GDT_CODE], GDT_CODE);
    let data = segment_from_gdt(gdt[GDT_DATA], GDT_DATA);
    let tss = segment_from_gdt(gdt[GDT_TSS], GDT_TSS);
    sregs.gdt.base = layout::BOOT_GDT_START;
    sregs.gdt.limit = (gdt_bytes.len() - 1) as u16;
    sregs.idt.base = layout::BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    match entry {
        EntryPoint::Linux64(_) => {
            write_page_tables(mem, mem_size)?;
            sregs.cr3 = layout::PML4_START;
            sregs.cr4 = X86_CR4_PAE;
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            sregs.efer = EFER_LME | EFER_LMA;
        }
        EntryPoint::Pvh(_) => {
            // PVH: protected mode, paging off, CR4 clear.
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    Ok(sregs)
}

/// The BSP's general registers for the entry mode.
pub fn boot_regs(entry: EntryPoint) -> kvm_regs {
    let mut regs = kvm_regs {
        // Bit 1 of RFLAGS is reserved and always set.
        rflags: 0x2,
        rip: entry.addr(),
        ..Default::default()
    };
    match entry {
        EntryPoint::Linux64(_) => {
            regs.rsp = layout::BOOT_STACK_POINTER;
            regs.rbp = layout::BOOT_STACK_POINTER;
            regs.rsi = layout::ZERO_PAGE_START;
        }
        EntryPoint::Pvh(_) => {
            regs.rbx = layout::PVH_INFO_START;
        }
    }
    regs
}

/// The FPU state at reset: x87 control word and MXCSR defaults.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_round_trip() {
        let code = gdt_entry(0xa09b, 0, 0xfffff);
        let seg = segment_from_gdt(code, GDT_CODE);
        assert_eq!(seg.selector, 0x10);
        assert_eq!(seg.l, 1);
        assert_eq!(seg.db, 0);
        assert_eq!(seg.limit, 0xffff_ffff);
        assert_eq!(seg.type_, 0xb);
        assert_eq!(seg.present, 1);
        let data = segment_from_gdt(gdt_entry(0xc093, 0, 0xfffff), GDT_DATA);
        assert_eq!(data.selector, 0x18);
        assert_eq!(data.db, 1);
        assert_eq!(data.type_, 0x3);
        let tss = segment_from_gdt(gdt_entry(0x008b, 0, 0x67), GDT_TSS);
        assert_eq!(tss.limit, 0x67);
        assert_eq!(tss.g, 0);
        assert_eq!(segment_from_gdt(0, 0).unusable, 1);
    }

    #[test]
    fn identity_map_covers_ram_and_low_4g() {
        assert_eq!(identity_map_gib(128 << 20), 4);
        assert_eq!(identity_map_gib(8 << 30), 9);
        assert_eq!(identity_map_gib(1 << 40), layout::PD_MAX);
    }

    #[test]
    fn page_tables_map_2m_pages() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_page_tables(&mem, 1 << 20).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(layout::PML4_START)).unwrap();
        assert_eq!(pml4, layout::PDPT_START | 3);
        let pdpt3: u64 = mem.read_obj(GuestAddress(layout::PDPT_START + 24)).unwrap();
        assert_eq!(pdpt3, (layout::PD_START + 3 * 0x1000) | 3);
        let last: u64 = mem
            .read_obj(GuestAddress(layout::PD_START + 4 * 0x1000 - 8))
            .unwrap();
        assert_eq!(last, ((4u64 << 30) - (2 << 20)) | 0x83);
    }
}
