//! What a [`VmConfig`] means on this host, worked out once, before any KVM call: the kernel
//! opened and recognised (the only time its file is opened), the initrd read or generated, the
//! effective kernel command line, the timeout. The CLI, the tests and any later front end
//! build VMs through here the same way.

use std::path::PathBuf;
use std::time::Duration;

use linux_loader::cmdline::Cmdline;

use crate::arch::x86_64::boot::{BootError, KernelImage};
use crate::arch::x86_64::layout::CMDLINE_MAX_SIZE;
use crate::config::{
    self, ConfigError, DEFAULT_CMDLINE, InitrdChoice, PVM_CMDLINE_EXTRA, PVM_LINUX_TIMEOUT,
    VmConfig,
};
use crate::devices::manager::{self, DeviceSpec, ManagerError, PlacedDevice};
use crate::initramfs;
use crate::kvm::HostFlavour;

/// Errors resolving a configuration: all of them bad input.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The configuration is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The kernel is not one ember can boot.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// The command line is not one linux-loader accepts (`input` names where it came from).
    #[error("{input}: the kernel command line {text:?} is not valid ({error}): fix it")]
    Cmdline {
        /// The input it came from.
        input: String,
        /// The command line.
        text: String,
        /// What linux-loader said.
        error: linux_loader::cmdline::Error,
    },
    /// The devices do not fit.
    #[error(transparent)]
    Devices(#[from] ManagerError),
}

/// The initrd to hand the guest.
pub struct InitrdImage {
    /// What to call it in messages.
    pub name: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// A configuration made concrete for one host: everything [`crate::vmm::Vmm::build`] needs.
pub struct ResolvedVm {
    /// The kernel, opened.
    pub kernel: KernelImage,
    /// The initrd, if any.
    pub initrd: Option<InitrdImage>,
    /// The kernel command line; devices add their entries to it.
    pub cmdline: Cmdline,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest memory in bytes.
    pub mem_size: u64,
    /// Stop the guest if it still runs this long after it started.
    pub timeout: Option<Duration>,
    /// Whether `timeout` is the PVM default rather than the user's.
    pub timeout_is_default: bool,
    /// A Linux kernel on a PVM host: it crawls, and its userspace never runs.
    pub linux_on_pvm: bool,
    /// The `--exec` program, whose status becomes ember's.
    pub exec: Option<PathBuf>,
    /// A `process`'s program as the guest finds it, whose status becomes ember's.
    pub program: Option<PathBuf>,
    /// The virtio devices, each with its window and interrupt line (and its entry already on
    /// `cmdline`).
    pub devices: Vec<PlacedDevice>,
    /// How errors name the vCPU count and the memory size (`--vcpus 4`,
    /// `vm.json: machine-config.mem_size_mib: 256`).
    pub names: InputNames,
}

/// The inputs a VM's build can still find wrong, named as the user gave them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InputNames {
    /// The vCPU count, with its value.
    pub vcpus: String,
    /// The memory size, with its value.
    pub mem: String,
}

impl ResolvedVm {
    /// The command line as the guest reads it.
    pub fn cmdline_text(&self) -> String {
        self.cmdline
            .as_cstring()
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// Opens the kernel once, with the same one-line errors as any input file.
fn open_kernel(config: &VmConfig, path: &std::path::Path) -> Result<KernelImage, ResolveError> {
    let file = config::open_input_file(config.kernel_input(path), path)?;
    Ok(KernelImage::new(&path.display().to_string(), file)?)
}

/// Reads a file ember hands the guest whole (an initrd, an `--exec` program).
fn read_input(input: String, path: &std::path::Path) -> Result<Vec<u8>, ConfigError> {
    use std::io::Read;
    let mut bytes = Vec::new();
    config::open_input_file(input.clone(), path)?
        .read_to_end(&mut bytes)
        .map_err(|e| ConfigError::Invalid {
            input,
            reason: format!("cannot read it ({e})"),
        })?;
    Ok(bytes)
}

/// Works out what `config` means on a host of kind `host`.
pub fn resolve(config: &VmConfig, host: HostFlavour) -> Result<ResolvedVm, ResolveError> {
    config.validate_except_kernel()?;
    let kernel = open_kernel(config, &config.kernel()?)?;
    let linux_on_pvm = host == HostFlavour::Pvm && kernel.is_linux;
    let sources = &config.sources;
    let choice = config.initrd_choice()?;
    let mut program = None;
    let initrd = match &choice {
        // The built-in initramfs is a Linux userspace: a kernel that is not Linux (a tiny
        // test guest, a unikernel) would only have it copied into its memory for nothing.
        InitrdChoice::BuiltIn if !kernel.is_linux => None,
        InitrdChoice::None => None,
        InitrdChoice::BuiltIn => Some(InitrdImage {
            name: "built-in initramfs".into(),
            bytes: initramfs::build(crate::GUEST_INIT, None),
        }),
        InitrdChoice::File(p) => Some(InitrdImage {
            name: p.display().to_string(),
            bytes: read_input(
                sources.at("boot-source.initrd_path", &config::input::path_value(p)),
                p,
            )?,
        }),
        InitrdChoice::Exec { program, args } => {
            let input = sources.at(
                "boot-source.exec.program",
                &config::input::path_value(program),
            );
            let bytes = read_input(input.clone(), program)?;
            config::check_static_elf(input, &bytes)?;
            let argv0 = program
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "exec".into());
            let mut argv = vec![argv0];
            argv.extend(args.iter().cloned());
            Some(InitrdImage {
                name: format!("initramfs for {}", program.display()),
                bytes: initramfs::build(crate::GUEST_INIT, Some((&bytes, &argv))),
            })
        }
        InitrdChoice::Process => {
            // Checked by validation: a process has a configuration section.
            let process = config
                .process
                .as_ref()
                .ok_or(ConfigError::ProcessConflict)?;
            let plan = crate::command::plan(config, process, &kernel, crate::GUEST_INIT)?;
            if !kernel.is_linux {
                return Err(ConfigError::Invalid {
                    input: config.kernel_input(&config.kernel()?),
                    reason: "not a Linux kernel, and a program runs under ember's Linux init: pass a Linux kernel (or none, for the project's)".into(),
                }
                .into());
            }
            program = Some(plan.program.clone());
            Some(InitrdImage {
                name: format!("initramfs for {}", plan.program.display()),
                bytes: plan.initramfs,
            })
        }
    };

    // A process's kernel is quiet unless its log is asked for: the log is not the program's
    // output, and every console byte is a VM exit.
    let quiet = config.process.as_ref().is_some_and(|p| !p.kernel_log);
    let text = match &config.boot_source.boot_args {
        Some(c) => c.clone(),
        None => {
            let mut t = DEFAULT_CMDLINE.to_string();
            if linux_on_pvm {
                t = format!("{t} {PVM_CMDLINE_EXTRA}");
            }
            if quiet {
                t.push_str(" quiet");
            }
            t
        }
    };
    let cmdline_err = |error| ResolveError::Cmdline {
        input: match config.boot_source.boot_args {
            Some(_) => sources.name("boot-source.boot_args"),
            None => "the default command line".into(),
        },
        text: text.clone(),
        error,
    };
    let mut cmdline = if text.trim().is_empty() {
        Cmdline::new(CMDLINE_MAX_SIZE)
    } else {
        Cmdline::try_from(&text, CMDLINE_MAX_SIZE)
    }
    .map_err(cmdline_err)?;
    // The root drive, as Firecracker does it, unless the command line already names a root.
    if let Some(root) = config.drives.iter().find(|d| d.is_root_device)
        && !text.split_whitespace().any(|w| w.starts_with("root="))
    {
        let mode = if root.is_read_only { "ro" } else { "rw" };
        cmdline
            .insert_str(format!("root=/dev/vda {mode}"))
            .map_err(cmdline_err)?;
    }

    // Free page reporting in 2 MiB blocks (the host's huge page size), unless the command
    // line says otherwise. Linux's default is its pageblock order: 4 MiB on a kernel without
    // hugetlb (the project's), where reporting waits for 128 MiB free beyond the low
    // watermark, which a small guest never has; the project kernel keeps this parameter
    // (kernels/patches/0003), and Debian's default is 2 MiB already.
    if config
        .balloon
        .as_ref()
        .is_some_and(|b| b.free_page_reporting)
        && !text.contains("page_reporting.page_reporting_order=")
    {
        cmdline
            .insert_str("page_reporting.page_reporting_order=9")
            .map_err(cmdline_err)?;
    }

    // The devices, in the guest's order: their entries go on the command line now.
    let specs = config
        .drives_in_guest_order()
        .into_iter()
        .map(DeviceSpec::Block)
        .chain(
            config
                .network_interfaces
                .iter()
                .cloned()
                .map(DeviceSpec::Net),
        )
        .chain(
            (config.vsock.is_some() || config.process.is_some()).then(|| DeviceSpec::Vsock {
                config: config.vsock.clone(),
                channel: config.process.is_some(),
            }),
        )
        .chain(config.balloon.clone().map(DeviceSpec::Balloon))
        .chain(
            config
                .shares
                .iter()
                .enumerate()
                .map(|(i, dir)| DeviceSpec::Fs {
                    dir: dir.clone(),
                    tag: crate::command::tag(i),
                }),
        )
        .collect();
    let mut devices = manager::plan(specs, &mut cmdline).map_err(|e| match e {
        ManagerError::Cmdline(error) => cmdline_err(error),
        other => ResolveError::Devices(other),
    })?;
    for d in &mut devices {
        d.input = match &d.spec {
            DeviceSpec::Block(b) => config.drive_at(
                b,
                "path_on_host",
                &config::input::path_value(&b.path_on_host),
            ),
            DeviceSpec::Net(n) => {
                config.net_at(n, "host_dev_name", &format!("{:?}", n.host_dev_name))
            }
            DeviceSpec::Vsock {
                config: Some(v), ..
            } => config.vsock_at(v, "uds_path", &config::input::path_value(&v.uds_path)),
            DeviceSpec::Vsock { config: None, .. } => "the process channel (vsock)".into(),
            DeviceSpec::Balloon(b) => config.balloon_at(b, "amount_mib", &b.amount_mib),
            DeviceSpec::Fs { dir, .. } => config.share_at(
                dir,
                "path_on_host",
                &config::input::path_value(&dir.path_on_host),
            ),
        };
    }

    // A Linux guest on a PVM host cannot finish (its userspace never runs): bound the run.
    let (timeout, timeout_is_default) = match config.timeout {
        Some(t) => ((!t.is_zero()).then_some(t), false),
        None if linux_on_pvm => (Some(PVM_LINUX_TIMEOUT), true),
        None => (None, false),
    };
    let exec = match choice {
        InitrdChoice::Exec { program, .. } => Some(program),
        _ => None,
    };
    Ok(ResolvedVm {
        kernel,
        initrd,
        cmdline,
        vcpus: config.machine_config.vcpu_count,
        mem_size: config.machine_config.mem_size_mib << 20,
        timeout,
        timeout_is_default,
        linux_on_pvm,
        exec,
        program,
        devices,
        names: InputNames {
            vcpus: sources.at(
                "machine-config.vcpu_count",
                &config.machine_config.vcpu_count,
            ),
            mem: sources.at(
                "machine-config.mem_size_mib",
                &config.machine_config.mem_size_mib,
            ),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BootSource, Drive, Exec};

    fn config_for(kernel: &str) -> VmConfig {
        VmConfig {
            boot_source: BootSource {
                kernel_image_path: Some(kernel.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn not_a_kernel_is_named() {
        let p = std::env::temp_dir().join(format!("ember-not-a-kernel-{}", std::process::id()));
        std::fs::write(&p, b"just text").unwrap();
        let e = resolve(&config_for(p.to_str().unwrap()), HostFlavour::Unknown)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("is not an x86_64 ELF vmlinux or bzImage"), "{e}");
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn a_non_linux_kernel_gets_no_builtin_initramfs_and_no_pvm_extras() {
        // ember's test guests are ELF files without a Linux note; ember's own binary is too.
        let r = resolve(&config_for("/proc/self/exe"), HostFlavour::Pvm).unwrap();
        assert!(!r.kernel.is_linux);
        assert!(r.initrd.is_none());
        assert!(!r.linux_on_pvm);
        assert_eq!(r.cmdline_text(), DEFAULT_CMDLINE);
        assert_eq!(r.timeout, None);
    }

    #[test]
    fn root_drive_and_timeouts() {
        let dir = std::env::temp_dir().join(format!("ember-resolve-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let img = dir.join("root.img");
        std::fs::write(&img, [0u8; 1024]).unwrap();
        let mut c = config_for("/proc/self/exe");
        let data = dir.join("data.img");
        std::fs::write(&data, [0u8; 1024]).unwrap();
        c.drives.push(Drive {
            drive_id: "data".into(),
            path_on_host: data,
            ..Default::default()
        });
        c.drives.push(Drive {
            drive_id: "root".into(),
            path_on_host: img.clone(),
            is_root_device: true,
            is_read_only: true,
            ..Default::default()
        });
        c.timeout = Some(Duration::ZERO);
        let r = resolve(&c, HostFlavour::Unknown).unwrap();
        assert!(
            r.cmdline_text()
                .ends_with("root=/dev/vda ro virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"),
            "{}",
            r.cmdline_text()
        );
        assert_eq!(r.timeout, None);
        assert_eq!(
            c.drives_in_guest_order()
                .iter()
                .map(|d| d.drive_id.as_str())
                .collect::<Vec<_>>(),
            ["root", "data"],
            "the root device is vda wherever it is listed"
        );
        assert_eq!(r.devices.len(), 2);
        c.boot_source.boot_args = Some("console=ttyS0 root=/dev/vdb".into());
        c.timeout = Some(Duration::from_secs(5));
        let r = resolve(&c, HostFlavour::Unknown).unwrap();
        assert_eq!(
            r.cmdline_text(),
            "console=ttyS0 root=/dev/vdb virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"
        );
        assert_eq!(
            (r.timeout, r.timeout_is_default),
            (Some(Duration::from_secs(5)), false)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn exec_program_is_checked_and_packed() {
        let mut c = config_for("/proc/self/exe");
        // Debian's /bin/true is dynamically linked: refused, naming the program.
        c.boot_source.exec = Some(Exec {
            program: "/bin/true".into(),
            args: Vec::new(),
        });
        let e = resolve(&c, HostFlavour::Unknown).err().unwrap().to_string();
        assert!(
            e.contains("dynamically linked") && e.contains("/bin/true"),
            "{e}"
        );
        // This test binary is static-pie, as ember is: packed with its arguments.
        c.boot_source.exec = Some(Exec {
            program: "/proc/self/exe".into(),
            args: vec!["a".into()],
        });
        let r = resolve(&c, HostFlavour::Unknown).unwrap();
        let initrd = r.initrd.expect("an initramfs for --exec");
        assert!(initrd.bytes.len() > 4096, "{}", initrd.bytes.len());
    }
}
