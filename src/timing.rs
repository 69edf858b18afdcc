//! Startup stamps taken on the guest's behalf: the moments only devices see (first console
//! byte, the init's boot-timer write). Each is CLOCK_MONOTONIC, recorded once, lock-free, so
//! stamping costs a relaxed atomic on the hot path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Guest-side milestones, each set the first time it happens.
#[derive(Debug)]
pub struct GuestStamps {
    base: Instant,
    first_console_byte: AtomicU64,
    userspace_reached: AtomicU64,
}

/// A guest milestone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestEvent {
    /// The guest wrote its first byte to the serial console (the kernel is alive).
    FirstConsoleByte,
    /// The guest init wrote the boot timer (userspace reached).
    UserspaceReached,
}

impl GuestStamps {
    /// Stamps measured from `base`.
    pub fn new(base: Instant) -> Self {
        Self {
            base,
            first_console_byte: AtomicU64::new(0),
            userspace_reached: AtomicU64::new(0),
        }
    }

    fn slot(&self, event: GuestEvent) -> &AtomicU64 {
        match event {
            GuestEvent::FirstConsoleByte => &self.first_console_byte,
            GuestEvent::UserspaceReached => &self.userspace_reached,
        }
    }

    /// Records `event` now unless it was already recorded; returns `true` the first time.
    pub fn mark(&self, event: GuestEvent) -> bool {
        let slot = self.slot(event);
        if slot.load(Ordering::Relaxed) != 0 {
            return false;
        }
        // Stored as nanoseconds + 1 so that 0 can mean "not yet".
        let ns = self.base.elapsed().as_nanos() as u64 + 1;
        slot.compare_exchange(0, ns, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// Time from the base to `event`, if it happened.
    pub fn get(&self, event: GuestEvent) -> Option<Duration> {
        match self.slot(event).load(Ordering::Relaxed) {
            0 => None,
            ns => Some(Duration::from_nanos(ns - 1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_mark_wins() {
        let s = GuestStamps::new(Instant::now());
        assert_eq!(s.get(GuestEvent::UserspaceReached), None);
        assert!(s.mark(GuestEvent::UserspaceReached));
        let first = s.get(GuestEvent::UserspaceReached).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        assert!(!s.mark(GuestEvent::UserspaceReached));
        assert_eq!(s.get(GuestEvent::UserspaceReached), Some(first));
        assert_eq!(s.get(GuestEvent::FirstConsoleByte), None);
    }
}
