//! The VM configuration: what to boot and with what. One serde type, [`VmConfig`], filled from
//! a JSON file (`ember run --config`), from command-line flags (which override the file), or
//! by a library user; its sections and field names follow Firecracker's configuration file
//! (`boot-source`, `machine-config`, `drives`, `network-interfaces`, `vsock`), so a Firecracker
//! user recognises them. Validation names the input, what is wrong with it and how to fix it.
//!
//! What a configuration means on a given host (the effective command line, the initrd bytes,
//! the default timeout) is worked out in [`crate::resolve`].

mod firecracker;
pub mod input;
mod parse;
mod validate;

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

pub use input::{Origin, Sources};
pub use parse::{
    parse_balloon, parse_disk, parse_duration, parse_mac, parse_mem_mib, parse_net, parse_rootfs,
    parse_vcpus, parse_vsock, show_duration,
};
pub use validate::{MAX_UDS_PATH, check_static_elf, host_cpus, open_input_file};

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
/// Most vCPUs: APIC ids are 8 bits in the MP table, and 255 is the broadcast id.
pub const MAX_VCPUS: u32 = 254;
/// The largest configuration file ember reads: checked before reading, so that a disk image
/// or a device passed by mistake costs nothing.
pub const MAX_CONFIG_FILE: u64 = 1 << 20;

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

/// Errors in the configuration. Each names the input as the user gave it (see [`input`]),
/// what is wrong, and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The default kernel is not built.
    #[error("default kernel {} is not built yet: run kernels/build.sh, or pass --kernel PATH", shown(.0))]
    NoDefaultKernel(PathBuf),
    /// A value is wrong: `input` names it with its value (`--vcpus 0`,
    /// `vm.json: machine-config.vcpu_count: 0`).
    #[error("{input}: {reason}")]
    Invalid {
        /// The input and its value.
        input: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// Two ways of choosing the initrd at once.
    #[error(
        "boot-source: initrd_path, exec and no_initrd exclude each other: keep one (--initrd, --exec, --no-initrd)"
    )]
    InitrdConflict,
    /// A program to run beside another way of choosing the initrd.
    #[error(
        "a program to run in the guest (`ember run -- PROG`, process) takes ember's own initramfs: drop --initrd, --exec and --no-initrd"
    )]
    ProcessConflict,
    /// The program to run is not found where the guest will look.
    #[error(
        "{name}: command not found in the guest's root ({looked}): check the name, or give its path"
    )]
    ProgramNotFound {
        /// The program as given.
        name: String,
        /// Where it was looked for.
        looked: String,
    },
    /// The program to run is there but cannot be run.
    #[error("{name}: {reason}")]
    ProgramNotExecutable {
        /// The program as given.
        name: String,
        /// Why not.
        reason: String,
    },
    /// Arguments for a program that is not there.
    #[error(
        "arguments after `--` go to the --exec program, but no --exec was given: add --exec PROG"
    )]
    ArgsWithoutExec,
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
    /// The built-in init running the configuration's `process` in its shared root.
    Process,
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
    /// A kernel's modules tree (its package's `/lib/modules/VERSION`), for a `process` on a
    /// kernel whose virtio-fs and vsock drivers are modules; default: the host's
    /// `/lib/modules/RELEASE` for a bzImage of that release, if there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modules: Option<PathBuf>,
}

impl VmConfig {
    /// The initrd this configuration chooses: a `process` takes the built-in init, and
    /// excludes the other choices.
    pub fn initrd_choice(&self) -> Result<InitrdChoice, ConfigError> {
        let b = &self.boot_source;
        match (
            &self.process,
            b.initrd_path.is_some() || b.exec.is_some() || b.no_initrd,
        ) {
            (Some(_), true) => Err(ConfigError::ProcessConflict),
            (Some(_), false) => Ok(InitrdChoice::Process),
            (None, _) => b.initrd(),
        }
    }
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
    // Firecracker's fields that ember accepts only at their defaults (config/firecracker.rs).
    /// Firecracker's `smt`: accepted when false.
    #[serde(default, skip_serializing)]
    pub smt: Option<Value>,
    /// Firecracker's `cpu_template`: accepted when `"None"`.
    #[serde(default, skip_serializing)]
    pub cpu_template: Option<Value>,
    /// Firecracker's `track_dirty_pages`: accepted when false.
    #[serde(default, skip_serializing)]
    pub track_dirty_pages: Option<Value>,
    /// Firecracker's `huge_pages`: accepted when `"None"`.
    #[serde(default, skip_serializing)]
    pub huge_pages: Option<Value>,
    /// Firecracker's `gdb_socket_path` (its gdb builds): accepted when null.
    #[serde(default, skip_serializing)]
    pub gdb_socket_path: Option<Value>,
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            vcpu_count: DEFAULT_VCPUS,
            mem_size_mib: DEFAULT_MEM_MIB,
            overcommit_vcpus: false,
            smt: None,
            cpu_template: None,
            track_dirty_pages: None,
            huge_pages: None,
            gdb_socket_path: None,
        }
    }
}

/// A block device backed by a host file (Firecracker's `drives`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    /// Its name; also the serial number the guest reads (GET_ID).
    pub drive_id: String,
    /// The backing file.
    pub path_on_host: PathBuf,
    /// The guest's root filesystem: `root=/dev/vda` goes on the command line.
    #[serde(default)]
    pub is_root_device: bool,
    /// Writes fail in the guest (the device refuses them). Firecracker writes null for false.
    #[serde(default, deserialize_with = "null_as_false")]
    pub is_read_only: bool,
    /// Where it came from, for messages.
    #[serde(skip)]
    pub origin: Origin,
    // Firecracker's fields that ember accepts only at their defaults (config/firecracker.rs).
    /// Firecracker's `partuuid`: accepted when null.
    #[serde(default, skip_serializing)]
    pub partuuid: Option<Value>,
    /// Firecracker's `cache_type`: `"Unsafe"` or `"Writeback"` (ember honours flushes).
    #[serde(default, skip_serializing)]
    pub cache_type: Option<Value>,
    /// Firecracker's `io_engine`: accepted when `"Sync"`.
    #[serde(default, skip_serializing)]
    pub io_engine: Option<Value>,
    /// Firecracker's `rate_limiter`: accepted when it limits nothing.
    #[serde(default, skip_serializing)]
    pub rate_limiter: Option<Value>,
    /// Firecracker's `socket` (vhost-user): accepted when null.
    #[serde(default, skip_serializing)]
    pub socket: Option<Value>,
}

/// A JSON boolean that may be null (Firecracker writes `"is_read_only": null`).
fn null_as_false<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(false))
}

/// A network interface backed by a host TAP device (Firecracker's `network-interfaces`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    /// Its name in the configuration.
    pub iface_id: String,
    /// The TAP device, created by the user beforehand.
    pub host_dev_name: String,
    /// The guest's MAC address (`aa:bb:cc:dd:ee:ff`); default: one derived from the TAP name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// Where it came from, for messages.
    #[serde(skip)]
    pub origin: Origin,
    // Firecracker's fields that ember accepts only at their defaults (config/firecracker.rs).
    /// Firecracker's `mtu`: accepted when null.
    #[serde(default, skip_serializing)]
    pub mtu: Option<Value>,
    /// Firecracker's `rx_rate_limiter`: accepted when it limits nothing.
    #[serde(default, skip_serializing)]
    pub rx_rate_limiter: Option<Value>,
    /// Firecracker's `tx_rate_limiter`: accepted when it limits nothing.
    #[serde(default, skip_serializing)]
    pub tx_rate_limiter: Option<Value>,
}

/// A host directory the guest sees, served by ember over virtio-fs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedDir {
    /// The directory on the host.
    pub path_on_host: PathBuf,
    /// Where the guest sees it: `/` for the guest's root (with `process`).
    pub guest_path: PathBuf,
    /// Whether the guest may change it. A read-only root gets an in-memory overlay: the guest
    /// can write, and its writes vanish with the VM; the host's files never change.
    #[serde(default)]
    pub writable: bool,
    /// Where it came from, for messages.
    #[serde(skip)]
    pub origin: Origin,
}

/// Who a process runs as in the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// User id.
    #[serde(default)]
    pub uid: u32,
    /// Group id.
    #[serde(default)]
    pub gid: u32,
    /// Supplementary groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_gids: Vec<u32>,
}

/// A program to run in the guest, from its shared root (`shares`), with its output and exit
/// status ember's own: `ember run -- CMD`. The fields follow the OCI runtime spec's `process`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Process {
    /// The program and its arguments; the program is looked up on `PATH` in the guest's root
    /// unless it holds a `/`.
    pub args: Vec<String>,
    /// Its environment, `NAME=VALUE`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Its working directory, in the guest.
    #[serde(default = "root_dir")]
    pub cwd: PathBuf,
    /// Who it runs as.
    #[serde(default)]
    pub user: User,
    /// Whether it gets a terminal (a pty in the guest), as for an interactive shell;
    /// otherwise its stdin, stdout and stderr stay apart.
    #[serde(default)]
    pub terminal: bool,
    /// Whether the guest kernel's log shows (otherwise the kernel is `quiet`, and its log is
    /// kept to explain a boot that never reaches the program).
    #[serde(default)]
    pub kernel_log: bool,
}

fn root_dir() -> PathBuf {
    PathBuf::from("/")
}

/// A vsock device (Firecracker's `vsock`, with its host-side convention: a host process
/// connects to `uds_path` and sends `CONNECT <port>\n`; a guest connection to port P reaches
/// the listener at `<uds_path>_P`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    /// Firecracker's device id (accepted, unused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
    /// The guest's context id (3 or more).
    pub guest_cid: u32,
    /// The Unix socket ember listens on; it must not exist yet.
    pub uds_path: PathBuf,
    /// Where it came from, for messages.
    #[serde(skip)]
    pub origin: Origin,
}

/// A virtio-balloon device (Firecracker's `balloon`): the host asks the guest for
/// `amount_mib` of its memory back (the guest puts that much in the balloon, and ember gives
/// those pages back to the host), and, with `free_page_reporting`, the guest reports the
/// memory it frees, which ember gives back too. The target can change while the VM runs
/// (the control socket's `PATCH /balloon`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Balloon {
    /// How much of the guest's memory the host asks for, in MiB.
    pub amount_mib: u32,
    /// Whether the guest may take pages back out of the balloon when it runs out of memory.
    pub deflate_on_oom: bool,
    /// Whether the guest reports the memory it frees (Linux 5.7+), for ember to give back.
    #[serde(default)]
    pub free_page_reporting: bool,
    /// Firecracker's statistics queue: accepted at 0 (ember's balloon has none).
    #[serde(default, skip_serializing)]
    pub stats_polling_interval_s: Option<Value>,
    /// Firecracker's free page hinting: accepted when false (reporting does the same job
    /// while the guest runs).
    #[serde(default, skip_serializing)]
    pub free_page_hinting: Option<Value>,
    /// Where it came from, for messages.
    #[serde(skip)]
    pub origin: Origin,
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
    /// The balloon device, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<Balloon>,
    /// Host directories the guest sees (virtio-fs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shares: Vec<SharedDir>,
    /// A program to run in the guest's shared root instead of the greeting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
    /// Stop the guest if it still runs after this long (`"90s"`, `"5m"`; `"0"`: never).
    /// Default: none, except for a Linux guest on a PVM host ([`PVM_LINUX_TIMEOUT`]).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "parse::duration_text"
    )]
    pub timeout: Option<Duration>,
    // Firecracker's top-level sections ember accepts only at their defaults
    // (config/firecracker.rs).
    /// Firecracker's `cpu-config`: accepted when null.
    #[serde(rename = "cpu-config", default, skip_serializing)]
    pub cpu_config: Option<Value>,
    /// Firecracker's `logger`: accepted when null or empty.
    #[serde(default, skip_serializing)]
    pub logger: Option<Value>,
    /// Firecracker's `metrics`: accepted when null.
    #[serde(default, skip_serializing)]
    pub metrics: Option<Value>,
    /// Firecracker's `mmds-config`: accepted when null.
    #[serde(rename = "mmds-config", default, skip_serializing)]
    pub mmds_config: Option<Value>,
    /// Firecracker's `entropy`: accepted when null.
    #[serde(default, skip_serializing)]
    pub entropy: Option<Value>,
    /// Firecracker's `pmem`: accepted when empty.
    #[serde(default, skip_serializing)]
    pub pmem: Option<Value>,
    /// Firecracker's `memory-hotplug`: accepted when null.
    #[serde(rename = "memory-hotplug", default, skip_serializing)]
    pub memory_hotplug: Option<Value>,
    /// Where the values came from, for messages.
    #[serde(skip)]
    pub sources: Sources,
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

impl VmConfig {
    /// Reads a configuration file: a regular JSON file of at most [`MAX_CONFIG_FILE`] bytes,
    /// checked before it is read (a FIFO, a device or a disk image passed by mistake is
    /// refused at once), every field known.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let err = |reason: String| ConfigError::ConfigFile {
            path: path.to_path_buf(),
            reason,
        };
        // Non-blocking, so that opening a FIFO does not wait for a writer.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| err(validate::open_failure(&e, false, "")))?;
        let meta = file
            .metadata()
            .map_err(|e| err(format!("cannot read it ({e})")))?;
        if !meta.file_type().is_file() {
            return Err(err(format!(
                "{}, not a regular file: pass a JSON file",
                validate::kind_of(&meta)
            )));
        }
        if meta.len() > MAX_CONFIG_FILE {
            return Err(err(format!(
                "{} bytes, more than a configuration file may be ({} KiB): pass the JSON file, not an image",
                meta.len(),
                MAX_CONFIG_FILE >> 10
            )));
        }
        let mut text = String::new();
        file.take(MAX_CONFIG_FILE)
            .read_to_string(&mut text)
            .map_err(|e| err(format!("cannot read it as text ({e})")))?;
        let mut c: VmConfig = serde_json::from_str(&text).map_err(|e| {
            // serde quotes the file's own text (an unknown field's name), newlines and all.
            err(format!(
                "not a valid ember configuration ({}): see docs/config.md",
                one_line(&e.to_string())
            ))
        })?;
        c.sources.file = Some(path.to_path_buf());
        Ok(c)
    }

    /// The drives in the order the guest sees them (vda, vdb, ...): the root device first, as
    /// Firecracker does, so `root=/dev/vda` names it wherever the file lists it; the others
    /// keep their order.
    pub fn drives_in_guest_order(&self) -> Vec<Drive> {
        let mut drives = self.drives.clone();
        drives.sort_by_key(|d| !d.is_root_device);
        drives
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

    /// The kernel's input as the user gave it, with its path.
    pub fn kernel_input(&self, path: &Path) -> String {
        self.sources
            .at("boot-source.kernel_image_path", &input::path_value(path))
    }

    /// A drive's field as the user gave it: `--disk a.img,ro` or
    /// `vm.json: drives[1].path_on_host: a.img`.
    pub fn drive_at(&self, d: &Drive, field: &str, value: &dyn std::fmt::Display) -> String {
        let index = config_index(&self.drives, d, |x| &x.origin);
        self.sources
            .device_at(&d.origin, "drives", index, field, value)
    }

    /// A network interface's field as the user gave it.
    pub fn net_at(
        &self,
        n: &NetworkInterface,
        field: &str,
        value: &dyn std::fmt::Display,
    ) -> String {
        let index = config_index(&self.network_interfaces, n, |x| &x.origin);
        self.sources
            .device_at(&n.origin, "network-interfaces", index, field, value)
    }

    /// A share's field as the user gave it.
    pub fn share_at(&self, d: &SharedDir, field: &str, value: &dyn std::fmt::Display) -> String {
        let index = config_index(&self.shares, d, |x| &x.origin);
        self.sources
            .device_at(&d.origin, "shares", index, field, value)
    }

    /// The balloon's field as the user gave it.
    pub fn balloon_at(&self, b: &Balloon, field: &str, value: &dyn std::fmt::Display) -> String {
        match &b.origin {
            Origin::Flag { .. } => self
                .sources
                .device_at(&b.origin, "balloon", 0, field, value),
            Origin::Config => self.sources.field_at(&format!("balloon.{field}"), value),
        }
    }

    /// The vsock device's field as the user gave it.
    pub fn vsock_at(&self, v: &Vsock, field: &str, value: &dyn std::fmt::Display) -> String {
        match &v.origin {
            Origin::Flag { .. } => self.sources.device_at(&v.origin, "vsock", 0, field, value),
            Origin::Config => self.sources.field_at(&format!("vsock.{field}"), value),
        }
    }
}

/// The index of `item` among the entries of `list` that came from the configuration: its
/// place in the file's array (flags add theirs before or after them).
fn config_index<T: PartialEq>(list: &[T], item: &T, origin: impl Fn(&T) -> &Origin) -> usize {
    list.iter()
        .take_while(|x| *x != item)
        .filter(|x| *origin(x) == Origin::Config)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Every field of Firecracker's configuration file, each at its null or default value,
    /// as Firecracker itself writes them.
    const FIRECRACKER_FILE: &str = r#"{
        "boot-source": {"kernel_image_path": "KERNEL", "boot_args": "console=ttyS0 reboot=k panic=1", "initrd_path": null},
        "drives": [{"drive_id": "rootfs", "partuuid": null, "is_root_device": true, "cache_type": "Unsafe",
                    "is_read_only": null, "path_on_host": "DISK", "io_engine": "Sync", "rate_limiter": null, "socket": null}],
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128, "smt": false, "cpu_template": null,
                           "track_dirty_pages": false, "huge_pages": "None"},
        "cpu-config": null,
        "balloon": null,
        "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:c0:a8:00:02",
                                "mtu": null, "rx_rate_limiter": null, "tx_rate_limiter": {"bandwidth": null, "ops": null}}],
        "vsock": {"vsock_id": "vsock0", "guest_cid": 3, "uds_path": "SOCK"},
        "logger": null, "metrics": null, "mmds-config": null, "entropy": null, "pmem": [], "memory-hotplug": null
    }"#;

    #[test]
    fn firecracker_files_load_and_what_ember_does_not_do_is_named() {
        let dir = std::env::temp_dir().join(format!("ember-fc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let disk = dir.join("rootfs.ext4");
        std::fs::write(&disk, [0u8; 4096]).unwrap();
        let file = dir.join("vm_config.json");
        let text = FIRECRACKER_FILE
            .replace("KERNEL", "/proc/self/exe")
            .replace("DISK", disk.to_str().unwrap())
            .replace("SOCK", dir.join("v.sock").to_str().unwrap());
        std::fs::write(&file, &text).unwrap();
        let c = VmConfig::from_file(&file).unwrap();
        firecracker::check(&c).unwrap();
        assert!(!c.drives[0].is_read_only);
        for (from, to, says) in [
            (
                "\"smt\": false",
                "\"smt\": true",
                "machine-config.smt: true: not supported by ember",
            ),
            (
                "\"io_engine\": \"Sync\"",
                "\"io_engine\": \"Async\"",
                "drives[0].io_engine: \"Async\": not supported",
            ),
            (
                "\"socket\": null",
                "\"socket\": \"/x.sock\"",
                "drives[0].socket",
            ),
            (
                "\"mtu\": null",
                "\"mtu\": 1400",
                "network-interfaces[0].mtu: 1400",
            ),
            (
                "\"balloon\": null",
                "\"balloon\": {\"amount_mib\": 1, \"deflate_on_oom\": true, \"stats_polling_interval_s\": 5}",
                "balloon.stats_polling_interval_s: 5: not supported by ember (no statistics queue",
            ),
            (
                "\"pmem\": []",
                "\"pmem\": [{\"id\": \"p\", \"path_on_host\": \"/x\"}]",
                "pmem",
            ),
            (
                "\"logger\": null",
                "\"logger\": {\"level\": \"Info\"}",
                "use --log-level",
            ),
        ] {
            assert!(text.contains(from), "{from}");
            std::fs::write(&file, text.replace(from, to)).unwrap();
            let e = VmConfig::from_file(&file)
                .and_then(|c| firecracker::check(&c))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(says) && e.contains(&*file.to_string_lossy()),
                "{to}: {e}"
            );
            assert!(!e.contains("unknown field"), "{e}");
        }
        // A field Firecracker does not define stays refused.
        std::fs::write(
            &file,
            text.replace("\"smt\": false", "\"smt\": false, \"turbo\": 1"),
        )
        .unwrap();
        let e = VmConfig::from_file(&file).unwrap_err().to_string();
        assert!(e.contains("unknown field `turbo`"), "{e}");
        // Found by fuzz/fuzz_targets/config_file.rs: an unknown field whose name holds a
        // newline (a JSON escape), quoted back by serde.
        std::fs::write(&file, "{\"a\\nb\": 1}").unwrap();
        let e = VmConfig::from_file(&file).unwrap_err().to_string();
        assert!(!e.contains('\n') && e.contains("a\\nb"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_config_file_is_checked_before_it_is_read() {
        for (path, says) in [
            ("/dev/zero", "a character device, not a regular file"),
            ("/", "a directory, not a regular file"),
            ("/nonexistent.json", "no such file"),
        ] {
            let e = VmConfig::from_file(Path::new(path))
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(&format!("--config {path}: ")) && e.contains(says),
                "{e}"
            );
        }
        let dir = std::env::temp_dir().join(format!("ember-cfgfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("disk.img");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(MAX_CONFIG_FILE + 1).unwrap();
        let e = VmConfig::from_file(&big).unwrap_err().to_string();
        assert!(e.contains("more than a configuration file may be"), "{e}");
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a live NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = VmConfig::from_file(&fifo).unwrap_err().to_string();
        assert!(e.contains("a FIFO, not a regular file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
