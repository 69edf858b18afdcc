//! ACPI power management for a hardware-reduced platform: the sleep-control register a kernel
//! writes to power off (sleep state S5) and the reset register it writes to reboot, both named
//! in ember's FADT (`arch::x86_64::acpi`). Either one stops the VM.

use std::sync::Arc;

use super::bus::BusDevice;
use crate::arch::x86_64::acpi::SLEEP_TYPE_S5;
use crate::arch::x86_64::layout::{POWER_RESET_PORT, POWER_RESET_VALUE, POWER_SLEEP_PORT};
use crate::exit::{ExitReason, ExitSignal};

/// First I/O port of the device: the sleep-control register, then the reset register.
pub const POWER_PORT: u64 = POWER_SLEEP_PORT;
/// Ports it spans.
pub const POWER_PORT_LEN: u64 = POWER_RESET_PORT - POWER_SLEEP_PORT + 1;
/// Sleep-control bits: SLP_EN, and SLP_TYP in bits 2-4 (ACPI 6.5, 4.8.3.7).
const SLP_EN: u8 = 1 << 5;
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7;

/// The two registers.
pub struct Power {
    exit: Arc<ExitSignal>,
}

impl Power {
    /// Registers whose power-off and reset stop the VM through `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        Self { exit }
    }
}

impl BusDevice for Power {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Sleep status: never "woken", nothing pending.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        let sleep = POWER_SLEEP_PORT - POWER_PORT;
        let reset = POWER_RESET_PORT - POWER_PORT;
        if offset == sleep
            && value & SLP_EN != 0
            && (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK == SLEEP_TYPE_S5
        {
            self.exit.request(ExitReason::PowerOff);
        } else if offset == reset && value == POWER_RESET_VALUE {
            self.exit.request(ExitReason::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> (Power, Arc<ExitSignal>) {
        let exit = Arc::new(ExitSignal::new(Default::default()).unwrap());
        (Power::new(exit.clone()), exit)
    }

    #[test]
    fn s5_powers_off() {
        let (mut p, exit) = device();
        // SLP_TYP without SLP_EN, another sleep state, garbage: nothing.
        for v in [SLEEP_TYPE_S5 << 2, SLP_EN | (3 << 2), !SLP_EN] {
            p.write(0, &[v]);
        }
        p.write(7, &[0x34]);
        p.write(0, &[]);
        assert!(!exit.is_stopping());
        p.write(0, &[SLP_EN | (SLEEP_TYPE_S5 << 2)]);
        assert_eq!(exit.reason(), Some(ExitReason::PowerOff));
    }

    #[test]
    fn reset_register_resets() {
        let (mut p, exit) = device();
        p.write(1, &[2]);
        assert!(!exit.is_stopping());
        let mut d = [0xffu8; 4];
        p.read(0, &mut d);
        assert_eq!(d, [0; 4]);
        p.write(1, &[POWER_RESET_VALUE]);
        assert_eq!(exit.reason(), Some(ExitReason::Reset));
    }
}
