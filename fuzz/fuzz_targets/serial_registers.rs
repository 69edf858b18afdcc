//! Guest traffic on the serial and i8042 registers: (offset, width, value) triples.
#![no_main]

use std::sync::Arc;

use ember::devices::bus::BusDevice;
use ember::devices::i8042::I8042;
use ember::devices::serial::{ConsoleOut, SerialDevice};
use ember::exit::ExitSignal;
use ember::timing::Timeline;
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

fuzz_target!(|data: &[u8]| {
    let timeline = Arc::new(Timeline::new());
    let Ok(irq) = EventFd::new(EFD_NONBLOCK) else {
        return;
    };
    let Ok(exit) = ExitSignal::new(timeline.clone()) else {
        return;
    };
    let exit = Arc::new(exit);
    let out = ConsoleOut::new(
        Box::new(std::io::sink()),
        timeline,
        Default::default(),
        exit.clone(),
    );
    let Ok((mut serial, _drained)) = SerialDevice::new(irq, out, None) else {
        return;
    };
    let mut i8042 = I8042::new(exit);
    for op in data.chunks(3) {
        let (off, kind, val) = (
            op[0],
            op.get(1).copied().unwrap_or(0),
            op.get(2).copied().unwrap_or(0),
        );
        let width = 1 + (kind as usize & 3);
        let dev: &mut dyn BusDevice = if kind & 0x80 != 0 {
            &mut i8042
        } else {
            &mut serial
        };
        if kind & 0x40 != 0 {
            let mut buf = [0u8; 4];
            dev.read(u64::from(off), &mut buf[..width]);
        } else {
            dev.write(u64::from(off), &[val; 4][..width]);
        }
        if kind & 0x20 != 0 {
            let _ = serial.uart.enqueue_raw_bytes(&[val; 3]);
        }
    }
});
