//! A virtio-mmio driver for fuzz targets: sets a device up the way a guest driver does, with
//! its queues at fixed places in a small guest memory, then lets the fuzzer's bytes become that
//! memory (descriptor tables, rings, headers and data alike) and notifies a queue. What the
//! device does with it runs through the same transport, event loop and queue code as a real VM.

use std::sync::{Arc, Mutex};

use ember::devices::bus::BusDevice;
use ember::devices::virtio::mmio::MmioTransport;
use ember::devices::virtio::{Interrupt, VirtioDevice};
use event_manager::{EventManager, SubscriberOps};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// Guest memory size: small, so most fuzzed addresses land in it or just past it.
pub const MEM: usize = 64 << 10;
/// Queue size every queue is set up with.
const QSIZE: u32 = 16;

/// Where queue `q`'s descriptor table, available ring and used ring sit: low, so that short
/// inputs already shape them.
fn queue_at(q: u32) -> (u32, u32, u32) {
    let base = 0x40 + 0x200 * q;
    (base, base + 0x100, base + 0x140)
}

fn w<D: VirtioDevice>(t: &mut MmioTransport<D>, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

/// Brings `device` up with `queues` queues, writes `data` over guest memory (from address 0;
/// the queue registers stay where the driver put them), and notifies each queue named by the
/// first byte's bits, then runs the event loop `rounds` times without waiting.
#[allow(dead_code)] // each target uses one of the two
pub fn drive<D: VirtioDevice + 'static>(device: D, queues: u32, data: &[u8], rounds: usize) {
    drive_and_wait(device, queues, data, rounds, std::time::Duration::ZERO);
}

/// [`drive`], then waits up to `settle` for the device's interrupt: for a device that serves
/// its queues on a thread of its own (virtio-fs), which answers after `drive` returns.
#[allow(dead_code)] // each target uses one of the two
pub fn drive_and_wait<D: VirtioDevice + 'static>(
    device: D,
    queues: u32,
    data: &[u8],
    rounds: usize,
    settle: std::time::Duration,
) {
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]) else {
        return;
    };
    let Ok(irq) = EventFd::new(EFD_NONBLOCK) else {
        return;
    };
    let Ok(irq_seen) = irq.try_clone() else {
        return;
    };
    let evts: Vec<EventFd> = (0..queues)
        .filter_map(|_| EventFd::new(EFD_NONBLOCK).ok())
        .collect();
    let notify: Vec<EventFd> = evts.iter().filter_map(|e| e.try_clone().ok()).collect();
    let Ok(retire) = EventFd::new(EFD_NONBLOCK) else {
        return;
    };
    let mut t = MmioTransport::new(
        device,
        mem.clone(),
        Arc::new(Interrupt::new(irq)),
        evts,
        retire,
        Arc::new(ember::guest_log::LogLimit::new("fuzzed device")),
    );
    // The handshake: ACKNOWLEDGE, DRIVER, VERSION_1 and every offered feature, FEATURES_OK.
    w(&mut t, 0x70, 1);
    w(&mut t, 0x70, 3);
    for sel in 0..2 {
        w(&mut t, 0x14, sel);
        let mut f = [0u8; 4];
        t.read(0x10, &mut f);
        w(&mut t, 0x24, sel);
        w(&mut t, 0x20, u32::from_le_bytes(f));
    }
    w(&mut t, 0x70, 0xb);
    for q in 0..queues {
        let (desc, avail, used) = queue_at(q);
        w(&mut t, 0x30, q);
        w(&mut t, 0x38, QSIZE);
        w(&mut t, 0x80, desc);
        w(&mut t, 0x90, avail);
        w(&mut t, 0xa0, used);
        w(&mut t, 0x44, 1);
    }
    w(&mut t, 0x70, 0xf);
    if !t.is_active() {
        return;
    }
    let n = data.len().min(MEM);
    if mem.write_slice(&data[..n], GuestAddress(0)).is_err() {
        return;
    }
    let Ok(mut events) = EventManager::<Arc<Mutex<MmioTransport<D>>>>::new() else {
        return;
    };
    events.add_subscriber(Arc::new(Mutex::new(t)));
    let which = data.first().copied().unwrap_or(0xff);
    for (q, e) in notify.iter().enumerate() {
        if which & (1 << q) != 0 {
            let _ = e.write(1);
        }
    }
    for _ in 0..rounds {
        if events.run_with_timeout(0).is_err() {
            break;
        }
    }
    if !settle.is_zero() {
        use std::os::fd::AsRawFd;
        let mut p = libc::pollfd {
            fd: irq_seen.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd.
        unsafe { libc::poll(&mut p, 1, settle.as_millis() as i32) };
    }
}
