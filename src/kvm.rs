//! Opening /dev/kvm, checking what ember relies on, and telling what kind of KVM this is.

use std::path::Path;

use kvm_ioctls::{Cap, Kvm};

/// The KVM API version every stable kernel reports.
const KVM_API_VERSION: i32 = 12;

/// Capabilities ember uses, with what it uses each for.
pub const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (
        Cap::SplitIrqchip,
        "local APICs in KVM, the IOAPIC in ember, no PIC or PIT",
    ),
    (Cap::IrqRouting, "the IOAPIC's pins as MSI routes"),
    (Cap::TscDeadlineTimer, "a guest timer without a PIT"),
    (Cap::Irqfd, "device interrupts without a vCPU exit"),
    (Cap::Ioeventfd, "device doorbells without a vCPU exit"),
    (Cap::UserMemory, "guest memory from ember's address space"),
    (Cap::SetTssAddr, "the TSS page KVM needs on Intel"),
    (Cap::ExtCpuid, "the CPUID each vCPU sees"),
    (Cap::ImmediateExit, "stopping vCPUs promptly"),
];

/// Errors opening or checking KVM.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// /dev/kvm is missing.
    #[error(
        "/dev/kvm does not exist: load the kvm module (modprobe kvm_intel, kvm_amd or kvm_pvm) or run on a host with KVM"
    )]
    NoDevice,
    /// No permission on /dev/kvm.
    #[error(
        "no permission to open /dev/kvm: add your user to the group that owns it (usually kvm) or run as root"
    )]
    NoPermission,
    /// Opening failed otherwise.
    #[error("cannot open /dev/kvm: {0}")]
    Open(kvm_ioctls::Error),
    /// Unexpected API version.
    #[error("/dev/kvm reports API version {0}, ember needs {KVM_API_VERSION}")]
    ApiVersion(i32),
    /// A required capability is missing.
    #[error("/dev/kvm lacks {0:?} ({1}), which ember needs")]
    MissingCap(Cap, &'static str),
    /// An ioctl failed.
    #[error("{what}: {source}")]
    Ioctl {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
}

/// What backs /dev/kvm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostFlavour {
    /// Hardware virtualization: Intel VMX (kvm_intel) or AMD SVM (kvm_amd).
    Hardware(&'static str),
    /// PVM: software-assisted KVM on a CPU without VMX/SVM (kvm_pvm).
    Pvm,
    /// Neither could be told apart.
    Unknown,
}

impl HostFlavour {
    /// Reads the loaded KVM modules, then the CPU flags.
    pub fn detect() -> Self {
        let loaded = |m: &str| Path::new("/sys/module").join(m).exists();
        if loaded("kvm_intel") {
            return HostFlavour::Hardware("VMX");
        }
        if loaded("kvm_amd") {
            return HostFlavour::Hardware("SVM");
        }
        if loaded("kvm_pvm") {
            return HostFlavour::Pvm;
        }
        let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let has = |f: &str| {
            flags
                .lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|w| w == f))
        };
        if has("vmx") {
            HostFlavour::Hardware("VMX")
        } else if has("svm") {
            HostFlavour::Hardware("SVM")
        } else {
            HostFlavour::Unknown
        }
    }

    /// One line a user understands.
    pub fn describe(self) -> String {
        match self {
            HostFlavour::Hardware(v) => format!(
                "hardware-backed ({v}): guests run at native speed and Linux boots to userspace"
            ),
            HostFlavour::Pvm => {
                "PVM-based (kvm_pvm, no VMX/SVM on this CPU): tiny guests run at full speed, \
                 Linux guest kernels run 100-1000x slower, some kernel instructions end them \
                 (KVM_EXIT_INTERNAL_ERROR), and Linux userspace does not run"
                    .to_string()
            }
            HostFlavour::Unknown => {
                "unknown backing (no kvm_intel, kvm_amd or kvm_pvm module seen)".to_string()
            }
        }
    }

    /// Short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            HostFlavour::Hardware(_) => "hardware",
            HostFlavour::Pvm => "pvm",
            HostFlavour::Unknown => "unknown",
        }
    }
}

/// Opens /dev/kvm, mapping the common failures to errors that say what to do.
pub fn open() -> Result<Kvm, KvmError> {
    let kvm = Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT => KvmError::NoDevice,
        libc::EACCES | libc::EPERM => KvmError::NoPermission,
        _ => KvmError::Open(e),
    })?;
    let version = kvm.get_api_version();
    if version != KVM_API_VERSION {
        return Err(KvmError::ApiVersion(version));
    }
    for &(cap, what) in REQUIRED_CAPS {
        if !kvm.check_extension(cap) {
            return Err(KvmError::MissingCap(cap, what));
        }
    }
    Ok(kvm)
}

/// The most vCPUs ember will start: KVM's limit, and 254 so APIC ids and the IOAPIC's fit in
/// the MP table's 8-bit ids.
pub fn max_vcpus(kvm: &Kvm) -> u32 {
    (kvm.get_max_vcpus() as u32).min(254)
}

/// `ember host`: a report of this host's KVM.
pub fn host_report() -> Result<String, KvmError> {
    let flavour = HostFlavour::detect();
    let kvm = open()?;
    let mut out = String::new();
    out.push_str(&format!("/dev/kvm: {}\n", flavour.describe()));
    out.push_str(&format!("KVM API version: {}\n", kvm.get_api_version()));
    out.push_str(&format!(
        "vCPUs: up to {} per VM (KVM: {} max, {} recommended)\n",
        max_vcpus(&kvm),
        kvm.get_max_vcpus(),
        kvm.get_nr_vcpus()
    ));
    out.push_str(&format!("memory slots: {}\n", kvm.get_nr_memslots()));
    out.push_str("capabilities ember uses:\n");
    for &(cap, what) in REQUIRED_CAPS {
        let ok = if kvm.check_extension(cap) {
            "yes"
        } else {
            "MISSING"
        };
        out.push_str(&format!("  {:<16} {ok:<7} {what}\n", format!("{cap:?}")));
    }
    if flavour == HostFlavour::Pvm {
        out.push_str(&format!(
            "Linux guests: ember appends `{}` to the default command line here (docs/hosts.md)\n",
            crate::config::PVM_CMDLINE_EXTRA
        ));
    }
    Ok(out)
}
