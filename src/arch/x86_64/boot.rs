//! Loading a kernel and its initrd into guest memory and writing what the boot protocol hands
//! it: the command line, the e820 map, and either a Linux `boot_params` (64-bit boot protocol)
//! or a PVH `hvm_start_info` (32-bit PVH entry).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout;

/// e820 type of usable RAM.
const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
const E820_RESERVED: u32 = 2;
/// `boot_params.hdr.header`: "HdrS".
const HDRS_MAGIC: u32 = 0x5372_6448;
/// `boot_flag` every boot sector carries.
const BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// Loader type "undefined": ember has no assigned id.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// `loadflags` bit: the protected-mode kernel is loaded at 1 MiB.
const LOADED_HIGH: u8 = 0x01;
/// `xloadflags` bit: the kernel has a 64-bit entry point at load address + 0x200.
const XLF_KERNEL_64: u16 = 0x01;
/// First boot protocol with `xloadflags` (2.12).
const MIN_BZIMAGE_PROTOCOL: u16 = 0x020c;
/// Offset of the 64-bit entry from the bzImage's protected-mode load address.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// `hvm_start_info.magic`.
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// Highest initrd end Linux accepts when the kernel does not say (`initrd_addr_max` default).
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;
/// ELF machine number of x86-64.
const EM_X86_64: u16 = 62;

/// Errors from loading a kernel or initrd and writing the boot parameters.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file could not be read.
    #[error("cannot read kernel {path}: {source}")]
    ReadKernel {
        /// The kernel path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The kernel file is neither an ELF vmlinux nor a bzImage.
    #[error("kernel {0} is not an x86_64 ELF vmlinux or bzImage: pass a Linux kernel image")]
    NotAKernel(String),
    /// The ELF is not a 64-bit x86 executable.
    #[error("kernel {0} is an ELF file but not a 64-bit x86 one: pass an x86_64 vmlinux")]
    WrongElf(String),
    /// The bzImage's boot protocol is too old or it has no 64-bit entry.
    #[error(
        "kernel {path} is a bzImage without a 64-bit entry point (boot protocol {version:#x}, \
         xloadflags {xloadflags:#x}): ember needs protocol 2.12+ with XLF_KERNEL_64; use a 64-bit kernel"
    )]
    No64BitEntry {
        /// The kernel path.
        path: String,
        /// Boot protocol version.
        version: u16,
        /// `xloadflags`.
        xloadflags: u16,
    },
    /// linux-loader refused the image, usually because it is truncated or does not fit.
    #[error(
        "kernel {path} could not be loaded ({source}): the file may be truncated, or it does not \
         fit in {mem_mib} MiB of guest memory (try more)"
    )]
    Load {
        /// The kernel path.
        path: String,
        /// The guest memory size in MiB.
        mem_mib: u64,
        /// The loader error.
        source: linux_loader::loader::Error,
    },
    /// The decompressed kernel would not fit in guest memory.
    #[error(
        "kernel {path} needs {need_mib} MiB of guest memory to unpack but the VM has {mem_mib} MiB: \
         give the guest more memory"
    )]
    KernelTooBig {
        /// The kernel path.
        path: String,
        /// MiB the kernel needs.
        need_mib: u64,
        /// The guest memory size in MiB.
        mem_mib: u64,
    },
    /// The initrd could not be read.
    #[error("cannot read initrd {path}: {source}")]
    ReadInitrd {
        /// The initrd path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The initrd does not fit between the kernel and the top of low memory.
    #[error(
        "initrd {path} ({size} bytes) does not fit in guest memory below {limit:#x} after the \
         kernel: give the guest more memory or shrink the initrd"
    )]
    InitrdTooBig {
        /// The initrd path or description.
        path: String,
        /// Its size in bytes.
        size: u64,
        /// The highest address it could end at.
        limit: u64,
    },
    /// Writing to guest memory failed (an address outside guest RAM).
    #[error("cannot write {what} to guest memory at {addr:#x}: give the guest more memory")]
    GuestWrite {
        /// What was being written.
        what: &'static str,
        /// Where.
        addr: u64,
    },
    /// linux-loader could not write the boot parameters.
    #[error("cannot write boot parameters: {0}")]
    BootParams(#[from] linux_loader::configurator::Error),
}

/// How the vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryPoint {
    /// 64-bit long mode at `rip`, `rsi` pointing at `boot_params` (Linux 64-bit boot protocol).
    Linux64(u64),
    /// 32-bit protected mode, paging off, at `eip`, `ebx` pointing at `hvm_start_info` (PVH).
    Pvh(u64),
}

impl EntryPoint {
    /// The guest-physical instruction address the BSP starts at.
    pub fn addr(self) -> u64 {
        match self {
            EntryPoint::Linux64(a) | EntryPoint::Pvh(a) => a,
        }
    }
}

/// A kernel placed in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// Where the BSP starts, and how.
    pub entry: EntryPoint,
    /// The bzImage setup header, `None` for an ELF kernel.
    pub setup_header: Option<setup_header>,
    /// One past the highest byte the kernel occupies (or will unpack into).
    pub end: u64,
    /// `true` for a bzImage, `false` for an ELF vmlinux.
    pub is_bzimage: bool,
}

/// Where an initrd landed.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadedInitrd {
    /// Guest-physical start.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// The kernel formats ember recognises from the first bytes of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// An ELF vmlinux.
    Elf,
    /// A bzImage (boot sector with "HdrS" at 0x202).
    BzImage,
}

/// Recognises a kernel image from its first 0x210 bytes.
pub fn detect_format(head: &[u8]) -> Option<KernelFormat> {
    if head.len() >= 4 && head[..4] == *b"\x7fELF" {
        return Some(KernelFormat::Elf);
    }
    if head.len() >= 0x206 && head[0x202..0x206] == *b"HdrS" {
        return Some(KernelFormat::BzImage);
    }
    None
}

/// A kernel image file, opened and recognised once: its format from the first bytes, and
/// whether it is Linux (a bzImage, or an ELF with a "Linux" note; tiny test guests are not),
/// which decides whether it gets ember's initramfs and, on PVM hosts, the PVM extras.
#[derive(Debug)]
pub struct KernelImage {
    /// What messages call it (the path).
    pub name: String,
    file: File,
    head: Vec<u8>,
    /// The image's format.
    pub format: KernelFormat,
    /// Whether it is a Linux kernel.
    pub is_linux: bool,
}

impl KernelImage {
    /// The kernel's release (`6.1.0-57-cloud-amd64`), where the image says: a bzImage's
    /// setup header points at its version string (boot protocol 2.00+). For an ELF, `None`.
    pub fn release(&self) -> Option<String> {
        use std::os::unix::fs::FileExt;
        if self.format != KernelFormat::BzImage {
            return None;
        }
        let at = *self.head.get(0x20e)? as u64 | (*self.head.get(0x20f)? as u64) << 8;
        if at == 0 {
            return None;
        }
        let mut buf = [0u8; 128];
        let n = self.file.read_at(&mut buf, at + 0x200).ok()?;
        let text = buf.get(..n)?;
        let end = text.iter().position(|&b| b == 0 || b == b' ')?;
        let release = std::str::from_utf8(&text[..end]).ok()?;
        (!release.is_empty() && !release.contains('/')).then(|| release.to_string())
    }

    /// Recognises the kernel in `file`, which messages call `name`.
    pub fn new(name: &str, mut file: File) -> Result<Self, BootError> {
        let read_err = |source| BootError::ReadKernel {
            path: name.to_string(),
            source,
        };
        let mut head = vec![0u8; 0x300];
        let n = read_up_to(&mut file, &mut head).map_err(read_err)?;
        head.truncate(n);
        let format = detect_format(&head).ok_or_else(|| BootError::NotAKernel(name.into()))?;
        let is_linux = match format {
            KernelFormat::BzImage => true,
            KernelFormat::Elf => elf_has_linux_note(&mut file, &head).unwrap_or(false),
        };
        Ok(Self {
            name: name.to_string(),
            file,
            head,
            format,
            is_linux,
        })
    }
}

/// Loads `image` into guest memory.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    image: &mut KernelImage,
) -> Result<LoadedKernel, BootError> {
    let path = image.name.as_str();
    let head = image.head.as_slice();
    let file = &mut image.file;
    let mem_mib = mem_size >> 20;
    let load_err = |source| BootError::Load {
        path: path.to_string(),
        mem_mib,
        source,
    };
    match image.format {
        KernelFormat::Elf => {
            // linux-loader reads any ELF class as ELF64; check class and machine first.
            let class = head.get(4).copied();
            let machine = head.get(18..20).map(|b| u16::from_le_bytes([b[0], b[1]]));
            if class != Some(2) || machine != Some(EM_X86_64) {
                return Err(BootError::WrongElf(path.to_string()));
            }
            let res = Elf::load(mem, None, file, Some(GuestAddress(layout::HIMEM_START)))
                .map_err(load_err)?;
            let entry = match res.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => EntryPoint::Pvh(addr.0),
                _ => EntryPoint::Linux64(res.kernel_load.0),
            };
            Ok(LoadedKernel {
                entry,
                setup_header: None,
                end: res.kernel_end,
                is_bzimage: false,
            })
        }
        KernelFormat::BzImage => {
            let mut hdr = setup_header::default();
            let hdr_bytes = head.get(0x1f1..0x1f1 + std::mem::size_of::<setup_header>());
            if let Some(bytes) = hdr_bytes {
                // SAFETY: setup_header is a plain-old-data repr(C, packed) struct; any bytes are
                // a valid value and the slice has exactly its size.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        bytes.as_ptr(),
                        &mut hdr as *mut setup_header as *mut u8,
                        bytes.len(),
                    );
                }
            }
            let (version, xloadflags) = (hdr.version, hdr.xloadflags);
            if version < MIN_BZIMAGE_PROTOCOL || xloadflags & XLF_KERNEL_64 == 0 {
                return Err(BootError::No64BitEntry {
                    path: path.to_string(),
                    version,
                    xloadflags,
                });
            }
            let res = BzImage::load(mem, None, file, Some(GuestAddress(layout::HIMEM_START)))
                .map_err(load_err)?;
            let mut hdr = res.setup_header.unwrap_or(hdr);
            // The kernel unpacks itself to pref_address (when relocatable, wherever it sits)
            // and needs init_size bytes from there.
            let unpack_start = std::cmp::max(res.kernel_load.0, hdr.pref_address);
            let need = unpack_start.saturating_add(u64::from(hdr.init_size));
            let low_top = layout::ram_ranges(mem_size)[0].1;
            if need > low_top {
                return Err(BootError::KernelTooBig {
                    path: path.to_string(),
                    need_mib: need.div_ceil(1 << 20),
                    mem_mib,
                });
            }
            hdr.code32_start = res.kernel_load.0 as u32;
            Ok(LoadedKernel {
                entry: EntryPoint::Linux64(res.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET),
                setup_header: Some(hdr),
                end: std::cmp::max(res.kernel_end, need),
                is_bzimage: true,
            })
        }
    }
}

/// Reads as much of `buf` as the file holds from its start.
fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    file.seek(SeekFrom::Start(0))?;
    let mut total = 0;
    while total < buf.len() {
        match file.read(&mut buf[total..])? {
            0 => break,
            n => total += n,
        }
    }
    Ok(total)
}

/// Places an initrd image at the top of low memory, page-aligned, above the kernel.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    kernel: &LoadedKernel,
    name: &str,
    image: &[u8],
) -> Result<LoadedInitrd, BootError> {
    let size = image.len() as u64;
    let addr_max = kernel
        .setup_header
        .map(|h| u64::from(h.initrd_addr_max))
        .filter(|&m| m != 0)
        .unwrap_or(DEFAULT_INITRD_ADDR_MAX);
    let low_top = layout::ram_ranges(mem_size)[0].1;
    let limit = std::cmp::min(low_top, addr_max.saturating_add(1));
    let too_big = || BootError::InitrdTooBig {
        path: name.to_string(),
        size,
        limit,
    };
    let addr = limit.checked_sub(size).ok_or_else(too_big)? & !0xfff;
    if addr < kernel.end {
        return Err(too_big());
    }
    mem.write_slice(image, GuestAddress(addr))
        .map_err(|_| too_big())?;
    Ok(LoadedInitrd { addr, size })
}

/// The e820 map: low RAM below the EBDA, the EBDA and BIOS area reserved, then RAM from 1 MiB
/// around the MMIO gap.
pub fn e820_map(mem_size: u64) -> Vec<(u64, u64, u32)> {
    let mut map = vec![
        (0, layout::EBDA_START, E820_RAM),
        (
            layout::EBDA_START,
            layout::HIMEM_START - layout::EBDA_START,
            E820_RESERVED,
        ),
    ];
    for (start, len) in layout::ram_ranges(mem_size) {
        let (start, end) = (std::cmp::max(start, layout::HIMEM_START), start + len);
        if end > start {
            map.push((start, end - start, E820_RAM));
        }
    }
    map
}

/// Writes the command line (NUL-terminated) at its fixed address.
pub fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str) -> Result<(), BootError> {
    let mut bytes = Vec::with_capacity(cmdline.len() + 1);
    bytes.extend_from_slice(cmdline.as_bytes());
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(layout::CMDLINE_START))
        .map_err(|_| BootError::GuestWrite {
            what: "the command line",
            addr: layout::CMDLINE_START,
        })
}

/// Writes the boot parameters the entry point expects: `boot_params` for the 64-bit protocol,
/// `hvm_start_info` for PVH. Both carry the ACPI RSDP's address.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    kernel: &LoadedKernel,
    cmdline_len: usize,
    initrd: Option<LoadedInitrd>,
    rsdp: u64,
) -> Result<(), BootError> {
    let e820 = e820_map(mem_size);
    match kernel.entry {
        EntryPoint::Linux64(_) => {
            let mut params = boot_params::default();
            if let Some(hdr) = kernel.setup_header {
                params.hdr = hdr;
            } else {
                params.hdr.boot_flag = BOOT_FLAG_MAGIC;
                params.hdr.header = HDRS_MAGIC;
                params.hdr.kernel_alignment = 0x0100_0000;
            }
            params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
            params.hdr.loadflags |= LOADED_HIGH;
            params.hdr.cmd_line_ptr = layout::CMDLINE_START as u32;
            params.acpi_rsdp_addr = rsdp;
            params.hdr.cmdline_size = cmdline_len as u32 + 1;
            if let Some(rd) = initrd {
                params.hdr.ramdisk_image = rd.addr as u32;
                params.hdr.ramdisk_size = rd.size as u32;
            }
            for (i, &(addr, size, kind)) in e820.iter().enumerate().take(params.e820_table.len()) {
                params.e820_table[i] = boot_e820_entry {
                    addr,
                    size,
                    r#type: kind,
                };
                params.e820_entries = i as u8 + 1;
            }
            LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
                &BootParams::new(&params, GuestAddress(layout::ZERO_PAGE_START)),
                mem,
            )?;
        }
        EntryPoint::Pvh(_) => {
            let mut info = hvm_start_info {
                magic: XEN_HVM_START_MAGIC,
                version: 1,
                cmdline_paddr: layout::CMDLINE_START,
                memmap_paddr: layout::PVH_MEMMAP_START,
                memmap_entries: e820.len() as u32,
                rsdp_paddr: rsdp,
                ..Default::default()
            };
            let memmap: Vec<hvm_memmap_table_entry> = e820
                .iter()
                .take(layout::PVH_MEMMAP_MAX_ENTRIES)
                .map(|&(addr, size, type_)| hvm_memmap_table_entry {
                    addr,
                    size,
                    type_,
                    reserved: 0,
                })
                .collect();
            let mut params = BootParams::new(&info, GuestAddress(layout::PVH_INFO_START));
            params.set_sections(&memmap, GuestAddress(layout::PVH_MEMMAP_START));
            if let Some(rd) = initrd {
                // The module list goes right after the memory map.
                let modlist_addr = layout::PVH_MEMMAP_START + (memmap.len() * 24) as u64;
                info.nr_modules = 1;
                info.modlist_paddr = modlist_addr;
                params = BootParams::new(&info, GuestAddress(layout::PVH_INFO_START));
                params.set_sections(&memmap, GuestAddress(layout::PVH_MEMMAP_START));
                params.set_modules(
                    &[hvm_modlist_entry {
                        paddr: rd.addr,
                        size: rd.size,
                        ..Default::default()
                    }],
                    GuestAddress(modlist_addr),
                );
            }
            PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)?;
        }
    }
    Ok(())
}

fn elf_has_linux_note(file: &mut File, head: &[u8]) -> Option<bool> {
    const PT_NOTE: u32 = 4;
    let phoff = u64::from_le_bytes(head.get(32..40)?.try_into().ok()?);
    let phentsize = u64::from(u16::from_le_bytes(head.get(54..56)?.try_into().ok()?));
    let phnum = u16::from_le_bytes(head.get(56..58)?.try_into().ok()?);
    for i in 0..u64::from(phnum) {
        let mut ph = [0u8; 56];
        file.seek(SeekFrom::Start(
            phoff.checked_add(i.checked_mul(phentsize)?)?,
        ))
        .ok()?;
        file.read_exact(&mut ph).ok()?;
        if u32::from_le_bytes(ph[0..4].try_into().ok()?) != PT_NOTE {
            continue;
        }
        let offset = u64::from_le_bytes(ph[8..16].try_into().ok()?);
        // Notes are small; read at most 64 KiB of one.
        let size = u64::from_le_bytes(ph[32..40].try_into().ok()?).min(64 << 10);
        let mut notes = vec![0u8; size as usize];
        file.seek(SeekFrom::Start(offset)).ok()?;
        file.read_exact(&mut notes).ok()?;
        if notes.windows(6).any(|w| w == b"Linux\0") {
            return Some(true);
        }
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_small_guest() {
        let map = e820_map(128 << 20);
        assert_eq!(
            map,
            vec![
                (0, layout::EBDA_START, E820_RAM),
                (
                    layout::EBDA_START,
                    layout::HIMEM_START - layout::EBDA_START,
                    E820_RESERVED
                ),
                (
                    layout::HIMEM_START,
                    (128 << 20) - layout::HIMEM_START,
                    E820_RAM
                ),
            ]
        );
    }

    #[test]
    fn e820_large_guest_skips_mmio_gap() {
        let map = e820_map(6 << 30);
        assert_eq!(map.len(), 4);
        assert_eq!(
            map[2],
            (
                layout::HIMEM_START,
                layout::MMIO_GAP_START - layout::HIMEM_START,
                E820_RAM
            )
        );
        assert_eq!(
            map[3],
            (
                layout::MMIO_GAP_END,
                (6 << 30) - layout::MMIO_GAP_START,
                E820_RAM
            )
        );
        let ram: u64 = map.iter().filter(|e| e.2 == E820_RAM).map(|e| e.1).sum();
        assert_eq!(ram, (6 << 30) - (layout::HIMEM_START - layout::EBDA_START));
    }

    #[test]
    fn formats_are_recognised() {
        assert_eq!(detect_format(b"\x7fELF\x02\x01"), Some(KernelFormat::Elf));
        let mut bz = vec![0u8; 0x210];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(detect_format(&bz), Some(KernelFormat::BzImage));
        assert_eq!(detect_format(b""), None);
        assert_eq!(detect_format(&[0x55; 0x300]), None);
    }
}

#[cfg(test)]
mod fuzz_smoke {
    //! Arbitrary bytes as a kernel image, through format detection and both loaders: every
    //! input must end in Ok or Err, never a panic. A deterministic stand-in for a fuzzer run.
    use super::*;
    use std::io::Write;

    /// xorshift64*: reproducible pseudo-random bytes without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    #[test]
    fn arbitrary_images_never_panic() {
        let mem_size = 16u64 << 20;
        let mem = crate::memory::create(mem_size).unwrap();
        let path = std::env::temp_dir().join(format!("ember-fuzz-kernel-{}", std::process::id()));
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for i in 0..1500 {
            let len = (rng.next() % 0x3000) as usize + 1;
            let mut img = rng.bytes(len);
            match i % 3 {
                // An ELF64 x86-64 header with random program headers.
                0 if img.len() >= 64 => {
                    img[..4].copy_from_slice(b"\x7fELF");
                    img[4] = 2;
                    img[5] = 1;
                    img[18] = 62;
                    img[19] = 0;
                    img[54] = 56;
                    img[55] = 0;
                    img[56] = (rng.next() % 8) as u8;
                    img[57] = 0;
                }
                // A bzImage boot sector with a random setup header.
                1 if img.len() >= 0x300 => {
                    img[0x202..0x206].copy_from_slice(b"HdrS");
                    img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
                    img[0x211] |= 1;
                    img[0x236] |= 1;
                }
                _ => {}
            }
            let mut f = std::fs::File::create(&path).unwrap();
            f.write_all(&img).unwrap();
            drop(f);
            let f = File::open(&path).unwrap();
            if let Ok(mut image) = KernelImage::new("fuzz", f)
                && let Ok(k) = load_kernel(&mem, mem_size, &mut image)
            {
                // Whatever loaded must also take boot parameters without panicking.
                let rd = load_initrd(&mem, mem_size, &k, "fuzz-initrd", &img).ok();
                let _ = write_boot_params(&mem, mem_size, &k, 10, rd, layout::ACPI_START);
            }
        }
        let _ = std::fs::remove_file(path);
    }
}
