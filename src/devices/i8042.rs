//! The i8042 keyboard controller, reduced to what a micro-VM needs: the CPU reset line that
//! Linux pulses with `reboot=k`. vm-superio emulates the registers; the reset lands on the
//! shared exit signal.

use std::sync::Arc;

use vm_superio::{I8042Device, Trigger};

use super::bus::BusDevice;
use crate::exit::{ExitReason, ExitSignal};

/// Turns the controller's reset pulse into a VM exit.
pub struct ResetTrigger(Arc<ExitSignal>);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.request(ExitReason::Reset);
        Ok(())
    }
}

/// Ports 0x60-0x64.
pub struct I8042 {
    inner: I8042Device<ResetTrigger>,
}

/// First port of the controller.
pub const I8042_PORT: u64 = 0x60;
/// Ports it spans (0x60 data through 0x64 command/status).
pub const I8042_PORT_LEN: u64 = 5;

impl I8042 {
    /// A controller whose reset stops the VM through `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        Self {
            inner: I8042Device::new(ResetTrigger(exit)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Only single-byte registers exist; wider reads see the register then zeroes.
        data.fill(0);
        if let (Some(first), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.inner.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&value), Ok(off)) = (data.first(), u8::try_from(offset)) {
            let _ = self.inner.write(off, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_pulse_stops_the_vm() {
        let exit = Arc::new(ExitSignal::new(Default::default()).unwrap());
        let mut dev = I8042::new(exit.clone());
        dev.write(4, &[0x12]);
        dev.write(0, &[0xfe]);
        assert!(!exit.is_stopping());
        dev.write(4, &[0xfe]);
        assert_eq!(exit.reason(), Some(ExitReason::Reset));
    }

    #[test]
    fn garbage_is_harmless() {
        let exit = Arc::new(ExitSignal::new(Default::default()).unwrap());
        let mut dev = I8042::new(exit.clone());
        let mut buf = [0xaa; 4];
        dev.read(4, &mut buf);
        dev.read(1000, &mut buf);
        dev.write(1000, &[0xfe]);
        dev.write(0, &[]);
        assert!(!exit.is_stopping());
    }
}
