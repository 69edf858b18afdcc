//! The boot timer and the workload-status register: how a guest init tells ember "userspace
//! reached" and "the workload exited with status N".
//!
//! The boot timer accepts both Firecracker conventions, so inits written for Firecracker work
//! unchanged: the byte 123 written to I/O port 0x3f0, or to the MMIO byte at 0xc0000000.
//! Port 0x3f1 is ember's own: the byte written is the `--exec` program's exit status; 124 on
//! port 0x3f0 is ember's too: "ready", where `--snapshot-on-ready` snapshots the VM.

use std::sync::Arc;

use super::bus::BusDevice;
use crate::exit::ExitSignal;
use crate::timing::{Phase, Timeline};

/// I/O port of the boot timer (offset 0) and the workload-status register (offset 1).
pub const BOOT_TIMER_PORT: u64 = 0x3f0;
/// Ports the device spans on the I/O bus.
pub const BOOT_TIMER_PORT_LEN: u64 = 2;
/// The value that means "userspace reached".
pub const MAGIC_BOOT_COMPLETE: u8 = 123;
/// ember's own value on the same port: "ready", the point where `--snapshot-on-ready` takes
/// its snapshot (after boot, a service started, a cache warmed: the guest chooses).
pub const MAGIC_READY: u8 = 124;

/// The boot timer device; one instance sits on each bus.
pub struct BootTimer {
    timeline: Arc<Timeline>,
    exit: Arc<ExitSignal>,
}

impl BootTimer {
    /// A boot timer recording into `timeline` and reporting statuses to `exit`.
    pub fn new(timeline: Arc<Timeline>, exit: Arc<ExitSignal>) -> Self {
        Self { timeline, exit }
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            0 if value == MAGIC_BOOT_COMPLETE && self.timeline.mark(Phase::UserspaceReached) => {
                log::info!("guest boot complete: userspace reached");
            }
            0 if value == MAGIC_READY => {
                log::info!("guest says ready");
                self.exit.request_snapshot();
            }
            1 => self.exit.set_guest_status(value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_magic_value_stamps() {
        let timeline = Arc::new(Timeline::new());
        let exit = Arc::new(ExitSignal::new(timeline.clone()).unwrap());
        let mut t = BootTimer::new(timeline.clone(), exit.clone());
        t.write(0, &[1]);
        assert!(timeline.get(Phase::UserspaceReached).is_none());
        t.write(0, &[123, 0, 0, 0]);
        assert!(timeline.get(Phase::UserspaceReached).is_some());
        t.write(1, &[7]);
        assert_eq!(exit.guest_status(), Some(7));
        assert!(timeline.get(Phase::WorkloadEnd).is_some());
        t.write(5, &[]);
        assert!(!exit.take_snapshot_request());
        // "Ready" asks for a snapshot only when one was armed, and only once.
        t.write(0, &[124]);
        assert!(!exit.take_snapshot_request());
        exit.arm_snapshot();
        t.write(0, &[124]);
        assert_eq!(exit.ready_seq(), 1);
        assert!(exit.take_snapshot_request());
        assert!(!exit.take_snapshot_request(), "asked once, taken once");
        t.write(0, &[124]);
        assert!(!exit.take_snapshot_request(), "a second ready asks nothing");
        assert_eq!(exit.ready_seq(), 1);
    }
}
