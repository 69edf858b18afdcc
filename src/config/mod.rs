//! The VM configuration: what to boot and with what. One serde type, [`VmConfig`], filled from
//! a JSON file (`ember run --config`), from command-line flags (which override the file), or
//! by a library user; its sections and field names follow Firecracker's configuration file
//! (`boot-source`, `machine-config`, `drives`, `network-interfaces`, `vsock`), so a Firecracker
//! user recognises them. Validation names the input, what is wrong with it and how to fix it.
//!
//! What a configuration means on a given host (the effective command line, the initrd bytes,
//! the default timeout) is worked out in [`crate::resolve`].

mod parse;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use parse::{parse_disk, parse_duration, parse_mac, parse_net, parse_vsock, show_duration};

use crate::arch::x86_64::layout::CMDLINE_MAX_SIZE;

/// The default kernel command line, flag by flag:
/// - `console=ttyS0`: the kernel console on the 16550A at 0x3f8, which ember wires to stdio;
/// - `earlyprintk=serial,ttyS0,115200`: print from the first instructions, before the console
///   driver is up, so a guest that dies early still says where;
/// - `reboot=k`: reboot by pulsing the i8042 reset line, which ember turns into a VM exit;
/// - `panic=-1`: reboot at once on a panic, so ember reports it instead of hanging;
/// - `pci=off`: there is no PCI bus; skip probing it;
/// - `8250.nr_uarts=1`: one UART exists; don't probe four.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 earlyprintk=serial,ttyS0,115200 reboot=k panic=-1 pci=off 8250.nr_uarts=1";
/// What ember adds to the default command line when /dev/kvm is PVM-based and the guest is
/// Linux, so the kernel gets as far as such a host allows (docs/hosts.md). A PVM host imposes
/// its own CPUID leaves 1, 7 and 0xd, so these features cannot be hidden through CPUID; the
/// kernel is told instead:
/// - `noxsave`: no XSAVE/XRSTOR (the host does not emulate XRSTOR in guest kernel mode);
/// - `clearcpuid=popcnt,smap`: no POPCNT in bitmap code, no CLAC/STAC in entry code;
/// - `lapic=notscdeadline`: the LAPIC timer in one-shot mode; Intel PVM hosts never deliver a
///   TSC-deadline timer interrupt, and the kernel waits for one forever in
///   `clocksource_done_booting`;
/// - `no_int3_selftest`, `no_fpu_drop_fwait`: the project kernel's two small patches
///   (kernels/patches/) skip the INT3 self-test and an FWAIT the host cannot emulate; other
///   kernels ignore them.
///
/// ember never adds them on hardware KVM. There, with no PIT (ember's split irqchip), the
/// TSC-deadline timer is the guest's tick: `lapic=notscdeadline` would leave it none (on PVM
/// the kernel says `APIC timer disabled due to verification failure` and boots on without a
/// tick, docs/hosts.md).
pub const PVM_CMDLINE_EXTRA: &str =
    "noxsave clearcpuid=popcnt,smap lapic=notscdeadline no_int3_selftest no_fpu_drop_fwait";
/// How long a Linux guest on a PVM host may run when no `--timeout` is given. Its userspace
/// cannot run there, so it either panics (AMD hosts, about a minute in) or waits forever
/// (Intel hosts, after `Run /init` at 100-165 s): docs/hosts.md.
pub const PVM_LINUX_TIMEOUT: Duration = Duration::from_secs(300);
/// Default vCPU count (as Firecracker and QEMU).
pub const DEFAULT_VCPUS: u32 = 1;
/// Default guest memory in MiB (as Firecracker).
pub const DEFAULT_MEM_MIB: u64 = 128;
/// The least memory ember boots with: room for the boot structures below 1 MiB, a kernel
/// above it and an initramfs.
pub const MIN_MEM_MIB: u64 = 8;
/// Most devices of each virtio kind: the MMIO windows and interrupt lines ember hands out are
/// plentiful, but a limit keeps a runaway configuration from exhausting them.
pub const MAX_DEVICES_PER_KIND: usize = 8;

/// A path as error messages show it: control characters escaped, so that a file name with a
/// newline cannot break an error into several lines.
pub fn shown(path: &Path) -> String {
    one_line(&path.display().to_string())
}

/// `text` with every control character escaped (`\n`, `\u{1b}`, ...): what goes on one line.
pub fn one_line(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_debug().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// Errors in the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The default kernel is not built.
    #[error("default kernel {} is not built yet: run kernels/build.sh, or pass --kernel PATH", shown(.0))]
    NoDefaultKernel(PathBuf),
    /// A file is missing or unreadable.
    #[error("{what} {}: {reason}", shown(.path))]
    File {
        /// Which input.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// `--vcpus 0`.
    #[error("--vcpus 0: a VM needs at least one vCPU; pass --vcpus 1 or more")]
    NoVcpus,
    /// More vCPUs than the host gives ember, without `--overcommit-vcpus`.
    #[error(
        "--vcpus {asked}: more than the {host} CPUs this host gives ember; pass at most --vcpus {host}, or add --overcommit-vcpus to let the vCPUs share CPUs"
    )]
    MoreVcpusThanCpus {
        /// Asked.
        asked: u32,
        /// CPUs ember may run on.
        host: u32,
    },
    /// Memory too small.
    #[error(
        "--mem-mib {0}: below the minimum of {MIN_MEM_MIB} MiB; pass --mem-mib {MIN_MEM_MIB} or more"
    )]
    MemTooSmall(u64),
    /// Memory larger than the host.
    #[error(
        "--mem-mib {asked}: more than this host's {host} MiB of RAM; pass at most --mem-mib {host}"
    )]
    MemTooLarge {
        /// Asked, MiB.
        asked: u64,
        /// Host RAM, MiB.
        host: u64,
    },
    /// Command line too long.
    #[error("the kernel command line is {0} bytes; the x86 boot protocol allows at most {max}: shorten --cmdline", max = CMDLINE_MAX_SIZE - 1)]
    CmdlineTooLong(usize),
    /// Command line with a NUL.
    #[error("--cmdline contains a NUL byte, which would end it early: remove it")]
    CmdlineNul,
    /// The exec program is dynamically linked.
    #[error(
        "--exec {}: dynamically linked, but the guest has no shared libraries: build it static (gcc -static, or RUSTFLAGS='-C target-feature=+crt-static')",
        shown(.0)
    )]
    ExecDynamic(PathBuf),
    /// The exec program is not an ELF executable.
    #[error("--exec {}: not an x86_64 ELF executable: pass a static Linux program", shown(.0))]
    ExecNotElf(PathBuf),
    /// Two ways of choosing the initrd at once.
    #[error(
        "boot-source: initrd_path, exec and no_initrd exclude each other: keep one (--initrd, --exec, --no-initrd)"
    )]
    InitrdConflict,
    /// Arguments for a program that is not there.
    #[error(
        "arguments after `--` go to the --exec program, but no --exec was given: add --exec PROG"
    )]
    ArgsWithoutExec,
    /// A flag value that does not parse (`--disk`, `--net`, `--vsock`, `--timeout`).
    #[error("{flag} {value:?}: {reason}")]
    Value {
        /// The flag or configuration field.
        flag: &'static str,
        /// What was given.
        value: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The same disk, TAP, id or CID used twice.
    #[error("{what} {value:?} is given twice: each {what} may appear once")]
    Duplicate {
        /// What kind of value.
        what: &'static str,
        /// The value.
        value: String,
    },
    /// More than one root device.
    #[error(
        "drives {0:?} and {1:?} are both the root device: mark one drive is_root_device (--rootfs once)"
    )]
    TwoRoots(String, String),
    /// Too many devices of a kind.
    #[error("{what}: {count} given, ember offers at most {MAX_DEVICES_PER_KIND}")]
    TooManyDevices {
        /// The kind.
        what: &'static str,
        /// How many.
        count: usize,
    },
    /// A TAP device that is missing or not usable.
    #[error("--net tap={name:?}: {reason}")]
    Tap {
        /// The TAP name.
        name: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A configuration file that cannot be read or parsed.
    #[error("--config {}: {reason}", shown(.path))]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        reason: String,
    },
}

/// What the guest's initramfs is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitrdChoice {
    /// ember's built-in initramfs: its init prints a greeting and powers off.
    BuiltIn,
    /// A user-supplied initrd file.
    File(PathBuf),
    /// The built-in init running a static host program with these arguments.
    Exec {
        /// The program.
        program: PathBuf,
        /// argv[1..].
        args: Vec<String>,
    },
    /// No initrd (tiny guests).
    None,
}

/// A static program to run as the guest's workload (`--exec`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exec {
    /// The program, on the host.
    pub program: PathBuf,
    /// Its arguments (argv[1..]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
}

/// What to boot (Firecracker's `boot-source`, plus ember's initrd choices).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    /// The kernel image; default: `$EMBER_KERNEL`, else the one kernels/build.sh built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_image_path: Option<PathBuf>,
    /// An initrd to hand the kernel instead of ember's built-in initramfs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
    /// The kernel command line, replacing ember's default; device entries are added to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    /// Run this program under ember's init instead of the greeting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<Exec>,
    /// No initrd at all.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_initrd: bool,
}

impl BootSource {
    /// The initrd these fields choose; at most one of them may be set.
    pub fn initrd(&self) -> Result<InitrdChoice, ConfigError> {
        match (&self.initrd_path, &self.exec, self.no_initrd) {
            (None, None, false) => Ok(InitrdChoice::BuiltIn),
            (Some(p), None, false) => Ok(InitrdChoice::File(p.clone())),
            (None, Some(e), false) => Ok(InitrdChoice::Exec {
                program: e.program.clone(),
                args: e.args.clone(),
            }),
            (None, None, true) => Ok(InitrdChoice::None),
            _ => Err(ConfigError::InitrdConflict),
        }
    }
}

fn default_vcpus() -> u32 {
    DEFAULT_VCPUS
}

fn default_mem_mib() -> u64 {
    DEFAULT_MEM_MIB
}

/// The machine (Firecracker's `machine-config`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// vCPUs.
    #[serde(default = "default_vcpus")]
    pub vcpu_count: u32,
    /// Guest memory in MiB.
    #[serde(default = "default_mem_mib")]
    pub mem_size_mib: u64,
    /// Whether more vCPUs than host CPUs is what the user wants.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub overcommit_vcpus: bool,
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            vcpu_count: DEFAULT_VCPUS,
            mem_size_mib: DEFAULT_MEM_MIB,
            overcommit_vcpus: false,
        }
    }
}

/// A block device backed by a host file (Firecracker's `drives`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    /// Its name; also the serial number the guest reads (GET_ID).
    pub drive_id: String,
    /// The backing file.
    pub path_on_host: PathBuf,
    /// The guest's root filesystem: `root=/dev/vda` goes on the command line.
    #[serde(default)]
    pub is_root_device: bool,
    /// Writes fail in the guest (the device refuses them).
    #[serde(default)]
    pub is_read_only: bool,
}

/// A network interface backed by a host TAP device (Firecracker's `network-interfaces`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    /// Its name in the configuration.
    pub iface_id: String,
    /// The TAP device, created by the user beforehand.
    pub host_dev_name: String,
    /// The guest's MAC address (`aa:bb:cc:dd:ee:ff`); default: one derived from the TAP name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
}

/// A vsock device (Firecracker's `vsock`, with its host-side convention: a host process
/// connects to `uds_path` and sends `CONNECT <port>\n`; a guest connection to port P reaches
/// the listener at `<uds_path>_P`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    /// Firecracker's device id (accepted, unused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
    /// The guest's context id (3 or more).
    pub guest_cid: u32,
    /// The Unix socket ember listens on; it must not exist yet.
    pub uds_path: PathBuf,
}

/// Everything about one VM that a user chooses. Runtime handles (console fds, the timeline,
/// where reports go) are not here: see [`crate::vmm::Runtime`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// What to boot.
    #[serde(rename = "boot-source", default)]
    pub boot_source: BootSource,
    /// vCPUs and memory.
    #[serde(rename = "machine-config", default)]
    pub machine_config: MachineConfig,
    /// Block devices, in the order the guest sees them (vda, vdb, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drives: Vec<Drive>,
    /// Network interfaces, in the order the guest sees them (eth0, eth1, ...).
    #[serde(
        rename = "network-interfaces",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub network_interfaces: Vec<NetworkInterface>,
    /// The vsock device, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<Vsock>,
    /// Stop the guest if it still runs after this long (`"90s"`, `"5m"`; `"0"`: never).
    /// Default: none, except for a Linux guest on a PVM host ([`PVM_LINUX_TIMEOUT`]).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "parse::duration_text"
    )]
    pub timeout: Option<Duration>,
}

/// The default kernel: `$EMBER_KERNEL`, else `vmlinux` in ember's cache
/// (`$EMBER_CACHE_DIR`, `$XDG_CACHE_HOME/ember` or `~/.cache/ember`), where kernels/build.sh
/// puts it.
pub fn default_kernel() -> PathBuf {
    if let Some(k) = std::env::var_os("EMBER_KERNEL") {
        return PathBuf::from(k);
    }
    cache_dir().join("vmlinux")
}

/// ember's cache directory.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("EMBER_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("ember");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache").join("ember")
}

/// Checks that `path` exists, is not a directory and is not empty.
pub fn check_file_metadata(what: &'static str, path: &Path) -> Result<(), ConfigError> {
    let err = |reason: String| ConfigError::File {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => err("no such file: check the path".into()),
        std::io::ErrorKind::PermissionDenied => err("permission denied: make it readable".into()),
        _ => err(format!("cannot read it ({e})")),
    })?;
    if meta.is_dir() {
        return Err(err("is a directory: pass a file".into()));
    }
    if meta.len() == 0 {
        return Err(err("is empty: pass a real image".into()));
    }
    Ok(())
}

/// Checks that `path` is a readable, non-empty regular file.
pub fn check_file(what: &'static str, path: &Path) -> Result<(), ConfigError> {
    check_file_metadata(what, path)?;
    let err = |reason: String| ConfigError::File {
        what,
        path: path.to_path_buf(),
        reason,
    };
    std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => err("permission denied: make it readable".into()),
        _ => err(format!("cannot open it ({e})")),
    })?;
    Ok(())
}

/// Checks that `path` is a static x86_64 ELF executable (no PT_INTERP).
pub fn check_static_elf(path: &Path, bytes: &[u8]) -> Result<(), ConfigError> {
    let not_elf = || ConfigError::ExecNotElf(path.to_path_buf());
    if bytes.len() < 64 || bytes[..4] != *b"\x7fELF" || bytes[4] != 2 || bytes[18] != 62 {
        return Err(not_elf());
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
    let phoff = u64::from_le_bytes(bytes[32..40].try_into().map_err(|_| not_elf())?) as usize;
    let (phentsize, phnum) = (u16_at(54) as usize, u16_at(56) as usize);
    for i in 0..phnum {
        let off = phoff
            .checked_add(i.checked_mul(phentsize).ok_or_else(not_elf)?)
            .ok_or_else(not_elf)?;
        let Some(ph) = bytes.get(off..off + 4) else {
            return Err(not_elf());
        };
        const PT_INTERP: u32 = 3;
        if u32::from_le_bytes([ph[0], ph[1], ph[2], ph[3]]) == PT_INTERP {
            return Err(ConfigError::ExecDynamic(path.to_path_buf()));
        }
    }
    Ok(())
}

/// How many CPUs ember may run on (its affinity mask, and a cgroup CPU quota if any), if
/// the host says.
pub fn host_cpus() -> Option<u32> {
    std::thread::available_parallelism()
        .ok()
        .and_then(|n| u32::try_from(n.get()).ok())
}

impl VmConfig {
    /// The drives in the order the guest sees them (vda, vdb, ...): the root device first, as
    /// Firecracker does, so `root=/dev/vda` names it wherever the file lists it; the others
    /// keep their order.
    pub fn drives_in_guest_order(&self) -> Vec<Drive> {
        let mut drives = self.drives.clone();
        drives.sort_by_key(|d| !d.is_root_device);
        drives
    }

    /// Reads a configuration file: JSON, every field known.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let err = |reason: String| ConfigError::ConfigFile {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => err("no such file: check the path".into()),
            _ => err(format!("cannot read it ({e})")),
        })?;
        serde_json::from_str(&text).map_err(|e| {
            err(format!(
                "not a valid ember configuration ({e}): see docs/config.md"
            ))
        })
    }

    /// The kernel to boot: the configured one, or the default one, which must exist.
    pub fn kernel(&self) -> Result<PathBuf, ConfigError> {
        match &self.boot_source.kernel_image_path {
            Some(k) => Ok(k.clone()),
            None => {
                let k = default_kernel();
                if k.exists() {
                    Ok(k)
                } else {
                    Err(ConfigError::NoDefaultKernel(k))
                }
            }
        }
    }

    /// Validates everything that can be checked without KVM.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_except_kernel()?;
        check_file("kernel", &self.kernel()?)
    }

    /// Validates everything but the kernel file, which [`crate::resolve`] opens (once) itself.
    pub fn validate_except_kernel(&self) -> Result<(), ConfigError> {
        let m = &self.machine_config;
        if m.vcpu_count == 0 {
            return Err(ConfigError::NoVcpus);
        }
        // One vCPU always fits: skip the cgroup files available_parallelism reads.
        if m.vcpu_count > 1
            && let Some(host) = host_cpus()
            && m.vcpu_count > host
            && !m.overcommit_vcpus
        {
            return Err(ConfigError::MoreVcpusThanCpus {
                asked: m.vcpu_count,
                host,
            });
        }
        if m.mem_size_mib < MIN_MEM_MIB {
            return Err(ConfigError::MemTooSmall(m.mem_size_mib));
        }
        if let Some(host) = crate::memory::host_mem_total() {
            let host_mib = host >> 20;
            if m.mem_size_mib > host_mib {
                return Err(ConfigError::MemTooLarge {
                    asked: m.mem_size_mib,
                    host: host_mib,
                });
            }
        }
        if let Some(c) = &self.boot_source.boot_args {
            if c.len() >= CMDLINE_MAX_SIZE {
                return Err(ConfigError::CmdlineTooLong(c.len()));
            }
            if c.contains('\0') {
                return Err(ConfigError::CmdlineNul);
            }
        }
        match self.boot_source.initrd()? {
            InitrdChoice::File(p) => check_file("initrd", &p)?,
            // Read (and checked for being a static ELF) once, when the initramfs is built.
            InitrdChoice::Exec { program, .. } => check_file("--exec program", &program)?,
            InitrdChoice::BuiltIn | InitrdChoice::None => {}
        }
        self.validate_devices()
    }

    fn validate_devices(&self) -> Result<(), ConfigError> {
        for (what, count) in [
            ("drives", self.drives.len()),
            ("network-interfaces", self.network_interfaces.len()),
        ] {
            if count > MAX_DEVICES_PER_KIND {
                return Err(ConfigError::TooManyDevices { what, count });
            }
        }
        let mut roots = self.drives.iter().filter(|d| d.is_root_device);
        if let (Some(a), Some(b)) = (roots.next(), roots.next()) {
            return Err(ConfigError::TwoRoots(
                a.drive_id.clone(),
                b.drive_id.clone(),
            ));
        }
        let mut ids = std::collections::HashSet::new();
        let mut files = std::collections::HashSet::new();
        for d in &self.drives {
            if !ids.insert(d.drive_id.as_str()) {
                return Err(ConfigError::Duplicate {
                    what: "drive id",
                    value: d.drive_id.clone(),
                });
            }
            check_disk_file(&d.path_on_host, d.is_read_only)?;
            // The same file twice (by inode, whatever the path) would be two devices writing
            // one image behind each other's backs.
            if let Ok(meta) = std::fs::metadata(&d.path_on_host) {
                use std::os::unix::fs::MetadataExt;
                if !files.insert((meta.dev(), meta.ino())) {
                    return Err(ConfigError::Duplicate {
                        what: "disk",
                        value: d.path_on_host.display().to_string(),
                    });
                }
            }
        }
        let mut taps = std::collections::HashSet::new();
        for n in &self.network_interfaces {
            if !taps.insert(n.host_dev_name.as_str()) {
                return Err(ConfigError::Duplicate {
                    what: "TAP device",
                    value: n.host_dev_name.clone(),
                });
            }
            if let Some(mac) = &n.guest_mac {
                parse::parse_mac(mac).map_err(|reason| ConfigError::Value {
                    flag: "--net mac=",
                    value: mac.clone(),
                    reason,
                })?;
            }
        }
        if let Some(v) = &self.vsock {
            parse::check_vsock(v)?;
        }
        Ok(())
    }
}

/// Checks a disk image: a regular file, readable (and writable unless read-only).
fn check_disk_file(path: &Path, read_only: bool) -> Result<(), ConfigError> {
    let err = |reason: &str| ConfigError::File {
        what: "--disk",
        path: path.to_path_buf(),
        reason: reason.into(),
    };
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => err("no such file: check the path"),
        std::io::ErrorKind::PermissionDenied => err("permission denied: make it readable"),
        _ => err("cannot read it"),
    })?;
    if meta.is_dir() {
        return Err(err("is a directory: pass a disk image file"));
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied if !read_only => {
                err("not writable: make it writable, or add ,ro for a read-only disk")
            }
            std::io::ErrorKind::PermissionDenied => err("permission denied: make it readable"),
            _ => err("cannot open it"),
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> VmConfig {
        VmConfig {
            boot_source: BootSource {
                kernel_image_path: Some(PathBuf::from("/proc/self/exe")),
                no_initrd: true,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn more_vcpus_than_cpus_needs_the_overcommit_flag() {
        let cpus = host_cpus().expect("sched_getaffinity");
        let mut c = config();
        c.machine_config.vcpu_count = cpus;
        c.validate().unwrap();
        c.machine_config.vcpu_count = cpus + 1;
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains(&format!("--vcpus {}", cpus + 1))
                && e.contains(&format!("at most --vcpus {cpus}"))
                && e.contains("--overcommit-vcpus"),
            "{e}"
        );
        c.machine_config.overcommit_vcpus = true;
        c.validate().unwrap();
    }

    #[test]
    fn default_cmdline_fits() {
        assert!(DEFAULT_CMDLINE.len() < CMDLINE_MAX_SIZE);
        config().validate().unwrap();
    }

    #[test]
    fn bad_values_are_named() {
        let mut c = config();
        c.machine_config.vcpu_count = 0;
        assert!(c.validate().unwrap_err().to_string().contains("--vcpus 0"));
        let mut c = config();
        c.machine_config.mem_size_mib = 1;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("--mem-mib 1")
        );
        let mut c = config();
        c.machine_config.mem_size_mib = 1 << 40;
        assert!(matches!(c.validate(), Err(ConfigError::MemTooLarge { .. })));
        let mut c = config();
        c.boot_source.boot_args = Some("x".repeat(CMDLINE_MAX_SIZE));
        assert!(matches!(c.validate(), Err(ConfigError::CmdlineTooLong(_))));
        let mut c = config();
        c.boot_source.kernel_image_path = Some(PathBuf::from("/nonexistent/vmlinux"));
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("/nonexistent/vmlinux")
        );
        let mut c = config();
        c.boot_source.kernel_image_path = Some(PathBuf::from("/"));
        assert!(c.validate().unwrap_err().to_string().contains("directory"));
        let mut c = config();
        c.boot_source.initrd_path = Some(PathBuf::from("/proc/self/exe"));
        assert!(matches!(c.validate(), Err(ConfigError::InitrdConflict)));
    }

    #[test]
    fn errors_stay_on_one_line() {
        // Found by fuzz/fuzz_targets/config_validation.rs: a kernel path with a newline.
        let mut c = config();
        c.boot_source.kernel_image_path = Some(PathBuf::from("\0\n"));
        let msg = c.validate().unwrap_err().to_string();
        assert!(!msg.contains('\n'), "{msg}");
        assert!(msg.contains("\\n"), "{msg}");
        assert_eq!(one_line("a\tb\u{1b}c"), "a\\tb\\u{1b}c");
    }

    #[test]
    fn exec_must_be_static_elf() {
        let p = Path::new("x");
        assert!(matches!(
            check_static_elf(p, b"#!/bin/sh\n"),
            Err(ConfigError::ExecNotElf(_))
        ));
        // A minimal ELF64 header with one PT_INTERP program header.
        let mut elf = vec![0u8; 64 + 56];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[18] = 62;
        elf[32..40].copy_from_slice(&64u64.to_le_bytes());
        elf[54..56].copy_from_slice(&56u16.to_le_bytes());
        elf[56..58].copy_from_slice(&1u16.to_le_bytes());
        elf[64..68].copy_from_slice(&3u32.to_le_bytes());
        assert!(matches!(
            check_static_elf(p, &elf),
            Err(ConfigError::ExecDynamic(_))
        ));
        elf[64..68].copy_from_slice(&1u32.to_le_bytes());
        check_static_elf(p, &elf).unwrap();
        // Program headers pointing past the end are not an executable.
        elf[56..58].copy_from_slice(&100u16.to_le_bytes());
        assert!(check_static_elf(p, &elf).is_err());
    }

    #[test]
    fn json_round_trips_and_refuses_unknown_fields() {
        let text = r#"{
            "boot-source": {"kernel_image_path": "/k", "boot_args": "console=ttyS0"},
            "machine-config": {"vcpu_count": 2, "mem_size_mib": 256},
            "drives": [{"drive_id": "rootfs", "path_on_host": "/r.ext4", "is_root_device": true, "is_read_only": false}],
            "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0"}],
            "vsock": {"vsock_id": "vsock0", "guest_cid": 3, "uds_path": "/tmp/v.sock"},
            "timeout": "90s"
        }"#;
        let c: VmConfig = serde_json::from_str(text).unwrap();
        assert_eq!(c.machine_config.vcpu_count, 2);
        assert_eq!(c.drives[0].drive_id, "rootfs");
        assert_eq!(c.vsock.as_ref().unwrap().guest_cid, 3);
        assert_eq!(c.timeout, Some(Duration::from_secs(90)));
        let again: VmConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(again, c);
        let e = serde_json::from_str::<VmConfig>(r#"{"machine-config": {"vcpus": 2}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `vcpus`"), "{e}");
        // Defaults fill what a file leaves out.
        let c: VmConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c.machine_config, MachineConfig::default());
    }

    #[test]
    fn device_checks() {
        let dir = std::env::temp_dir().join(format!("ember-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let img = dir.join("a.img");
        std::fs::write(&img, [0u8; 512]).unwrap();
        let drive = |id: &str, path: &Path| Drive {
            drive_id: id.into(),
            path_on_host: path.into(),
            is_root_device: false,
            is_read_only: false,
        };
        let mut c = config();
        c.drives = vec![drive("a", &img)];
        c.validate().unwrap();
        c.drives.push(drive("b", &img));
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Duplicate { what: "disk", .. })
        ));
        c.drives = vec![drive("a", &dir)];
        assert!(c.validate().unwrap_err().to_string().contains("directory"));
        c.drives = vec![drive("a", &dir.join("missing"))];
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("no such file")
        );
        let mut r1 = drive("r1", &img);
        r1.is_root_device = true;
        let mut r2 = r1.clone();
        r2.drive_id = "r2".into();
        c.drives = vec![r1, r2];
        assert!(matches!(c.validate(), Err(ConfigError::TwoRoots(..))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
