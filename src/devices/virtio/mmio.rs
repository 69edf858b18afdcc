//! The virtio-mmio transport, version 2 (virtio 1.2, section 4.2.2): the register page a
//! driver finds at the address the command line (or the DSDT) names. It negotiates features,
//! records where the driver put each queue, and hands the queues to the device at DRIVER_OK,
//! after checking that they lie in guest memory. Registers are 32-bit; any other access is
//! ignored (writes) or reads zero. The configuration space from 0x100 is the device's.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::state::{QueueSnap, TransportState};
use super::{Active, Interrupt, Served, VIRTIO_F_VERSION_1, VirtioDevice};
use crate::devices::bus::BusDevice;
use crate::guest_log::LogLimit;

/// "virt", little-endian.
const MAGIC: u32 = 0x7472_6976;
/// The transport version without legacy registers.
const VERSION: u32 = 2;
/// ember's vendor id, "EMBR".
const VENDOR_ID: u32 = 0x5242_4d45;
/// Where the device's configuration space starts.
pub const CONFIG_SPACE: u64 = 0x100;
/// The size of a device's register window.
pub const WINDOW_SIZE: u64 = 0x1000;
/// The offset of QUEUE_NOTIFY, where the ioeventfds sit.
pub const QUEUE_NOTIFY: u64 = 0x50;

/// Device status bits (virtio 1.2, 2.1).
#[cfg(test)]
const S_ACKNOWLEDGE: u32 = 1;
const S_DRIVER: u32 = 2;
const S_DRIVER_OK: u32 = 4;
const S_FEATURES_OK: u32 = 8;
const S_NEEDS_RESET: u32 = 64;

/// A virtio device and its MMIO transport state.
pub struct MmioTransport<D: VirtioDevice> {
    device: D,
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    /// Shared with a device that waits on them itself (handed over at activation, on a vCPU
    /// thread, whose filter has no dup).
    queue_evts: Vec<Arc<EventFd>>,
    interrupt: Arc<Interrupt>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
    active: bool,
    /// Written by a reset (on a vCPU thread): the event loop then has the device retire what
    /// the reset let go.
    retire_evt: EventFd,
    log: Arc<LogLimit>,
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// `device` behind a transport over `mem`, raising `interrupt`; `queue_evts` (one per
    /// queue) are what the guest's queue notifications signal; `retire_evt` wakes the event
    /// loop after a reset; `log` bounds the messages the guest can cause.
    pub fn new(
        device: D,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queue_evts: Vec<EventFd>,
        retire_evt: EventFd,
        log: Arc<LogLimit>,
    ) -> Self {
        let queues = Self::fresh_queues(&device);
        Self {
            device,
            mem,
            queues,
            queue_evts: queue_evts.into_iter().map(Arc::new).collect(),
            interrupt,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            active: false,
            retire_evt,
            log,
        }
    }

    fn fresh_queues(device: &D) -> Vec<Queue> {
        device
            .queue_max_sizes()
            .iter()
            // Sizes are powers of two no larger than 32768, which Queue::new accepts.
            .filter_map(|&max| Queue::new(max).ok())
            .collect()
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device, mutably (tests drive it directly).
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// Whether the driver has set the device going.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// The status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    fn offered(&self) -> u64 {
        self.device.features() | VIRTIO_F_VERSION_1
    }

    fn selected(&mut self) -> Option<&mut Queue> {
        // Queues cannot be reconfigured while the device runs.
        if self.active {
            return None;
        }
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Whether the driver broke a queue and has not reset the device since.
    pub fn needs_reset(&self) -> bool {
        self.interrupt.needs_reset()
    }

    fn reset(&mut self) {
        if self.active {
            self.device.reset();
            // Cannot fail but for an overflow, after 2^64 resets.
            let _ = self.retire_evt.write(1);
        }
        self.active = false;
        self.queues = Self::fresh_queues(&self.device);
        self.status = 0;
        self.acked_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.interrupt.clear();
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // The driver only ever adds bits (except by a reset); anything else is ignored.
        if value & self.status != self.status {
            return;
        }
        let added = value & !self.status;
        if added & S_FEATURES_OK != 0 && self.acked_features & VIRTIO_F_VERSION_1 == 0 {
            // A legacy driver: ember has no legacy interface. Leave FEATURES_OK clear, which
            // tells the driver so.
            self.status = value & !S_FEATURES_OK;
            return;
        }
        self.status = value;
        if added & S_DRIVER_OK != 0 && self.status & S_FEATURES_OK != 0 && !self.active {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let in_use = self.device.queues_in_use(self.acked_features);
        let usable = self
            .queues
            .iter()
            .take(in_use)
            .all(|q| q.ready() && q.is_valid(&self.mem));
        if !usable {
            crate::guest_log!(
                self.log,
                log::Level::Debug,
                "queues not ready or outside guest memory at DRIVER_OK; the device needs a reset"
            );
            self.interrupt.set_needs_reset();
            return;
        }
        // The device gets its own copies: the transport keeps what the driver wrote, for its
        // register reads; a reset starts both over.
        let queues = self
            .queues
            .iter()
            .take(in_use)
            .filter_map(|q| Queue::try_from(q.state()).ok())
            .collect();
        self.device.activate(Active {
            mem: self.mem.clone(),
            queues,
            interrupt: self.interrupt.clone(),
            features: self.acked_features,
            log: self.log.clone(),
            queue_evts: self.queue_evts.clone(),
        });
        self.active = true;
    }

    /// What the device's service came to: a broken queue stops the device (it drops its
    /// queues, as at a reset) and tells the driver, once, that it needs a reset.
    fn served(&mut self, served: Served) {
        let Err(broken) = served else {
            return;
        };
        crate::guest_log!(
            self.log,
            log::Level::Warn,
            "{broken}: the device serves nothing until the driver resets it"
        );
        self.device.reset();
        self.interrupt.set_needs_reset();
    }

    fn read_register(&self, offset: u64) -> u32 {
        let q = self.queues.get(self.queue_sel as usize);
        match offset {
            0x00 => MAGIC,
            0x04 => VERSION,
            0x08 => self.device.device_type(),
            0x0c => VENDOR_ID,
            0x10 => match self.device_features_sel {
                0 => self.offered() as u32,
                1 => (self.offered() >> 32) as u32,
                _ => 0,
            },
            0x34 => q.map(|q| u32::from(q.max_size())).unwrap_or(0),
            0x44 => q.map(|q| u32::from(q.ready())).unwrap_or(0),
            0x60 => self.interrupt.status(),
            0x70 if self.interrupt.needs_reset() => self.status | S_NEEDS_RESET,
            0x70 => self.status,
            // Shared memory regions (SHM_LEN, SHM_BASE): ember's devices have none, which
            // the spec says with all ones. A zero length would read as a region at address 0,
            // which a virtio-fs driver with DAX then tries to map.
            0xb0..=0xbc => u32::MAX,
            // Configuration generation: only the balloon's changes under the driver (its
            // target), a single 32-bit field that a read sees whole, so 0 always.
            0xfc => 0,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            0x14 => self.device_features_sel = value,
            0x20 => {
                // Features are negotiated before FEATURES_OK only, and only offered ones stick.
                if self.status & (S_DRIVER | S_FEATURES_OK) == S_DRIVER {
                    let shift = match self.driver_features_sel {
                        0 => 0,
                        1 => 32,
                        _ => return,
                    };
                    let bits = (u64::from(value) << shift) & self.offered();
                    let keep = !(0xffff_ffffu64 << shift);
                    self.acked_features = (self.acked_features & keep) | bits;
                }
            }
            0x24 => self.driver_features_sel = value,
            0x30 => self.queue_sel = value,
            0x38 => {
                if let Some(q) = self.selected() {
                    // Queue::set_size refuses sizes that are not powers of two or too big;
                    // is_valid() at DRIVER_OK then refuses the queue.
                    q.set_size(value.min(u32::from(u16::MAX)) as u16);
                }
            }
            0x44 => {
                if let Some(q) = self.selected() {
                    q.set_ready(value == 1);
                }
            }
            QUEUE_NOTIFY => {
                // Reached only if the ioeventfd is not there: same effect.
                if let Some(e) = self.queue_evts.get(value as usize) {
                    let _ = e.write(1);
                }
            }
            0x64 => self.interrupt.ack(value),
            0x70 => self.set_status(value),
            0x80 => self.with_queue(|q| q.set_desc_table_address(Some(value), None)),
            0x84 => self.with_queue(|q| q.set_desc_table_address(None, Some(value))),
            0x90 => self.with_queue(|q| q.set_avail_ring_address(Some(value), None)),
            0x94 => self.with_queue(|q| q.set_avail_ring_address(None, Some(value))),
            0xa0 => self.with_queue(|q| q.set_used_ring_address(Some(value), None)),
            0xa4 => self.with_queue(|q| q.set_used_ring_address(None, Some(value))),
            _ => crate::guest_log!(
                self.log,
                log::Level::Trace,
                "write {value:#x} to register {offset:#x} ignored"
            ),
        }
    }

    fn with_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if let Some(q) = self.selected() {
            f(q);
        }
    }
}

/// A transport as the device manager keeps it for snapshots, whatever its device.
pub trait SavedTransport: Send {
    /// The transport's and queues' state; an error says why the device cannot be saved.
    fn save(&self) -> Result<TransportState, String>;
    /// What the snapshot leaves out of the device, to be said when it is taken.
    fn save_note(&self) -> Option<String>;
    /// Puts a freshly made transport in `state`, before the guest runs: an active device is
    /// activated again on the saved queues and every queue is looked at once, as if the
    /// guest had notified it (a notification the first process had not served yet did not
    /// come along).
    fn restore(&mut self, state: &TransportState) -> Result<(), String>;
}

impl<D: VirtioDevice> SavedTransport for MmioTransport<D> {
    fn save(&self) -> Result<TransportState, String> {
        if let Some(why) = self.device.snapshot_refusal() {
            return Err(why);
        }
        // The device's own progress on the queues it serves; the transport's registers for
        // the others (those a driver without their feature left unready).
        let progress = self
            .device
            .active_queues()
            .filter(|_| self.active)
            .unwrap_or(&[]);
        let queues = self
            .queues
            .iter()
            .enumerate()
            .map(|(i, q)| QueueSnap::from(progress.get(i).unwrap_or(q).state()))
            .collect();
        Ok(TransportState {
            status: self.status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            acked_features: self.acked_features,
            queue_sel: self.queue_sel,
            active: self.active,
            interrupt_status: self.interrupt.status(),
            needs_reset: self.interrupt.needs_reset(),
            queues,
            device: self.device.save_state(),
        })
    }

    fn save_note(&self) -> Option<String> {
        self.device.save_note()
    }

    fn restore(&mut self, state: &TransportState) -> Result<(), String> {
        let want = self.device.queue_max_sizes();
        if state.queues.len() != want.len() {
            return Err(format!(
                "it had {} queues; this device has {}",
                state.queues.len(),
                want.len()
            ));
        }
        let mut queues = Vec::with_capacity(want.len());
        for (i, (snap, &max)) in state.queues.iter().zip(want).enumerate() {
            match snap.queue() {
                Some(q) if snap.max_size == max => queues.push(q),
                _ => return Err(format!("its queue {i} is not one this device can serve")),
            }
        }
        self.queues = queues;
        self.status = state.status;
        self.device_features_sel = state.device_features_sel;
        self.driver_features_sel = state.driver_features_sel;
        self.acked_features = state.acked_features & self.offered();
        self.queue_sel = state.queue_sel;
        self.device.restore_state(state.device.as_ref())?;
        self.interrupt
            .restore(state.interrupt_status, state.needs_reset);
        if state.active {
            self.activate();
            if !self.active {
                return Err("its queues were not usable".into());
            }
            self.device.restored();
            if !self.device.serves_own_queues() {
                for e in &self.queue_evts {
                    // Cannot fail but for an overflow: the notification is pending anyway.
                    let _ = e.write(1);
                }
            }
        }
        Ok(())
    }
}

impl<D: VirtioDevice> BusDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
            return;
        }
        data.fill(0);
        if data.len() == 4 && offset.is_multiple_of(4) {
            data.copy_from_slice(&self.read_register(offset).to_le_bytes());
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            self.device.write_config(offset - CONFIG_SPACE, data);
            return;
        }
        if let Ok(bytes) = <[u8; 4]>::try_from(data)
            && offset.is_multiple_of(4)
        {
            self.write_register(offset, u32::from_le_bytes(bytes));
        }
    }
}

impl<D: VirtioDevice> MutEventSubscriber for MmioTransport<D> {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.retire_evt.as_raw_fd() {
            let _ = self.retire_evt.read();
            self.device.retire(ops);
        } else if let Some(q) = self.queue_evts.iter().position(|e| e.as_raw_fd() == fd) {
            // Drained either way: a notification before the device runs is dropped.
            let _ = self.queue_evts[q].read();
            if self.active && !self.interrupt.needs_reset() {
                let served = self.device.queue_event(q, ops);
                self.served(served);
            }
        } else {
            // A stopped device still owns its host fds: it drains or parks them as before
            // activation.
            let served = self.device.host_event(events, ops);
            self.served(served);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(err) = ops.add(Events::new(&self.retire_evt, EventSet::IN)) {
            log::warn!("virtio: cannot watch the reset eventfd: {err:?}");
        }
        let own = self.device.serves_own_queues();
        for e in self.queue_evts.iter().filter(|_| !own) {
            if let Err(err) = ops.add(Events::new(e.as_ref(), EventSet::IN)) {
                log::warn!("virtio: cannot watch a queue eventfd: {err:?}");
            }
        }
        for fd in self.device.host_fds() {
            if let Err(err) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                log::warn!("virtio: cannot watch host fd {fd}: {err:?}");
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    /// A device that records what the transport tells it.
    #[derive(Default)]
    pub struct Probe {
        pub activated: Option<(usize, u64)>,
        pub resets: u32,
        pub events: Vec<usize>,
    }

    impl VirtioDevice for Probe {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 16]
        }
        fn features(&self) -> u64 {
            1 << 3
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            super::super::read_config_bytes(&[0xa, 0xb, 0xc, 0xd], offset, data);
        }
        fn activate(&mut self, active: Active) {
            self.activated = Some((active.queues.len(), active.features));
        }
        fn reset(&mut self) {
            self.resets += 1;
            self.activated = None;
        }
        fn queue_event(&mut self, queue: usize, _ops: &mut EventOps) -> Served {
            self.events.push(queue);
            Ok(())
        }
    }

    fn transport() -> MmioTransport<Probe> {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let irq = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        let evts = (0..2)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect();
        MmioTransport::new(
            Probe::default(),
            mem,
            irq,
            evts,
            EventFd::new(EFD_NONBLOCK).unwrap(),
            Arc::new(LogLimit::new("probe")),
        )
    }

    fn r(t: &mut MmioTransport<Probe>, off: u64) -> u32 {
        let mut d = [0u8; 4];
        t.read(off, &mut d);
        u32::from_le_bytes(d)
    }

    fn w(t: &mut MmioTransport<Probe>, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    /// Sets up both queues at sane addresses, as a driver would.
    fn setup_queues(t: &mut MmioTransport<Probe>) {
        for q in 0..2u32 {
            w(t, 0x30, q);
            w(t, 0x38, 16);
            let base = 0x1_0000 * (q + 1);
            w(t, 0x80, base);
            w(t, 0x90, base + 0x1000);
            w(t, 0xa0, base + 0x2000);
            w(t, 0x44, 1);
        }
    }

    #[test]
    fn identity_and_features() {
        let mut t = transport();
        assert_eq!(r(&mut t, 0), MAGIC);
        assert_eq!(r(&mut t, 4), 2);
        assert_eq!(r(&mut t, 8), 42);
        assert_eq!(r(&mut t, 0x10), 1 << 3);
        w(&mut t, 0x14, 1);
        assert_eq!(r(&mut t, 0x10), 1, "VERSION_1 in the high word");
        // Config space, any width.
        let mut d = [0u8; 2];
        t.read(0x101, &mut d);
        assert_eq!(d, [0xb, 0xc]);
        // Odd widths on registers read zero.
        let mut d = [0xffu8; 2];
        t.read(0, &mut d);
        assert_eq!(d, [0, 0]);
    }

    #[test]
    fn a_full_handshake_activates_and_a_reset_undoes_it() {
        let mut t = transport();
        w(&mut t, 0x70, S_ACKNOWLEDGE);
        w(&mut t, 0x70, S_ACKNOWLEDGE | S_DRIVER);
        w(&mut t, 0x24, 1);
        w(&mut t, 0x20, 1); // VERSION_1
        w(&mut t, 0x24, 0);
        w(&mut t, 0x20, 0xffff_ffff); // everything: only the offered bit sticks
        w(&mut t, 0x70, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
        assert_ne!(r(&mut t, 0x70) & S_FEATURES_OK, 0);
        setup_queues(&mut t);
        w(
            &mut t,
            0x70,
            S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
        );
        assert!(t.is_active());
        assert_eq!(t.device().activated, Some((2, VIRTIO_F_VERSION_1 | 1 << 3)));
        // Queues cannot move while running.
        w(&mut t, 0x30, 0);
        w(&mut t, 0x80, 0xdead_0000);
        assert_eq!(t.queues[0].desc_table(), 0x1_0000);
        w(&mut t, 0x70, 0);
        assert!(!t.is_active());
        assert_eq!(t.device().resets, 1);
        assert_eq!(r(&mut t, 0x70), 0);
    }

    #[test]
    fn a_legacy_driver_or_bad_queues_do_not_activate() {
        let mut t = transport();
        w(&mut t, 0x70, S_ACKNOWLEDGE | S_DRIVER);
        w(&mut t, 0x70, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
        assert_eq!(r(&mut t, 0x70) & S_FEATURES_OK, 0, "no VERSION_1, no deal");
        let mut t = transport();
        w(&mut t, 0x70, S_ACKNOWLEDGE | S_DRIVER);
        w(&mut t, 0x24, 1);
        w(&mut t, 0x20, 1);
        w(&mut t, 0x70, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
        // Queue 0 far outside the 1 MiB of guest memory, queue 1 never made ready.
        w(&mut t, 0x30, 0);
        w(&mut t, 0x38, 16);
        w(&mut t, 0x80, 0xffff_0000);
        w(&mut t, 0x44, 1);
        w(
            &mut t,
            0x70,
            S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
        );
        assert!(!t.is_active());
        assert_ne!(r(&mut t, 0x70) & S_NEEDS_RESET, 0);
        assert_ne!(r(&mut t, 0x60) & super::super::INT_CONFIG, 0);
        // Clearing bits without a reset is ignored.
        w(&mut t, 0x70, S_ACKNOWLEDGE);
        assert_ne!(r(&mut t, 0x70) & S_DRIVER, 0);
    }

    #[test]
    fn a_saved_transport_restores_active_and_looks_at_its_queues() {
        let mut t = transport();
        w(&mut t, 0x70, S_ACKNOWLEDGE | S_DRIVER);
        w(&mut t, 0x24, 1);
        w(&mut t, 0x20, 1);
        w(&mut t, 0x70, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
        setup_queues(&mut t);
        w(
            &mut t,
            0x70,
            S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
        );
        t.interrupt.raise(super::super::INT_VRING);
        let saved = t.save().unwrap();
        assert!(saved.active);
        let mut fresh = transport();
        fresh.restore(&saved).unwrap();
        assert!(fresh.is_active());
        assert_eq!(fresh.status(), saved.status);
        assert_eq!(fresh.device().activated, Some((2, VIRTIO_F_VERSION_1)));
        assert_eq!(r(&mut fresh, 0x60), super::super::INT_VRING);
        // Every queue is looked at once, and the interrupt raised again.
        for e in &fresh.queue_evts {
            assert_eq!(e.read().unwrap(), 1);
        }
        assert_eq!(fresh.interrupt.irqfd.read().unwrap(), 1);
        // A state whose queues this device does not have is refused.
        let mut odd = saved.clone();
        odd.queues.pop();
        assert!(transport().restore(&odd).is_err());
        let mut odd = saved;
        odd.queues[0].size = 3;
        assert!(transport().restore(&odd).is_err());
    }

    #[test]
    fn garbage_registers_are_harmless() {
        let mut t = transport();
        let mut x: u32 = 0x1234_5678;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let off = u64::from(x % 0x120) & !3;
            w(&mut t, off, x.rotate_left(7));
            let _ = r(&mut t, off);
        }
    }
}
