//! The VM configuration: what the user asked for, validated once. Every error names the input,
//! what is wrong with it and how to fix it.

use std::path::{Path, PathBuf};

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
/// All of them are also correct on hardware KVM, only slower, and ember never adds them there.
pub const PVM_CMDLINE_EXTRA: &str =
    "noxsave clearcpuid=popcnt,smap lapic=notscdeadline no_int3_selftest no_fpu_drop_fwait";
/// How long a Linux guest on a PVM host may run when no `--timeout` is given. Its userspace
/// cannot run there, so it either panics (AMD hosts, about a minute in) or waits forever
/// (Intel hosts, after `Run /init` at 100-165 s): docs/hosts.md.
pub const PVM_LINUX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);
/// Default vCPU count (as Firecracker and QEMU).
pub const DEFAULT_VCPUS: u32 = 1;
/// Default guest memory in MiB (as Firecracker).
pub const DEFAULT_MEM_MIB: u64 = 128;
/// The least memory ember boots with: room for the boot structures below 1 MiB, a kernel
/// above it and an initramfs.
pub const MIN_MEM_MIB: u64 = 8;

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

/// Parses a duration: seconds (`90`), or a number with `ms`, `s`, `m` or `h` (`500ms`, `5m`).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || {
        format!(
            "{text:?} is not a duration: use seconds (90), or a number with ms, s, m or h (500ms, 90s, 5m)"
        )
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let ms = match unit {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => None,
    };
    ms.map(std::time::Duration::from_millis).ok_or_else(bad)
}

/// A duration as messages show it: `300 s`, `1.5 s`, `250 ms`.
pub fn show_duration(d: std::time::Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else if d.as_secs() == 0 {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
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
    #[error("--cmdline is {0} bytes; the x86 boot protocol allows at most {max}: shorten it", max = CMDLINE_MAX_SIZE - 1)]
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

/// A validated VM configuration.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// The kernel image.
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: InitrdChoice,
    /// The kernel command line.
    pub cmdline: String,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub mem_mib: u64,
    /// Whether more vCPUs than host CPUs is what the user wants.
    pub overcommit_vcpus: bool,
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

/// Checks that `path` is a readable, non-empty regular file.
pub fn check_file(what: &'static str, path: &Path) -> Result<(), ConfigError> {
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
    std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => err("permission denied: make it readable".into()),
        _ => err(format!("cannot open it ({e})")),
    })?;
    Ok(())
}

/// Checks that `path` is a static x86_64 ELF executable (no PT_INTERP).
fn check_static_elf(path: &Path, bytes: &[u8]) -> Result<(), ConfigError> {
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
    /// Validates everything that can be checked without KVM.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vcpus == 0 {
            return Err(ConfigError::NoVcpus);
        }
        // One vCPU always fits: skip the cgroup files available_parallelism reads.
        if self.vcpus > 1
            && let Some(host) = host_cpus()
            && self.vcpus > host
            && !self.overcommit_vcpus
        {
            return Err(ConfigError::MoreVcpusThanCpus {
                asked: self.vcpus,
                host,
            });
        }
        if self.mem_mib < MIN_MEM_MIB {
            return Err(ConfigError::MemTooSmall(self.mem_mib));
        }
        if let Some(host) = crate::memory::host_mem_total() {
            let host_mib = host >> 20;
            if self.mem_mib > host_mib {
                return Err(ConfigError::MemTooLarge {
                    asked: self.mem_mib,
                    host: host_mib,
                });
            }
        }
        if self.cmdline.len() >= CMDLINE_MAX_SIZE {
            return Err(ConfigError::CmdlineTooLong(self.cmdline.len()));
        }
        if self.cmdline.contains('\0') {
            return Err(ConfigError::CmdlineNul);
        }
        check_file("kernel", &self.kernel)?;
        match &self.initrd {
            InitrdChoice::File(p) => check_file("initrd", p)?,
            InitrdChoice::Exec { program, .. } => {
                check_file("--exec program", program)?;
                let bytes = std::fs::read(program).map_err(|e| ConfigError::File {
                    what: "--exec program",
                    path: program.clone(),
                    reason: format!("cannot read it ({e})"),
                })?;
                check_static_elf(program, &bytes)?;
            }
            InitrdChoice::BuiltIn | InitrdChoice::None => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> VmConfig {
        VmConfig {
            kernel: PathBuf::from("/proc/self/exe"),
            initrd: InitrdChoice::None,
            cmdline: DEFAULT_CMDLINE.into(),
            vcpus: 1,
            mem_mib: 128,
            overcommit_vcpus: false,
        }
    }

    #[test]
    fn more_vcpus_than_cpus_needs_the_overcommit_flag() {
        let cpus = host_cpus().expect("sched_getaffinity");
        let mut c = config();
        c.vcpus = cpus;
        c.validate().unwrap();
        c.vcpus = cpus + 1;
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains(&format!("--vcpus {}", cpus + 1))
                && e.contains(&format!("at most --vcpus {cpus}"))
                && e.contains("--overcommit-vcpus"),
            "{e}"
        );
        c.overcommit_vcpus = true;
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
        c.vcpus = 0;
        assert!(c.validate().unwrap_err().to_string().contains("--vcpus 0"));
        let mut c = config();
        c.mem_mib = 1;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("--mem-mib 1")
        );
        let mut c = config();
        c.mem_mib = 1 << 40;
        assert!(matches!(c.validate(), Err(ConfigError::MemTooLarge { .. })));
        let mut c = config();
        c.cmdline = "x".repeat(CMDLINE_MAX_SIZE);
        assert!(matches!(c.validate(), Err(ConfigError::CmdlineTooLong(_))));
        let mut c = config();
        c.kernel = PathBuf::from("/nonexistent/vmlinux");
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("/nonexistent/vmlinux")
        );
        let mut c = config();
        c.kernel = PathBuf::from("/");
        assert!(c.validate().unwrap_err().to_string().contains("directory"));
    }

    #[test]
    fn durations() {
        use std::time::Duration;
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "s", "-1", "1.5s", "5x", "99999999999999999999h"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains("not a duration"), "{bad}: {e}");
        }
        assert_eq!(show_duration(Duration::from_secs(300)), "300 s");
        assert_eq!(show_duration(Duration::from_millis(250)), "250 ms");
        assert_eq!(show_duration(Duration::from_millis(1500)), "1.5 s");
    }

    #[test]
    fn errors_stay_on_one_line() {
        // Found by fuzz/fuzz_targets/config_validation.rs: a kernel path with a newline.
        let mut c = config();
        c.kernel = PathBuf::from("\0\n");
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
}
