//! The serial console: a 16550A at 0x3f8 (vm-superio) raising IRQ 4 through an irqfd. Guest
//! output goes to the host's stdout as it is written; the console watcher stamps the first
//! byte and notices a guest kernel panic on its way past.

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use vm_superio::serial::{SerialEvents, SerialState as UartState};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::bus::BusDevice;
use crate::exit::ExitSignal;
use crate::sync::lock;
use crate::timing::{Phase, Timeline};

/// COM1's first port.
pub const COM1_PORT: u64 = 0x3f8;
/// Ports a 16550A spans.
pub const COM1_PORT_LEN: u64 = 8;
/// COM1's ISA interrupt line.
pub const COM1_IRQ: u32 = 4;
/// The line Linux prints when it panics; what follows it is the reason.
const PANIC_MARKER: &str = "Kernel panic - not syncing: ";
/// The line ember's init prints when it cannot get a `process` going: the kind in
/// parentheses, then the reason (guest/init; also sent over the channel when it is up).
const INIT_FAILED_MARKER: &str = "ember-init: failed (";
/// Longest console line the panic watcher keeps (the rest of a longer line is dropped).
const LINE_MAX: usize = 512;

/// An eventfd the serial device writes to raise its interrupt (registered as an irqfd).
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Wakes the input side of the event loop when the guest has drained the receive FIFO, so
/// ember reads more of stdin only when the guest can take it.
pub struct InputEvents {
    /// Written when the FIFO becomes empty.
    pub fifo_drained: EventFd,
}

impl SerialEvents for InputEvents {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        let _ = self.fifo_drained.write(1);
    }
}

/// Guest console output straight to a file descriptor (stdout), unbuffered.
///
/// Not `std::io::Stdout`: its lock would be held by a vCPU thread blocked on a full pipe, and
/// `write_all` retries EINTR forever, so a stop could never interrupt it. Here the kick signal's
/// EINTR surfaces as an `Interrupted` error, and [`ConsoleOut`] decides: retry, unless the VM
/// is stopping.
pub struct FdWriter(pub std::os::fd::RawFd);

impl FdWriter {
    /// The process's stdout.
    pub fn stdout() -> Self {
        FdWriter(libc::STDOUT_FILENO)
    }
}

impl Write for FdWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // SAFETY: writing from a live buffer of `buf.len()` bytes to a descriptor we were given.
        let n = unsafe { libc::write(self.0, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What the guest's console said that ember acts on.
#[derive(Debug, Default)]
pub struct ConsoleWatch {
    /// The panic reason, once the guest printed one.
    pub panic: Option<String>,
    /// Console bytes stdout could not take (closed, full device, gone reader).
    pub dropped: u64,
    /// Why the first of them was dropped.
    pub drop_reason: Option<String>,
    /// What ember's init said it could not do, first time: (kind, reason).
    pub init_failure: Option<(String, String)>,
    line: Vec<u8>,
}

impl ConsoleWatch {
    /// Feeds one output byte.
    pub fn feed(&mut self, byte: u8) {
        if byte == b'\n' {
            let line = String::from_utf8_lossy(&self.line);
            if self.panic.is_none()
                && let Some(pos) = line.find(PANIC_MARKER)
            {
                let reason = line[pos + PANIC_MARKER.len()..].trim_end();
                self.panic = Some(reason.to_string());
            }
            if self.init_failure.is_none()
                && let Some(rest) = line.trim_end().strip_prefix(INIT_FAILED_MARKER)
                && let Some((kind, reason)) = rest.split_once("): ")
            {
                self.init_failure = Some((kind.to_string(), reason.to_string()));
            }
            self.line.clear();
        } else if self.line.len() < LINE_MAX {
            self.line.push(byte);
        }
    }
}

/// The console's output side: the host writer plus the watcher.
pub struct ConsoleOut {
    out: Box<dyn Write + Send>,
    timeline: Arc<Timeline>,
    watch: Arc<Mutex<ConsoleWatch>>,
    exit: Arc<ExitSignal>,
}

impl ConsoleOut {
    /// Output to `out`, stamping into `timeline`, watching into `watch`; a write interrupted
    /// while `exit` says the VM is stopping is given up.
    pub fn new(
        out: Box<dyn Write + Send>,
        timeline: Arc<Timeline>,
        watch: Arc<Mutex<ConsoleWatch>>,
        exit: Arc<ExitSignal>,
    ) -> Self {
        Self {
            out,
            timeline,
            watch,
            exit,
        }
    }
}

impl Write for ConsoleOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !buf.is_empty() {
            self.timeline.mark(Phase::FirstConsoleByte);
            let mut watch = lock(&self.watch);
            for &b in buf {
                watch.feed(b);
            }
        }
        let dropped = |e: std::io::Error| {
            let mut watch = lock(&self.watch);
            if watch.drop_reason.is_none() {
                // Said once; the count comes with the VM's end.
                log::warn!(
                    "stdout cannot take the guest's console output ({e}): it is dropped from here on"
                );
                watch.drop_reason = Some(e.to_string());
            }
            watch.dropped += buf.len() as u64;
        };
        // The guest's bytes are dropped, not queued, when the host side fails (a closed
        // stdout): a guest must not be able to grow ember's memory. A write interrupted by a
        // kick is retried (a pause), unless the VM is stopping: then it is an error, and the
        // vCPU thread gets back to its loop and sees the stop.
        loop {
            match self.out.write(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                    if self.exit.is_stopping() {
                        return Err(std::io::Error::other("console write interrupted by a stop"));
                    }
                }
                Err(e) => {
                    dropped(e);
                    return Ok(buf.len());
                }
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = self.out.flush();
        Ok(())
    }
}

/// The 16550A as ember's bus sees it.
pub type SerialUart = Serial<EventFdTrigger, InputEvents, ConsoleOut>;

/// The serial device on the I/O bus.
pub struct SerialDevice {
    /// The emulated UART.
    pub uart: SerialUart,
}

/// The UART's registers and receive FIFO: vm-superio's `SerialState`, as plain serialisable
/// data for a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialState {
    /// Divisor latch, low byte.
    pub baud_divisor_low: u8,
    /// Divisor latch, high byte.
    pub baud_divisor_high: u8,
    /// Interrupt enable.
    pub interrupt_enable: u8,
    /// Interrupt identification.
    pub interrupt_identification: u8,
    /// Line control.
    pub line_control: u8,
    /// Line status.
    pub line_status: u8,
    /// Modem control.
    pub modem_control: u8,
    /// Modem status.
    pub modem_status: u8,
    /// Scratch.
    pub scratch: u8,
    /// Received bytes the guest has not read yet.
    pub in_buffer: Vec<u8>,
}

impl From<UartState> for SerialState {
    fn from(s: UartState) -> Self {
        Self {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }
}

impl From<&SerialState> for UartState {
    fn from(s: &SerialState) -> Self {
        Self {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        }
    }
}

impl SerialDevice {
    /// A UART raising `irq` and writing to `out`; with `state`, the one a snapshot saved
    /// (its pending interrupt raised again). Also returns the eventfd written when the guest
    /// drains the receive FIFO.
    pub fn new(
        irq: EventFd,
        out: ConsoleOut,
        state: Option<&SerialState>,
    ) -> std::io::Result<(Self, EventFd)> {
        let fifo_drained = EventFd::new(EFD_NONBLOCK)?;
        let events = InputEvents {
            fifo_drained: fifo_drained.try_clone()?,
        };
        let uart = match state {
            None => Serial::with_events(EventFdTrigger(irq), events, out),
            Some(s) => {
                Serial::from_state(&s.into(), EventFdTrigger(irq), events, out).map_err(|e| {
                    std::io::Error::other(format!("the snapshot's serial state: {e:?}"))
                })?
            }
        };
        Ok((Self { uart }, fifo_drained))
    }

    /// The UART's state, for a snapshot.
    pub fn state(&self) -> SerialState {
        self.uart.state().into()
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Some(first), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.uart.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&value), Ok(off)) = (data.first(), u8::try_from(offset))
            && let Err(e) = self.uart.write(off, value)
        {
            log::debug!("serial write at offset {off}: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_line_is_caught() {
        let mut w = ConsoleWatch::default();
        for b in b"[    1.0] Kernel panic - not syncing: VFS: Unable to mount root fs\r\nmore\n" {
            w.feed(*b);
        }
        assert_eq!(w.panic.as_deref(), Some("VFS: Unable to mount root fs"));
    }

    #[test]
    fn long_lines_stay_bounded() {
        let mut w = ConsoleWatch::default();
        for _ in 0..100_000 {
            w.feed(b'x');
        }
        assert!(w.line.len() <= LINE_MAX);
        assert!(w.panic.is_none());
    }

    fn exit() -> Arc<ExitSignal> {
        Arc::new(ExitSignal::new(Default::default()).unwrap())
    }

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_and_garbage() {
        let timeline = Arc::new(Timeline::new());
        let sink = Sink::default();
        let out = ConsoleOut::new(
            Box::new(sink.clone()),
            timeline.clone(),
            Default::default(),
            exit(),
        );
        let (mut dev, _drained) =
            SerialDevice::new(EventFd::new(EFD_NONBLOCK).unwrap(), out, None).unwrap();
        dev.write(0, b"h");
        dev.write(0, b"i");
        assert_eq!(&*sink.0.lock().unwrap(), b"hi");
        assert!(timeline.get(Phase::FirstConsoleByte).is_some());
        for off in 0..300u64 {
            let mut d = [0u8; 4];
            dev.read(off, &mut d);
            dev.write(off, &[0xff, 0xff]);
            dev.write(off, &[]);
        }
    }

    #[test]
    fn random_register_traffic_never_panics() {
        // Deterministic pseudo-random guest traffic: every register, DLAB on and off,
        // loopback mode, interleaved host input; the device must neither panic nor grow.
        let timeline = Arc::new(Timeline::new());
        let out = ConsoleOut::new(
            Box::new(std::io::sink()),
            timeline,
            Default::default(),
            exit(),
        );
        let (mut dev, _drained) =
            SerialDevice::new(EventFd::new(EFD_NONBLOCK).unwrap(), out, None).unwrap();
        let mut x: u64 = 0x1234_5678_9abc_def1;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let off = x % 10;
            let val = (x >> 8) as u8;
            match (x >> 16) % 4 {
                0 => dev.write(off, &[val]),
                1 => {
                    let mut d = [0u8; 2];
                    dev.read(off, &mut d);
                }
                2 => {
                    let _ = dev.uart.enqueue_raw_bytes(&[val; 7]);
                }
                _ => dev.write(off, &[val, val]),
            }
            assert!(dev.uart.fifo_capacity() <= 64);
        }
    }
}
