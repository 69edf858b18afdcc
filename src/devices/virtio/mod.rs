//! virtio devices on the virtio-mmio transport (version 2): the transport ([`mmio`]), and the
//! block, network, vsock, balloon and fs devices behind it. The split virtqueues are virtio-queue's; each
//! device walks its descriptor chains through that crate, so a descriptor loop or an address
//! outside guest memory ends a chain (or fails a request), never the VMM.
//!
//! A device's queues are served on the VMM thread, from the event loop: the guest's queue
//! notifications arrive as ioeventfds, its interrupts leave through an irqfd. The vCPU threads
//! only touch the transport's registers.

pub mod balloon;
pub mod block;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod state;
pub mod vsock;

use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use event_manager::{EventOps, Events};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::guest_log::LogLimit;

/// The feature bit every ember device offers: a modern (virtio 1.x) device.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Interrupt status bit: a used ring was updated.
pub const INT_VRING: u32 = 1;
/// Interrupt status bit: the configuration changed.
pub const INT_CONFIG: u32 = 2;

/// A device's interrupt line: the irqfd it raises and the status register the driver reads
/// and acknowledges.
pub struct Interrupt {
    irqfd: EventFd,
    status: AtomicU32,
    /// The device met a queue it cannot serve: DEVICE_NEEDS_RESET until the driver resets it.
    needs_reset: AtomicBool,
}

impl Interrupt {
    /// A line raised through `irqfd`.
    pub fn new(irqfd: EventFd) -> Self {
        Self {
            irqfd,
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
        }
    }

    /// The device cannot go on until the driver resets it: the status register says
    /// DEVICE_NEEDS_RESET, and a configuration interrupt tells the driver. Devices that serve
    /// their queues on threads of their own say it here; the transport shows it.
    pub fn set_needs_reset(&self) {
        if !self.needs_reset.swap(true, Ordering::SeqCst) {
            self.raise(INT_CONFIG);
        }
    }

    /// Whether the device needs a reset.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// The driver reset the device: no status, no reset needed.
    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }

    /// Tells the driver a used ring changed.
    pub fn signal_used(&self) {
        self.raise(INT_VRING);
    }

    /// Sets `bits` in the status register and raises the line.
    pub fn raise(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        // Fails only when the counter is already at its maximum: the interrupt is pending.
        let _ = self.irqfd.write(1);
    }

    /// The status register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// A restored device's status as it was saved; a pending interrupt is raised again (the
    /// irqfd's count did not survive; a spurious one costs the driver a register read).
    pub fn restore(&self, status: u32, needs_reset: bool) {
        self.needs_reset.store(needs_reset, Ordering::SeqCst);
        self.status.store(0, Ordering::SeqCst);
        if status != 0 {
            self.raise(status);
        }
    }

    /// The driver's acknowledgement: clears `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }
}

/// What an activated device works with: guest memory, its queues as the driver set them up,
/// and its interrupt line.
pub struct Active {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The queues, in the device's order.
    pub queues: Vec<Queue>,
    /// The interrupt line.
    pub interrupt: Arc<Interrupt>,
    /// The features the driver accepted.
    pub features: u64,
    /// The budget for messages the guest can cause (`crate::guest_log`).
    pub log: Arc<LogLimit>,
    /// The queues' notification eventfds (copies), for a device that serves its queues on a
    /// thread of its own ([`VirtioDevice::serves_own_queues`]); others are told by
    /// [`VirtioDevice::queue_event`].
    pub queue_evts: Vec<Arc<EventFd>>,
}

impl Active {
    /// Raises the interrupt if queue `q` needs a notification (always, without EVENT_IDX).
    pub fn notify(&mut self, q: usize) {
        let needs = self
            .queues
            .get_mut(q)
            .map(|queue| queue.needs_notification(&self.mem).unwrap_or(true))
            .unwrap_or(false);
        if needs {
            self.interrupt.signal_used();
        }
    }
}

/// A queue the driver has put in a state no device can serve (an available index further
/// ahead than the queue has entries): the device stops, and the transport tells the driver it
/// needs a reset (DEVICE_NEEDS_RESET, virtio 1.2 section 2.1.2), instead of failing on every
/// notification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the driver broke queue {queue} ({reason})")]
pub struct Broken {
    /// The queue's index.
    pub queue: usize,
    /// What is wrong with it.
    pub reason: String,
}

/// What serving a device's queues came to: done, or a queue the driver broke.
pub type Served = Result<(), Broken>;

/// The next chain the driver made available on `queue` (index `index`), if any. Unlike
/// virtio-queue's `pop_descriptor_chain`, which logs an error and returns nothing, a broken
/// available ring is an error the device stops on.
pub fn pop_chain<'a>(
    queue: &mut Queue,
    mem: &'a GuestMemoryMmap,
    index: usize,
) -> Result<Option<DescriptorChain<&'a GuestMemoryMmap>>, Broken> {
    match queue.iter(mem) {
        Ok(mut chains) => Ok(chains.next()),
        Err(e) => Err(Broken {
            queue: index,
            reason: e.to_string(),
        }),
    }
}

/// A virtio device behind the MMIO transport.
pub trait VirtioDevice: Send {
    /// The virtio device id (virtio_ids).
    fn device_type(&self) -> u32;
    /// The most descriptors each of its queues may have, one entry per queue.
    fn queue_max_sizes(&self) -> &[u16];
    /// How many of its queues a driver that accepted `features` sets up (the balloon's
    /// reporting queue exists only with its feature); the rest may stay unready.
    fn queues_in_use(&self, _features: u64) -> usize {
        self.queue_max_sizes().len()
    }
    /// The features it offers.
    fn features(&self) -> u64;
    /// Reads its configuration space; bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// The driver writes its configuration space (ignored unless the device has writable
    /// fields).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The driver set DRIVER_OK: start serving `active`'s queues.
    fn activate(&mut self, active: Active);
    /// The driver reset the device: drop the queues, back to the state before activation.
    /// Called on the vCPU thread that wrote the status, whose filter has no `close`: host
    /// resources the reset lets go (a stream's fd) are kept for [`VirtioDevice::retire`].
    fn reset(&mut self);
    /// After a reset, on the event loop's thread: close what the reset let go, and stop
    /// watching it.
    fn retire(&mut self, _ops: &mut EventOps) {}
    /// Whether the device waits on its queues' notifications itself, on a thread of its own
    /// (from [`Active::queue_evts`]), instead of being told on the event loop.
    fn serves_own_queues(&self) -> bool {
        false
    }
    /// Host fds (a TAP, sockets) the event loop should watch for the device from the start.
    fn host_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }
    /// The queues as far as the device got through them, while active (a snapshot saves
    /// them); a device that serves its queues elsewhere has none to give.
    fn active_queues(&self) -> Option<&[Queue]> {
        None
    }
    /// Why the device cannot be in a snapshot, if it cannot.
    fn snapshot_refusal(&self) -> Option<String> {
        None
    }
    /// The device's own state beyond its transport and queues (the balloon's target), for a
    /// snapshot.
    fn save_state(&self) -> Option<serde_json::Value> {
        None
    }
    /// Takes back what [`VirtioDevice::save_state`] gave, from an untrusted file.
    fn restore_state(&mut self, _state: Option<&serde_json::Value>) -> Result<(), String> {
        Ok(())
    }
    /// What of the device a snapshot leaves out (host connections), said when it is taken.
    fn save_note(&self) -> Option<String> {
        None
    }
    /// Activated again from a snapshot, in a new process: whatever the guest must be told
    /// (vsock's transport reset) is sent once its queue allows.
    fn restored(&mut self) {}
    /// The guest notified queue `queue` (only called once active).
    fn queue_event(&mut self, queue: usize, ops: &mut EventOps) -> Served;
    /// One of the device's host fds is ready (called whether active or not: a device owns its
    /// host fds and must drain or park them either way).
    fn host_event(&mut self, _events: Events, _ops: &mut EventOps) -> Served {
        Ok(())
    }
}

/// Copies up to `data.len()` bytes of `config` from `offset` into `data`, zero past its end:
/// how every device answers configuration reads.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn interrupt_status_and_ack() {
        let i = Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap());
        i.signal_used();
        i.raise(INT_CONFIG);
        assert_eq!(i.status(), INT_VRING | INT_CONFIG);
        i.ack(INT_VRING);
        assert_eq!(i.status(), INT_CONFIG);
        assert_eq!(i.irqfd.read().unwrap(), 2);
    }

    #[test]
    fn config_reads_are_bounded() {
        let cfg = [1u8, 2, 3, 4];
        let mut d = [9u8; 4];
        read_config_bytes(&cfg, 2, &mut d);
        assert_eq!(d, [3, 4, 0, 0]);
        read_config_bytes(&cfg, 100, &mut d);
        assert_eq!(d, [0; 4]);
        read_config_bytes(&cfg, u64::MAX, &mut d);
        assert_eq!(d, [0; 4]);
    }
}
