//! ember's process exit codes, and how a finished run maps onto them. README "Exit codes"
//! lists them; tests assert them.

use ember::config;
use ember::exit::{ExitReason, VmOutcome};
use ember::kvm::HostFlavour;
use ember::resolve::ResolvedVm;

use super::Failure;

/// What the exit code depends on besides the outcome, kept from the resolved VM that the
/// build consumes.
pub struct RunFacts {
    exec: Option<std::path::PathBuf>,
    /// A program's path in the guest, for a program run.
    pub program: Option<std::path::PathBuf>,
    timeout_is_default: bool,
}

impl RunFacts {
    /// The facts of a restored VM: no program, no default timeout.
    pub fn restored(exec: Option<std::path::PathBuf>) -> Self {
        Self {
            exec,
            program: None,
            timeout_is_default: false,
        }
    }

    /// The facts of `vm`.
    pub fn of(vm: &ResolvedVm) -> Self {
        Self {
            exec: vm.exec.clone(),
            program: vm.program.clone(),
            timeout_is_default: vm.timeout_is_default,
        }
    }
}

/// ember failed on the host side (an ioctl, memory, a thread).
pub const HOST_ERROR: u8 = 1;
/// Bad input: usage, configuration, a kernel or initrd that cannot be loaded.
pub const BAD_INPUT: u8 = 2;
/// /dev/kvm missing, not permitted or lacking a capability.
pub const NO_KVM: u8 = 3;
/// The guest kernel panicked.
pub const GUEST_PANIC: u8 = 4;
/// KVM_EXIT_INTERNAL_ERROR: the host could not run a guest instruction.
pub const INTERNAL_ERROR: u8 = 5;
/// Another vCPU exit ember cannot continue from.
pub const VCPU_FAILED: u8 = 6;
/// ember itself panicked (a bug).
pub const EMBER_PANIC: u8 = 7;
/// `--exec`: the guest stopped without reporting the program's status.
pub const NO_STATUS: u8 = 8;
/// A vCPU triple-faulted: the guest crashed (its reboots go through the i8042 instead).
pub const TRIPLE_FAULT: u8 = 9;
/// `--timeout` expired with the guest still running.
pub const TIMEOUT: u8 = 10;
/// A program run (`-- PROG`): the guest kernel lacks a driver the run needs.
pub const MISSING_DRIVER: u8 = 11;
/// A program run: the guest's init could not set the run up (a mount failed).
pub const GUEST_SETUP: u8 = 12;
/// `--snapshot-on-ready`: the guest stopped before it said ready; no snapshot was written.
pub const NOT_READY: u8 = 13;
/// A program run: the program cannot be run (as a shell says: not executable).
pub const PROGRAM_NOT_EXECUTABLE: u8 = 126;
/// A program run: the program is not found (as a shell says: command not found).
pub const PROGRAM_NOT_FOUND: u8 = 127;
/// Stopped by a signal: 128 + the signal number (130 SIGINT, 143 SIGTERM); the console
/// escape Ctrl-A x counts as SIGINT.
pub const SIGNAL_BASE: u8 = 128;

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

/// The exit code for a run that ended with `outcome`; anything but a clean stop is a
/// [`Failure`] with its one line.
pub fn for_outcome(
    outcome: &VmOutcome,
    vm: &RunFacts,
    flavour: HostFlavour,
) -> Result<u8, Failure> {
    let fail = |code, message: String| Err(Failure { code, message });
    match outcome {
        // A snapshot taken where the guest said ready, as asked: the program runs in the VMs
        // restored from it.
        VmOutcome::Stopped {
            reason: ExitReason::Snapshotted,
            ..
        } => Ok(0),
        VmOutcome::Stopped { status, .. } => match (&vm.exec, status) {
            (Some(_), Some(s)) => Ok(*s),
            (Some(program), None) => fail(
                NO_STATUS,
                format!(
                    "the guest stopped before {} reported its exit status (see the console output above)",
                    program.display()
                ),
            ),
            (None, _) => Ok(0),
        },
        VmOutcome::GuestPanic(msg) => fail(GUEST_PANIC, format!("guest kernel panic: {msg}")),
        VmOutcome::TripleFault { cpu, rip } => {
            let at = rip.map(|r| format!(" at rip {r:#x}")).unwrap_or_default();
            fail(
                TRIPLE_FAULT,
                format!(
                    "vCPU {cpu} triple-faulted{at}: the guest crashed (a fault while handling a fault); the console output above may say why"
                ),
            )
        }
        VmOutcome::Failed(ExitReason::InternalError { cpu, suberror, rip }) => {
            let at = rip.map(|r| format!(" at rip {r:#x}")).unwrap_or_default();
            let hint = if flavour == HostFlavour::Pvm {
                "; this PVM-based /dev/kvm cannot emulate that instruction (see docs/hosts.md)"
            } else {
                ""
            };
            fail(
                INTERNAL_ERROR,
                format!(
                    "vCPU {cpu} stopped: KVM could not run a guest instruction (KVM_EXIT_INTERNAL_ERROR, suberror {suberror}){at}{hint}"
                ),
            )
        }
        VmOutcome::Failed(ExitReason::VcpuFailed { cpu, what }) => {
            fail(VCPU_FAILED, format!("vCPU {cpu} stopped: {what}"))
        }
        VmOutcome::Failed(ExitReason::SnapshotFailed(what)) => fail(
            HOST_ERROR,
            format!("--snapshot-on-ready: {what}; the VM was shut down"),
        ),
        VmOutcome::Failed(other) => fail(VCPU_FAILED, format!("the VM failed: {other:?}")),
        VmOutcome::Interrupted(ExitReason::Signal(sig)) => fail(
            SIGNAL_BASE + *sig as u8,
            format!("stopped by {}; the VM was shut down", signal_name(*sig)),
        ),
        VmOutcome::Interrupted(ExitReason::Timeout(after)) => {
            let why = if vm.timeout_is_default {
                " (the default for a Linux guest on a PVM-based /dev/kvm, where its userspace \
                 cannot run: docs/hosts.md; --timeout 0 waits forever)"
            } else {
                ""
            };
            fail(
                TIMEOUT,
                format!(
                    "the guest was still running after {} (--timeout{why}); the VM was shut down",
                    config::show_duration(*after)
                ),
            )
        }
        VmOutcome::Interrupted(_) => fail(
            SIGNAL_BASE + libc::SIGINT as u8,
            "stopped from the console (Ctrl-A x)".into(),
        ),
    }
}
