//! What a vCPU does with each KVM exit: a pure function of the exit and the buses, so every
//! case is unit-tested without KVM.

use kvm_ioctls::VcpuExit;

use crate::devices::bus::Bus;
use crate::exit::ExitReason;
use crate::guest_log::LogLimit;

/// KVM's system-event types.
const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;
const KVM_SYSTEM_EVENT_CRASH: u32 = 3;

/// What the run loop does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Enter the guest again.
    Run,
    /// Stop the VM for this reason.
    Stop(ExitReason),
    /// KVM_EXIT_SHUTDOWN: a triple fault; the loop adds where, if it can.
    TripleFault,
    /// KVM_EXIT_INTERNAL_ERROR: the loop reads the suberror and the rip.
    InternalError,
}

/// Handles one exit of vCPU `cpu`: port and MMIO accesses go to the buses (an access no device
/// claims is dropped or reads all ones); HLT, IRQ-window, interrupt and IOAPIC-EOI exits
/// resume; anything else ends the VM with a reason.
/// Messages go through `log`: a guest can make these exits as fast as it likes.
pub fn dispatch(exit: VcpuExit, cpu: u32, pio: &Bus, mmio: &Bus, log: &LogLimit) -> Next {
    match exit {
        VcpuExit::IoOut(port, data) => {
            if !pio.write(u64::from(port), data) {
                crate::guest_log!(
                    log,
                    log::Level::Trace,
                    "write to unhandled port {port:#x}: {data:x?}"
                );
            }
            Next::Run
        }
        VcpuExit::IoIn(port, data) => {
            pio.read(u64::from(port), data);
            Next::Run
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !mmio.write(addr, data) {
                crate::guest_log!(log, log::Level::Trace, "write to unhandled MMIO {addr:#x}");
            }
            Next::Run
        }
        VcpuExit::MmioRead(addr, data) => {
            mmio.read(addr, data);
            Next::Run
        }
        // With the in-kernel LAPIC a halted vCPU sleeps in KVM; an exit here is only a
        // notification, and the guest is resumed.
        VcpuExit::Hlt | VcpuExit::IrqWindowOpen | VcpuExit::Intr => Next::Run,
        // The EOI of a level-triggered IOAPIC vector: ember's devices pulse their lines, so no
        // pin is still asserted and nothing is delivered again (devices::ioapic).
        VcpuExit::IoapicEoi(vector) => {
            crate::guest_log!(
                log,
                log::Level::Debug,
                "EOI of level-triggered vector {vector:#x}"
            );
            Next::Run
        }
        VcpuExit::Shutdown => Next::TripleFault,
        VcpuExit::SystemEvent(kind, _) => Next::Stop(match kind {
            KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::PowerOff,
            KVM_SYSTEM_EVENT_RESET => ExitReason::Reset,
            KVM_SYSTEM_EVENT_CRASH => ExitReason::VcpuFailed {
                cpu,
                what: "the guest reported a crash (KVM system event)".into(),
            },
            other => ExitReason::VcpuFailed {
                cpu,
                what: format!("unknown KVM system event {other}"),
            },
        }),
        VcpuExit::InternalError => Next::InternalError,
        VcpuExit::FailEntry(reason, _) => Next::Stop(ExitReason::VcpuFailed {
            cpu,
            what: format!("KVM could not enter the guest (hardware entry failure {reason:#x})"),
        }),
        other => Next::Stop(ExitReason::VcpuFailed {
            cpu,
            what: format!("unexpected KVM exit {other:?}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::devices::bus::BusDevice;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(0x40 + offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    fn buses() -> (Bus, Bus, Arc<Mutex<Recorder>>, Arc<Mutex<Recorder>>) {
        let (p, m) = (
            Arc::new(Mutex::new(Recorder::default())),
            Arc::new(Mutex::new(Recorder::default())),
        );
        let mut pio = Bus::new();
        pio.insert(p.clone(), 0x3f8, 8).unwrap();
        let mut mmio = Bus::new();
        mmio.insert(m.clone(), 0xd000_0000, 0x1000).unwrap();
        (pio, mmio, p, m)
    }

    #[test]
    fn accesses_go_to_the_buses() {
        let (pio, mmio, p, m) = buses();
        let log = LogLimit::new("vCPU 0");
        assert_eq!(
            dispatch(VcpuExit::IoOut(0x3f9, &[7]), 0, &pio, &mmio, &log),
            Next::Run
        );
        let mut d = [0u8; 1];
        assert_eq!(
            dispatch(VcpuExit::IoIn(0x3fa, &mut d), 0, &pio, &mmio, &log),
            Next::Run
        );
        assert_eq!(d, [0x42]);
        let w = 0xd000_0050u64;
        assert_eq!(
            dispatch(VcpuExit::MmioWrite(w, &[1, 0, 0, 0]), 0, &pio, &mmio, &log),
            Next::Run
        );
        let mut d = [0u8; 4];
        assert_eq!(
            dispatch(
                VcpuExit::MmioRead(0xd000_0004, &mut d),
                0,
                &pio,
                &mmio,
                &log
            ),
            Next::Run
        );
        assert_eq!(d, [0x44; 4]);
        assert_eq!(p.lock().unwrap().writes, vec![(1, vec![7])]);
        assert_eq!(m.lock().unwrap().writes, vec![(0x50, vec![1, 0, 0, 0])]);
        // Nobody's: dropped, or all ones; the guest goes on.
        assert_eq!(
            dispatch(VcpuExit::IoOut(0x80, &[1]), 0, &pio, &mmio, &log),
            Next::Run
        );
        let mut d = [0u8; 2];
        assert_eq!(
            dispatch(VcpuExit::MmioRead(0x1234, &mut d), 0, &pio, &mmio, &log),
            Next::Run
        );
        assert_eq!(d, [0xff; 2]);
    }

    #[test]
    fn endings() {
        let (pio, mmio, _, _) = buses();
        let log = LogLimit::new("vCPU 3");
        let d = |e| dispatch(e, 3, &pio, &mmio, &log);
        assert_eq!(d(VcpuExit::Hlt), Next::Run);
        assert_eq!(d(VcpuExit::IrqWindowOpen), Next::Run);
        assert_eq!(d(VcpuExit::IoapicEoi(0x31)), Next::Run);
        assert_eq!(d(VcpuExit::Shutdown), Next::TripleFault);
        assert_eq!(d(VcpuExit::InternalError), Next::InternalError);
        assert_eq!(
            d(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, &[])),
            Next::Stop(ExitReason::Reset)
        );
        assert_eq!(
            d(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, &[])),
            Next::Stop(ExitReason::PowerOff)
        );
        for e in [
            VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_CRASH, &[]),
            VcpuExit::SystemEvent(99, &[]),
            VcpuExit::FailEntry(0x80000021, 3),
            VcpuExit::Debug(Default::default()),
        ] {
            match d(e) {
                Next::Stop(ExitReason::VcpuFailed { cpu: 3, .. }) => {}
                other => panic!("{other:?}"),
            }
        }
    }
}
