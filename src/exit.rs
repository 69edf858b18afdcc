//! Why a VM stopped, and the one eventfd every stopper (i8042 reset, a vCPU, a signal) writes
//! so the event loop wakes up. The first reason recorded wins.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::sync::lock;
use crate::timing::{Phase, Timeline};

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset the machine: i8042 reset pulse (`reboot=k`), KVM system-event reset.
    Reset,
    /// The guest asked to power off (KVM system event).
    PowerOff,
    /// A `process` ended and everything it wrote was read: ember stops the VM itself.
    WorkloadExited,
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN, or its PVM form): a crash, not a reboot,
    /// since ember's guests reboot through the i8042 (`reboot=k`).
    TripleFault {
        /// The vCPU.
        cpu: u32,
        /// Its instruction pointer when it stopped, if it could be read.
        rip: Option<u64>,
    },
    /// KVM could not run guest code (KVM_EXIT_INTERNAL_ERROR).
    InternalError {
        /// The vCPU.
        cpu: u32,
        /// KVM's suberror.
        suberror: u32,
        /// The guest instruction pointer, if it could be read.
        rip: Option<u64>,
    },
    /// Any other exit ember cannot continue from.
    VcpuFailed {
        /// The vCPU.
        cpu: u32,
        /// What happened, in words.
        what: String,
    },
    /// The host asked ember to stop (SIGINT, SIGTERM, SIGHUP).
    Signal(i32),
    /// The user typed the console escape (Ctrl-A x).
    Escape,
    /// The guest was still running when `--timeout` expired.
    Timeout(std::time::Duration),
    /// A snapshot was taken at the guest's "ready" and ember stops the VM there, as asked.
    Snapshotted,
    /// A snapshot was asked for and could not be taken; the VM stops.
    SnapshotFailed(String),
}

/// How a VM run ended: what ember's exit code is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmOutcome {
    /// The guest rebooted or powered off; `status` is what its init reported for the `--exec`
    /// workload, if it did.
    Stopped {
        /// The reason.
        reason: ExitReason,
        /// The workload's status.
        status: Option<u8>,
    },
    /// The guest kernel panicked (seen on the console before it reset).
    GuestPanic(String),
    /// A vCPU triple-faulted: the guest crashed without a word.
    TripleFault {
        /// The vCPU.
        cpu: u32,
        /// Where, if known.
        rip: Option<u64>,
    },
    /// KVM_EXIT_INTERNAL_ERROR or another exit the vCPU cannot continue from.
    Failed(ExitReason),
    /// A host signal, the console escape or `--timeout` stopped the VM.
    Interrupted(ExitReason),
}

/// What a run's first stop reason, a panic line seen on the console and the workload status
/// the guest reported add up to. A panic explains the reset (or the fault) that follows it.
pub fn classify(reason: ExitReason, panic: Option<String>, status: Option<u8>) -> VmOutcome {
    match (reason, panic) {
        (ExitReason::Reset | ExitReason::PowerOff | ExitReason::TripleFault { .. }, Some(msg)) => {
            VmOutcome::GuestPanic(msg)
        }
        (ExitReason::TripleFault { cpu, rip }, None) => VmOutcome::TripleFault { cpu, rip },
        (reason @ (ExitReason::WorkloadExited | ExitReason::Snapshotted), _) => {
            VmOutcome::Stopped { reason, status }
        }
        (reason @ (ExitReason::Reset | ExitReason::PowerOff), None) => {
            VmOutcome::Stopped { reason, status }
        }
        (reason @ (ExitReason::Signal(_) | ExitReason::Escape | ExitReason::Timeout(_)), _) => {
            VmOutcome::Interrupted(reason)
        }
        (
            reason @ (ExitReason::InternalError { .. }
            | ExitReason::VcpuFailed { .. }
            | ExitReason::SnapshotFailed(_)),
            _,
        ) => VmOutcome::Failed(reason),
    }
}

/// Shared between the devices, the vCPU threads and the event loop.
pub struct ExitSignal {
    evt: EventFd,
    timeline: std::sync::Arc<Timeline>,
    reason: Mutex<Option<ExitReason>>,
    stopping: AtomicBool,
    guest_status: AtomicI32,
    /// The guest said "ready" (or a caller asked): the event loop takes a snapshot.
    snapshot_asked: AtomicBool,
    /// A snapshot will be taken at the guest's first "ready" (and only then).
    snapshot_armed: AtomicBool,
    /// How many "ready"s a snapshot was taken for (0 or 1): vCPU threads compare it across an
    /// exit to pause themselves at once.
    ready_seq: AtomicU64,
    /// A snapshot was written.
    snapshot_written: AtomicBool,
}

/// Errors creating the exit eventfd.
#[derive(Debug, thiserror::Error)]
#[error("cannot create the exit eventfd: {0}")]
pub struct ExitSignalError(#[from] std::io::Error);

impl ExitSignal {
    /// A fresh signal with no reason recorded; the first request is stamped on `timeline`.
    pub fn new(timeline: std::sync::Arc<Timeline>) -> Result<Self, ExitSignalError> {
        Ok(Self {
            evt: EventFd::new(EFD_NONBLOCK)?,
            timeline,
            reason: Mutex::new(None),
            stopping: AtomicBool::new(false),
            guest_status: AtomicI32::new(-1),
            snapshot_asked: AtomicBool::new(false),
            snapshot_armed: AtomicBool::new(false),
            ready_seq: AtomicU64::new(0),
            snapshot_written: AtomicBool::new(false),
        })
    }

    /// Records `reason` (unless one is already recorded) and wakes the event loop.
    pub fn request(&self, reason: ExitReason) {
        self.timeline.mark(Phase::ShutdownRequested);
        {
            let mut r = lock(&self.reason);
            if r.is_none() {
                *r = Some(reason);
            }
        }
        self.stopping.store(true, Ordering::SeqCst);
        // An eventfd write only fails when the counter would overflow, i.e. it is already set.
        let _ = self.evt.write(1);
    }

    /// Whether a stop was requested: vCPU loops check this after every exit.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The recorded reason.
    pub fn reason(&self) -> Option<ExitReason> {
        lock(&self.reason).clone()
    }

    /// The eventfd the event loop waits on.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }

    /// Records the status the guest reported for its workload (`--exec`).
    pub fn set_guest_status(&self, status: u8) {
        self.timeline.mark(Phase::WorkloadEnd);
        self.guest_status.store(i32::from(status), Ordering::SeqCst);
    }

    /// Makes the guest's first "ready" ask for a snapshot.
    pub fn arm_snapshot(&self) {
        self.snapshot_armed.store(true, Ordering::SeqCst);
    }

    /// The guest said "ready": when armed (once), asks the event loop for a snapshot and
    /// wakes it; the vCPU threads see [`ExitSignal::ready_seq`] move and pause.
    pub fn request_snapshot(&self) {
        if !self.snapshot_armed.swap(false, Ordering::SeqCst) {
            log::debug!("the guest said ready; no snapshot was asked for");
            return;
        }
        self.ready_seq.fetch_add(1, Ordering::SeqCst);
        self.snapshot_asked.store(true, Ordering::SeqCst);
        let _ = self.evt.write(1);
    }

    /// Records that the snapshot was written.
    pub fn snapshot_written(&self) {
        self.snapshot_written.store(true, Ordering::SeqCst);
    }

    /// Whether a snapshot was written.
    pub fn has_snapshot(&self) -> bool {
        self.snapshot_written.load(Ordering::SeqCst)
    }

    /// How many "ready"s asked for a snapshot so far.
    pub fn ready_seq(&self) -> u64 {
        self.ready_seq.load(Ordering::Relaxed)
    }

    /// Whether a snapshot was asked for since the last call.
    pub fn take_snapshot_request(&self) -> bool {
        self.snapshot_asked.swap(false, Ordering::SeqCst)
    }

    /// The workload status the guest reported, if it did.
    pub fn guest_status(&self) -> Option<u8> {
        u8::try_from(self.guest_status.load(Ordering::SeqCst)).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let s = ExitSignal::new(Default::default()).unwrap();
        assert!(!s.is_stopping());
        s.request(ExitReason::Reset);
        s.request(ExitReason::Signal(15));
        assert!(s.is_stopping());
        assert_eq!(s.reason(), Some(ExitReason::Reset));
        assert_eq!(s.eventfd().read().unwrap(), 2);
    }

    #[test]
    fn outcomes() {
        let tf = ExitReason::TripleFault {
            cpu: 1,
            rip: Some(0x1000),
        };
        assert_eq!(
            classify(tf.clone(), None, None),
            VmOutcome::TripleFault {
                cpu: 1,
                rip: Some(0x1000)
            }
        );
        assert_eq!(
            classify(tf, Some("oops".into()), None),
            VmOutcome::GuestPanic("oops".into())
        );
        assert_eq!(
            classify(ExitReason::Reset, None, Some(3)),
            VmOutcome::Stopped {
                reason: ExitReason::Reset,
                status: Some(3)
            }
        );
        let t = ExitReason::Timeout(std::time::Duration::from_secs(1));
        assert_eq!(
            classify(t.clone(), Some("late".into()), None),
            VmOutcome::Interrupted(t)
        );
        let e = ExitReason::VcpuFailed {
            cpu: 0,
            what: "x".into(),
        };
        assert_eq!(classify(e.clone(), None, None), VmOutcome::Failed(e));
    }

    #[test]
    fn guest_status() {
        let s = ExitSignal::new(Default::default()).unwrap();
        assert_eq!(s.guest_status(), None);
        s.set_guest_status(42);
        assert_eq!(s.guest_status(), Some(42));
    }
}
