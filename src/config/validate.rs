//! Checking a configuration before anything is built: every value in range, every file what it
//! must be (opened once, before it is read), every id and device unique. Each error names the
//! input as the user gave it ([`super::input`]) and says how to fix it.

use std::collections::HashSet;
use std::fs::{File, Metadata};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use super::input::{Origin, path_value};
use super::{
    Balloon, CMDLINE_MAX_SIZE, ConfigError, Drive, InitrdChoice, MAX_DEVICES_PER_KIND, MAX_VCPUS,
    MIN_MEM_MIB, NetworkInterface, VmConfig, Vsock, firecracker, parse,
};

/// The longest vsock socket path: a guest connection to port P reaches `<path>_P`, and
/// `_4294967295` (11 bytes) with the path must fit a Unix socket address (107 bytes).
pub const MAX_UDS_PATH: usize = 107 - 11;
/// The bytes of a drive id the guest sees (the virtio-blk serial number).
const DRIVE_ID_BYTES: usize = 20;

fn invalid(input: String, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        input,
        reason: reason.into(),
    }
}

/// What kind of file `meta` is, for a message: "a directory", "a FIFO", ...
pub(super) fn kind_of(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_file() {
        "a regular file"
    } else {
        "not a file"
    }
}

/// Why opening failed, and the fix: `ro_hint` says how this input makes a disk read-only
/// (empty for a file that is only read).
pub(super) fn open_failure(e: &std::io::Error, writable: bool, ro_hint: &str) -> String {
    let add_ro = if ro_hint.is_empty() {
        String::new()
    } else {
        format!(", or {ro_hint} for a read-only disk")
    };
    match e.raw_os_error() {
        Some(libc::ENOENT) => "no such file: check the path".into(),
        Some(libc::EACCES) | Some(libc::EPERM) if writable => {
            format!("not writable ({e}): make it writable{add_ro}")
        }
        Some(libc::EACCES) | Some(libc::EPERM) => {
            format!("permission denied ({e}): make it readable")
        }
        Some(libc::EROFS) => {
            format!("on a read-only file system ({e}): remount it writable{add_ro}")
        }
        Some(libc::ELOOP) => format!("a loop of symbolic links ({e}): fix the link"),
        Some(libc::EISDIR) => "is a directory: pass a file".into(),
        Some(libc::ENOTDIR) => format!("a folder on the way is not a folder ({e}): check the path"),
        _ => format!("cannot open it ({e})"),
    }
}

/// Opens a file ember reads (a kernel, an initrd, a program) for the input `input` (its
/// name and value): a non-empty regular file, opened once, without blocking on a FIFO.
pub fn open_input_file(input: String, path: &Path) -> Result<File, ConfigError> {
    if path.as_os_str().is_empty() {
        return Err(invalid(input, "empty: give a file's path"));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| invalid(input.clone(), open_failure(&e, false, "")))?;
    let meta = file
        .metadata()
        .map_err(|e| invalid(input.clone(), format!("cannot read it ({e})")))?;
    if !meta.file_type().is_file() {
        return Err(invalid(
            input,
            format!("{}, not a regular file: pass a file", kind_of(&meta)),
        ));
    }
    if meta.len() == 0 {
        return Err(invalid(input, "is empty: pass a real image"));
    }
    Ok(file)
}

/// Checks that `bytes` (the file behind `input`) are a static x86_64 ELF executable.
pub fn check_static_elf(input: String, bytes: &[u8]) -> Result<(), ConfigError> {
    let not_elf = || {
        invalid(
            input.clone(),
            "not an x86_64 ELF executable: pass a static Linux program",
        )
    };
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
        let Some(ph) = bytes.get(off..off.saturating_add(4)) else {
            return Err(not_elf());
        };
        const PT_INTERP: u32 = 3;
        if u32::from_le_bytes([ph[0], ph[1], ph[2], ph[3]]) == PT_INTERP {
            return Err(invalid(
                input,
                "dynamically linked, but the guest has no shared libraries: build it static (gcc -static, or RUSTFLAGS='-C target-feature=+crt-static')",
            ));
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
    /// Validates everything that can be checked without KVM.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_except_kernel()?;
        let k = self.kernel()?;
        open_input_file(self.kernel_input(&k), &k).map(drop)
    }

    /// Validates everything but the kernel file, which [`crate::resolve`] opens (once) itself.
    pub fn validate_except_kernel(&self) -> Result<(), ConfigError> {
        firecracker::check(self)?;
        self.validate_machine()?;
        self.validate_boot()?;
        self.validate_drives()?;
        self.validate_nets()?;
        if let Some(v) = &self.vsock {
            self.validate_vsock(v)?;
        }
        if let Some(b) = &self.balloon {
            self.validate_balloon(b)?;
        }
        self.validate_shares()?;
        if let Some(p) = &self.process {
            self.validate_process(p)?;
        }
        Ok(())
    }

    fn validate_shares(&self) -> Result<(), ConfigError> {
        if self.shares.len() > MAX_DEVICES_PER_KIND {
            return Err(invalid(
                self.sources.name("shares"),
                format!(
                    "{} shared directories, more than ember offers ({MAX_DEVICES_PER_KIND}): use fewer",
                    self.shares.len()
                ),
            ));
        }
        let mut seen = HashSet::new();
        for (i, d) in self.shares.iter().enumerate() {
            let host = self.share_at(d, "path_on_host", &path_value(&d.path_on_host));
            match std::fs::metadata(&d.path_on_host) {
                Ok(m) if m.is_dir() => {}
                Ok(m) => {
                    return Err(invalid(
                        host,
                        format!("{}, not a directory: pass a directory", kind_of(&m)),
                    ));
                }
                Err(e) => return Err(invalid(host, open_failure(&e, false, ""))),
            }
            let guest = self.share_at(d, "guest_path", &path_value(&d.guest_path));
            let normal = d.guest_path.is_absolute()
                && d.guest_path.components().all(|c| {
                    matches!(
                        c,
                        std::path::Component::RootDir | std::path::Component::Normal(_)
                    )
                });
            if !normal {
                return Err(invalid(
                    guest,
                    "not an absolute path without . or ..: give where the guest sees it, from /",
                ));
            }
            if !seen.insert(d.guest_path.clone()) {
                return Err(invalid(
                    guest,
                    "two shares at the same place in the guest: move one",
                ));
            }
            if self.process.is_some() && i == 0 && d.guest_path != Path::new("/") {
                return Err(invalid(
                    guest,
                    "the first share is the guest's root when a program runs: its guest_path must be /",
                ));
            }
        }
        Ok(())
    }

    fn validate_process(&self, p: &super::Process) -> Result<(), ConfigError> {
        let field = |f: &str, v: &dyn std::fmt::Display| self.sources.field_at(f, v);
        if self.shares.is_empty() {
            return Err(invalid(
                self.sources.name("process"),
                "a program needs a root to run in: add a share at guest_path /",
            ));
        }
        let Some(program) = p.args.first() else {
            return Err(invalid(
                field("process.args", &"[]"),
                "no program: give at least the program's name",
            ));
        };
        if program.is_empty() {
            return Err(invalid(
                field("process.args[0]", &"\"\""),
                "the program's name is empty",
            ));
        }
        if let Some(a) = p.args.iter().find(|a| a.contains('\0')) {
            return Err(invalid(
                field("process.args", &format!("{a:?}")),
                "an argument holds a NUL byte, which no program can be given: remove it",
            ));
        }
        for e in &p.env {
            if e.contains('\0') || e.split_once('=').is_none_or(|(k, _)| k.is_empty()) {
                return Err(invalid(
                    field("process.env", &format!("{e:?}")),
                    "not NAME=VALUE (without NUL bytes)",
                ));
            }
        }
        if !p.cwd.is_absolute() {
            return Err(invalid(
                field("process.cwd", &path_value(&p.cwd)),
                "not an absolute path: give the guest's working directory from /",
            ));
        }
        Ok(())
    }

    fn validate_machine(&self) -> Result<(), ConfigError> {
        let m = &self.machine_config;
        let vcpus = |reason: String| {
            invalid(
                self.sources.at("machine-config.vcpu_count", &m.vcpu_count),
                reason,
            )
        };
        if m.vcpu_count == 0 {
            return Err(vcpus("a VM needs at least one vCPU: use 1 or more".into()));
        }
        if m.vcpu_count > MAX_VCPUS {
            return Err(vcpus(format!(
                "more than ember supports ({MAX_VCPUS}, the 8-bit APIC ids): use at most {MAX_VCPUS}"
            )));
        }
        // One vCPU always fits: skip the cgroup files available_parallelism reads.
        if m.vcpu_count > 1
            && let Some(host) = host_cpus()
            && m.vcpu_count > host
            && !m.overcommit_vcpus
        {
            let allow = if self.sources.is_flag("machine-config.vcpu_count") {
                "add --overcommit-vcpus".to_string()
            } else {
                format!(
                    "set {} to true",
                    self.sources.name("machine-config.overcommit_vcpus")
                )
            };
            return Err(vcpus(format!(
                "more than the {host} CPUs this host gives ember: use at most {host}, or {allow} to let the vCPUs share CPUs"
            )));
        }
        let mem = |reason: String| {
            invalid(
                self.sources
                    .at("machine-config.mem_size_mib", &m.mem_size_mib),
                reason,
            )
        };
        if m.mem_size_mib < MIN_MEM_MIB {
            return Err(mem(format!(
                "below the minimum of {MIN_MEM_MIB} MiB: use {MIN_MEM_MIB} or more"
            )));
        }
        if let Some(host) = crate::memory::host_mem_total() {
            let host_mib = host >> 20;
            if m.mem_size_mib > host_mib {
                return Err(mem(format!(
                    "more than this host's {host_mib} MiB of RAM: use at most {host_mib}"
                )));
            }
        }
        Ok(())
    }

    fn validate_boot(&self) -> Result<(), ConfigError> {
        let b = &self.boot_source;
        if let Some(c) = &b.boot_args {
            let input = || self.sources.name("boot-source.boot_args");
            if c.len() >= CMDLINE_MAX_SIZE {
                return Err(invalid(
                    input(),
                    format!(
                        "{} bytes, more than the x86 boot protocol allows ({}): shorten it",
                        c.len(),
                        CMDLINE_MAX_SIZE - 1
                    ),
                ));
            }
            if c.contains('\0') {
                return Err(invalid(
                    input(),
                    "contains a NUL byte, which would end it early: remove it",
                ));
            }
        }
        match self.initrd_choice()? {
            InitrdChoice::File(p) => {
                let input = self.sources.at("boot-source.initrd_path", &path_value(&p));
                open_input_file(input, &p)?;
            }
            // Read (and checked for being a static ELF) once, when the initramfs is built.
            InitrdChoice::Exec { program, .. } => {
                let input = self
                    .sources
                    .at("boot-source.exec.program", &path_value(&program));
                open_input_file(input, &program)?;
            }
            InitrdChoice::BuiltIn | InitrdChoice::None | InitrdChoice::Process => {}
        }
        Ok(())
    }

    fn validate_drives(&self) -> Result<(), ConfigError> {
        if self.drives.len() > MAX_DEVICES_PER_KIND {
            return Err(invalid(
                self.sources.name("drives"),
                format!(
                    "{} drives, more than ember offers ({MAX_DEVICES_PER_KIND}): use fewer",
                    self.drives.len()
                ),
            ));
        }
        let mut roots = self.drives.iter().filter(|d| d.is_root_device);
        if let (Some(_), Some(b)) = (roots.next(), roots.next()) {
            return Err(invalid(
                self.drive_at(b, "is_root_device", &true),
                "a second root device: only one drive can be the root filesystem (--rootfs once)",
            ));
        }
        let mut ids: Vec<&str> = Vec::new();
        let mut files = HashSet::new();
        for d in &self.drives {
            let at = |field: &str, value: &dyn std::fmt::Display| self.drive_at(d, field, value);
            let id = d.drive_id.as_str();
            if id.is_empty() {
                return Err(invalid(
                    at("drive_id", &"\"\""),
                    "the drive id is empty: give the drive a name",
                ));
            }
            if let Some(other) = ids.iter().find(|o| {
                **o == id
                    || o.as_bytes()
                        .iter()
                        .take(DRIVE_ID_BYTES)
                        .eq(id.as_bytes().iter().take(DRIVE_ID_BYTES))
            }) {
                let reason = if *other == id {
                    "this drive id is given twice: give each drive its own".to_string()
                } else {
                    format!(
                        "the guest sees a drive id's first {DRIVE_ID_BYTES} bytes as its serial number, and these match drive {other:?}'s: make them differ there"
                    )
                };
                return Err(invalid(at("drive_id", &format!("{id:?}")), reason));
            }
            ids.push(id);
            let meta = check_disk(at("path_on_host", &path_value(&d.path_on_host)), d)?;
            // The same file twice (by inode, whatever the path) would be two devices writing
            // one image behind each other's backs.
            if !files.insert((meta.dev(), meta.ino())) {
                return Err(invalid(
                    at("path_on_host", &path_value(&d.path_on_host)),
                    "the same disk image is given twice: each drive needs its own",
                ));
            }
        }
        Ok(())
    }

    fn validate_nets(&self) -> Result<(), ConfigError> {
        if self.network_interfaces.len() > MAX_DEVICES_PER_KIND {
            return Err(invalid(
                self.sources.name("network-interfaces"),
                format!(
                    "{} interfaces, more than ember offers ({MAX_DEVICES_PER_KIND}): use fewer",
                    self.network_interfaces.len()
                ),
            ));
        }
        let (mut ids, mut taps, mut macs) = (HashSet::new(), HashSet::new(), HashSet::new());
        for n in &self.network_interfaces {
            let at = |field: &str, value: &dyn std::fmt::Display| self.net_at(n, field, value);
            if n.iface_id.is_empty() {
                return Err(invalid(
                    at("iface_id", &"\"\""),
                    "the interface id is empty: give it a name",
                ));
            }
            if !ids.insert(n.iface_id.as_str()) {
                return Err(invalid(
                    at("iface_id", &format!("{:?}", n.iface_id)),
                    "this interface id is given twice: give each interface its own",
                ));
            }
            check_tap_name(at("host_dev_name", &format!("{:?}", n.host_dev_name)), n)?;
            if !taps.insert(n.host_dev_name.as_str()) {
                return Err(invalid(
                    at("host_dev_name", &format!("{:?}", n.host_dev_name)),
                    "this TAP device is given twice: each interface needs its own",
                ));
            }
            if let Some(mac) = &n.guest_mac {
                let input = at("guest_mac", &format!("{mac:?}"));
                let bytes = parse::parse_mac(mac).map_err(|r| invalid(input.clone(), r))?;
                if !macs.insert(bytes) {
                    return Err(invalid(
                        input,
                        "this MAC address is given twice: each interface needs its own",
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_balloon(&self, b: &Balloon) -> Result<(), ConfigError> {
        let mem = self.machine_config.mem_size_mib;
        if u64::from(b.amount_mib) >= mem {
            return Err(invalid(
                self.balloon_at(b, "amount_mib", &b.amount_mib),
                format!(
                    "the guest has {mem} MiB in all, and a balloon of that much would leave it nothing: ask for less than {mem}"
                ),
            ));
        }
        Ok(())
    }

    fn validate_vsock(&self, v: &Vsock) -> Result<(), ConfigError> {
        let cid = self.vsock_at(v, "guest_cid", &v.guest_cid);
        match v.guest_cid {
            0..=2 => {
                return Err(invalid(
                    cid,
                    "CIDs 0, 1 and 2 are reserved (2 is the host): use 3 or more",
                ));
            }
            u32::MAX => {
                return Err(invalid(
                    cid,
                    "that is VMADDR_CID_ANY, which no guest can have: use 3 to 4294967294",
                ));
            }
            _ => {}
        }
        let uds = self.vsock_at(v, "uds_path", &path_value(&v.uds_path));
        let err = |reason: String| invalid(uds.clone(), reason);
        let len = v.uds_path.as_os_str().len();
        if len == 0 {
            return Err(err("empty: give the socket's path".into()));
        }
        if len > MAX_UDS_PATH {
            return Err(err(format!(
                "{len} bytes, longer than ember allows ({MAX_UDS_PATH}): a guest connection to port P reaches PATH_P, and that must fit a Unix socket address (107 bytes); use a shorter path"
            )));
        }
        if std::fs::symlink_metadata(&v.uds_path).is_ok() {
            return Err(err(
                "already exists: remove it, or pick a path ember can create its socket at".into(),
            ));
        }
        let parent = match v.uds_path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        if !parent.is_dir() {
            return Err(err(format!(
                "its folder {} does not exist: create it first",
                super::shown(&parent)
            )));
        }
        Ok(())
    }
}

/// A TAP device's name: 1 to 15 bytes (IFNAMSIZ with its NUL), no `/`.
fn check_tap_name(input: String, n: &NetworkInterface) -> Result<(), ConfigError> {
    let name = &n.host_dev_name;
    if name.is_empty()
        || name.len() > 15
        || name.contains('/')
        || name.contains(char::is_whitespace)
    {
        return Err(invalid(
            input,
            "a network device name is 1 to 15 characters, without / or spaces: pass the name of a TAP made with ip tuntap add NAME mode tap",
        ));
    }
    Ok(())
}

/// Checks a disk image: it opens as the drive needs it (writable unless read-only), and is a
/// regular file or a block device of at least one sector.
fn check_disk(input: String, d: &Drive) -> Result<Metadata, ConfigError> {
    let ro_hint = match d.origin {
        Origin::Flag { flag: "--disk", .. } => "add ,ro",
        Origin::Flag { .. } => "",
        Origin::Config => "set is_read_only to true",
    };
    if d.path_on_host.as_os_str().is_empty() {
        return Err(invalid(input, "empty: give the disk image's path"));
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(!d.is_read_only)
        .custom_flags(libc::O_NONBLOCK)
        .open(&d.path_on_host)
        .map_err(|e| invalid(input.clone(), open_failure(&e, !d.is_read_only, ro_hint)))?;
    let meta = file
        .metadata()
        .map_err(|e| invalid(input.clone(), format!("cannot read it ({e})")))?;
    let kind = meta.file_type();
    if !kind.is_file() && !kind.is_block_device() {
        return Err(invalid(
            input,
            format!(
                "{}, not a disk image: pass a regular file or a block device",
                kind_of(&meta)
            ),
        ));
    }
    // A block device's size is its length, which lseek reports (its metadata says 0).
    let len = file.seek(SeekFrom::End(0)).unwrap_or(0);
    if len < 512 {
        return Err(invalid(
            input,
            format!("{len} bytes: a disk needs at least one 512-byte sector"),
        ));
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::BootSource;

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

    fn from_file(mut c: VmConfig) -> VmConfig {
        c.sources.file = Some("vm.json".into());
        c
    }

    fn err(c: &VmConfig) -> String {
        c.validate().unwrap_err().to_string()
    }

    #[test]
    fn more_vcpus_than_cpus_needs_the_overcommit_flag() {
        let cpus = host_cpus().expect("sched_getaffinity");
        let mut c = config();
        c.machine_config.vcpu_count = cpus;
        c.validate().unwrap();
        c.machine_config.vcpu_count = cpus + 1;
        c.sources.set_by("machine-config.vcpu_count", "--vcpus");
        let e = err(&c);
        assert!(
            e.starts_with(&format!("--vcpus {}: ", cpus + 1))
                && e.contains(&format!("use at most {cpus}"))
                && e.contains("add --overcommit-vcpus"),
            "{e}"
        );
        let mut f = from_file(c.clone());
        f.sources.flags.clear();
        let e = err(&f);
        assert!(
            e.contains("set vm.json: machine-config.overcommit_vcpus to true"),
            "{e}"
        );
        c.machine_config.overcommit_vcpus = true;
        c.validate().unwrap();
    }

    #[test]
    fn values_are_named_as_the_user_gave_them() {
        let mut c = config();
        c.machine_config.vcpu_count = 0;
        assert_eq!(
            err(&c),
            "machine-config.vcpu_count: 0: a VM needs at least one vCPU: use 1 or more"
        );
        c.sources.set_by("machine-config.vcpu_count", "--vcpus");
        assert!(err(&c).starts_with("--vcpus 0: "), "{}", err(&c));
        let mut c = from_file(config());
        c.machine_config.vcpu_count = 0;
        assert!(
            err(&c).starts_with("vm.json: machine-config.vcpu_count: 0: "),
            "{}",
            err(&c)
        );
        c.machine_config.vcpu_count = 255;
        assert!(err(&c).contains("at most 254"), "{}", err(&c));
        let mut c = from_file(config());
        c.machine_config.mem_size_mib = 1;
        assert!(
            err(&c).starts_with("vm.json: machine-config.mem_size_mib: 1: below"),
            "{}",
            err(&c)
        );
        c.machine_config.mem_size_mib = 1 << 40;
        assert!(err(&c).contains("more than this host's"), "{}", err(&c));
        let mut c = from_file(config());
        c.boot_source.boot_args = Some("x".repeat(CMDLINE_MAX_SIZE));
        assert!(
            err(&c).starts_with("vm.json: boot-source.boot_args: 2048 bytes"),
            "{}",
            err(&c)
        );
        c.boot_source.boot_args = Some("a\0b".into());
        assert!(err(&c).contains("NUL"), "{}", err(&c));
        let mut c = from_file(config());
        c.boot_source.kernel_image_path = Some(PathBuf::new());
        assert_eq!(
            err(&c),
            "vm.json: boot-source.kernel_image_path: \"\": empty: give a file's path"
        );
        c.boot_source.kernel_image_path = Some("/nonexistent/vmlinux".into());
        assert!(
            err(&c).contains("/nonexistent/vmlinux: no such file"),
            "{}",
            err(&c)
        );
        c.boot_source.kernel_image_path = Some("/".into());
        assert!(err(&c).contains("a directory"), "{}", err(&c));
        // A FIFO is refused at once, not waited on.
        c.boot_source.kernel_image_path = Some("/dev/zero".into());
        assert!(err(&c).contains("a character device"), "{}", err(&c));
        let mut c = config();
        c.boot_source.initrd_path = Some(PathBuf::from("/proc/self/exe"));
        assert!(matches!(c.validate(), Err(ConfigError::InitrdConflict)));
    }

    #[test]
    fn errors_stay_on_one_line() {
        // Found by fuzz/fuzz_targets/config_validation.rs: a kernel path with a newline.
        let mut c = config();
        c.boot_source.kernel_image_path = Some(PathBuf::from("\0\n"));
        let msg = err(&c);
        assert!(!msg.contains('\n'), "{msg}");
        assert!(msg.contains("\\n"), "{msg}");
    }

    #[test]
    fn exec_must_be_static_elf() {
        let input = || "--exec x".to_string();
        assert!(
            check_static_elf(input(), b"#!/bin/sh\n")
                .unwrap_err()
                .to_string()
                .contains("not an x86_64 ELF")
        );
        // A minimal ELF64 header with one PT_INTERP program header.
        let mut elf = vec![0u8; 64 + 56];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[18] = 62;
        elf[32..40].copy_from_slice(&64u64.to_le_bytes());
        elf[54..56].copy_from_slice(&56u16.to_le_bytes());
        elf[56..58].copy_from_slice(&1u16.to_le_bytes());
        elf[64..68].copy_from_slice(&3u32.to_le_bytes());
        assert!(
            check_static_elf(input(), &elf)
                .unwrap_err()
                .to_string()
                .starts_with("--exec x: dynamically linked")
        );
        elf[64..68].copy_from_slice(&1u32.to_le_bytes());
        check_static_elf(input(), &elf).unwrap();
        // Program headers pointing past the end are not an executable.
        elf[56..58].copy_from_slice(&100u16.to_le_bytes());
        assert!(check_static_elf(input(), &elf).is_err());
    }

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ember-validate-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn drive(id: &str, path: &Path) -> Drive {
        Drive {
            drive_id: id.into(),
            path_on_host: path.into(),
            ..Default::default()
        }
    }

    #[test]
    fn disks_must_be_images_named_once() {
        let dir = scratch("disks");
        let img = dir.join("a.img");
        std::fs::write(&img, [0u8; 512]).unwrap();
        let mut c = from_file(config());
        c.drives = vec![drive("a", &img)];
        c.validate().unwrap();
        c.drives.push(drive("b", &img));
        assert!(
            err(&c).contains("the same disk image is given twice"),
            "{}",
            err(&c)
        );
        for (path, says) in [
            (dir.clone(), "a directory"),
            (dir.join("missing"), "no such file"),
            (
                PathBuf::from("/dev/null"),
                "a character device, not a disk image",
            ),
            (PathBuf::new(), "empty: give the disk image's path"),
        ] {
            c.drives = vec![drive("a", &path)];
            assert!(
                err(&c).starts_with("vm.json: drives[0].path_on_host: "),
                "{}",
                err(&c)
            );
            assert!(err(&c).contains(says), "{path:?}: {}", err(&c));
        }
        let empty = dir.join("empty.img");
        std::fs::write(&empty, []).unwrap();
        c.drives = vec![drive("a", &empty)];
        assert!(err(&c).contains("0 bytes: a disk needs at least one 512-byte sector"));
        let fifo = dir.join("fifo");
        let cpath = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a live NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(cpath.as_ptr(), 0o600) }, 0);
        c.drives = vec![drive("a", &fifo)];
        assert!(err(&c).contains("a FIFO, not a disk image"), "{}", err(&c));
        // Ids: empty, twice, or alike in the 20 bytes the guest sees.
        let other = dir.join("b.img");
        std::fs::write(&other, [0u8; 512]).unwrap();
        c.drives = vec![drive("", &img)];
        assert!(err(&c).contains("drive id is empty"), "{}", err(&c));
        c.drives = vec![drive("x", &img), drive("x", &other)];
        assert!(
            err(&c).starts_with("vm.json: drives[1].drive_id: \"x\": this drive id is given twice")
        );
        c.drives = vec![
            drive("0123456789abcdefghijA", &img),
            drive("0123456789abcdefghijB", &other),
        ];
        assert!(err(&c).contains("first 20 bytes"), "{}", err(&c));
        let mut r1 = drive("r1", &img);
        r1.is_root_device = true;
        let mut r2 = drive("r2", &other);
        r2.is_root_device = true;
        c.drives = vec![r1, r2];
        assert!(err(&c).contains("a second root device"), "{}", err(&c));
        // A flag's disk is named by its flag, as typed.
        c.drives = vec![
            crate::config::parse_disk(&format!("{},ro", dir.join("nope").display()), 0).unwrap(),
        ];
        assert!(err(&c).starts_with("--disk "), "{}", err(&c));
        c.drives = vec![crate::config::parse_rootfs(&dir.join("nope.img"))];
        assert!(err(&c).starts_with("--rootfs "), "{}", err(&c));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn interfaces_and_vsock() {
        let mut c = from_file(config());
        let net = |id: &str, tap: &str, mac: Option<&str>| NetworkInterface {
            iface_id: id.into(),
            host_dev_name: tap.into(),
            guest_mac: mac.map(Into::into),
            ..Default::default()
        };
        for (n, says) in [
            (net("eth0", "a-seventeen-chars", None), "1 to 15 characters"),
            (net("eth0", "", None), "1 to 15 characters"),
            (net("", "tap0", None), "interface id is empty"),
            (net("eth0", "tap0", Some("01:00:00:00:00:01")), "multicast"),
            (
                net("eth0", "tap0", Some("00:00:00:00:00:00")),
                "null address",
            ),
        ] {
            c.network_interfaces = vec![n];
            assert!(
                err(&c).starts_with("vm.json: network-interfaces[0]."),
                "{}",
                err(&c)
            );
            assert!(err(&c).contains(says), "{}", err(&c));
        }
        c.network_interfaces = vec![net("eth0", "a", None), net("eth0", "b", None)];
        assert!(
            err(&c).contains("interface id is given twice"),
            "{}",
            err(&c)
        );
        c.network_interfaces = vec![net("a", "t", None), net("b", "t", None)];
        assert!(err(&c).contains("TAP device is given twice"), "{}", err(&c));
        c.network_interfaces.clear();
        let dir = scratch("vsock");
        let mut v = Vsock {
            guest_cid: 2,
            uds_path: dir.join("v.sock"),
            ..Default::default()
        };
        for (cid, says) in [(2, "reserved"), (u32::MAX, "VMADDR_CID_ANY")] {
            v.guest_cid = cid;
            c.vsock = Some(v.clone());
            assert!(err(&c).starts_with(&format!("vm.json: vsock.guest_cid: {cid}: ")));
            assert!(err(&c).contains(says), "{}", err(&c));
        }
        v.guest_cid = 3;
        v.uds_path = PathBuf::from(format!("/tmp/{}", "x".repeat(MAX_UDS_PATH)));
        c.vsock = Some(v.clone());
        assert!(
            err(&c).contains("longer than ember allows (96)"),
            "{}",
            err(&c)
        );
        v.uds_path = "/proc".into();
        c.vsock = Some(v.clone());
        assert!(err(&c).contains("already exists"), "{}", err(&c));
        v.uds_path = "/nonexistent-ember-dir/v.sock".into();
        c.vsock = Some(v);
        assert!(err(&c).contains("does not exist"), "{}", err(&c));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
