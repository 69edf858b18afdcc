//! The device manager: hands each virtio device a register window and an interrupt line
//! (vm-allocator), and describes it to the guest: a `virtio_mmio.device=` entry on the kernel
//! command line (linux-loader's `Cmdline`; for kernels without ACPI, such as the project's) and
//! a DSDT entry (for kernels with ACPI). At build time it puts each device on the MMIO bus,
//! registers an ioeventfd per queue and the irqfd, and hands the device to the event loop.
//!
//! Planning needs no KVM, so `ember run --print-config` shows the same command line the guest
//! gets; the order is the guest's: drives (the root device first as vda, then the others in
//! the configuration's order), then network interfaces (eth0, ...), then vsock.

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::{IoEventAddress, VmFd};
use linux_loader::cmdline::Cmdline;
use vm_allocator::{AddressAllocator, AllocPolicy, IdAllocator};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::bus::{Bus, BusError};
use serde::{Deserialize, Serialize};

use super::virtio::balloon::BalloonControl;
use super::virtio::mmio::{MmioTransport, QUEUE_NOTIFY, SavedTransport, WINDOW_SIZE};
use super::virtio::state::TransportState;
use super::virtio::{Interrupt, VirtioDevice};
use crate::arch::x86_64::acpi::AcpiDevice;
use crate::arch::x86_64::layout;
use crate::config::{Balloon, Drive, NetworkInterface, SharedDir, Vsock};
use crate::guest_log::GuestLogs;

/// Errors placing or registering a device.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// No window or interrupt line left.
    #[error("no room for another device: {0}")]
    Allocate(vm_allocator::Error),
    /// The command line cannot take the device's entry.
    #[error("the kernel command line has no room for a device entry ({0}): shorten it")]
    Cmdline(linux_loader::cmdline::Error),
    /// A KVM ioctl (ioeventfd, irqfd) failed.
    #[error("registering a device with KVM ({what}): {source}")]
    Kvm {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// An eventfd could not be made.
    #[error("a device eventfd: {0}")]
    EventFd(std::io::Error),
    /// The window overlaps something on the bus.
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// Which device a slot is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceSpec {
    /// A virtio block device.
    Block(Drive),
    /// A virtio network device.
    Net(NetworkInterface),
    /// The virtio vsock device: the configuration's (Firecracker's host convention), and or
    /// ember's own channel to a `process`'s init.
    Vsock {
        /// The configured device, if any.
        config: Option<Vsock>,
        /// Whether ember's channel rides on it.
        channel: bool,
    },
    /// The virtio-balloon device.
    Balloon(Balloon),
    /// A virtio-fs device serving a host directory.
    Fs {
        /// The directory.
        dir: SharedDir,
        /// The tag the guest mounts it by.
        tag: String,
    },
}

impl DeviceSpec {
    /// The device's id, as a snapshot's devices are reattached by: the drive's or the
    /// interface's id, `vsock`, or the share's tag.
    pub fn id(&self) -> &str {
        match self {
            DeviceSpec::Block(d) => &d.drive_id,
            DeviceSpec::Net(n) => &n.iface_id,
            DeviceSpec::Vsock { .. } => "vsock",
            DeviceSpec::Balloon(_) => "balloon",
            DeviceSpec::Fs { tag, .. } => tag,
        }
    }

    /// The host path or name behind it: the disk's file, the TAP, vsock's socket, the shared
    /// directory.
    pub fn host_path(&self) -> String {
        match self {
            DeviceSpec::Block(d) => d.path_on_host.display().to_string(),
            DeviceSpec::Net(n) => n.host_dev_name.clone(),
            DeviceSpec::Vsock { config, .. } => config
                .as_ref()
                .map(|v| v.uds_path.display().to_string())
                .unwrap_or_default(),
            DeviceSpec::Balloon(_) => String::new(),
            DeviceSpec::Fs { dir, .. } => dir.path_on_host.display().to_string(),
        }
    }

    /// The same device with its host side at `path` (a restore's reattachment): the disk's
    /// file, the TAP's name, or vsock's socket. A share cannot move, nor a vsock device
    /// without a socket.
    pub fn reattached(&self, path: &str) -> Option<DeviceSpec> {
        let mut spec = self.clone();
        match &mut spec {
            DeviceSpec::Block(d) => d.path_on_host = path.into(),
            DeviceSpec::Net(n) => n.host_dev_name = path.into(),
            DeviceSpec::Vsock {
                config: Some(v), ..
            } => v.uds_path = path.into(),
            _ => return None,
        }
        Some(spec)
    }

    /// How messages name the device: its kind and id.
    pub fn name(&self) -> String {
        match self {
            DeviceSpec::Block(d) => format!("virtio-blk {}", d.drive_id),
            DeviceSpec::Net(n) => format!("virtio-net {}", n.iface_id),
            DeviceSpec::Vsock { .. } => "virtio-vsock".into(),
            DeviceSpec::Balloon(_) => "virtio-balloon".into(),
            DeviceSpec::Fs { tag, .. } => format!("virtio-fs {tag}"),
        }
    }
}

/// A device with its place in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacedDevice {
    /// The device.
    pub spec: DeviceSpec,
    /// Guest-physical address of its register window.
    pub addr: u64,
    /// Its interrupt line (GSI, IOAPIC pin).
    pub irq: u32,
    /// How errors name it as the user gave it (`--disk a.img`,
    /// `vm.json: drives[0].path_on_host: a.img`); empty until the caller sets it.
    #[serde(skip)]
    pub input: String,
}

impl PlacedDevice {
    /// How the DSDT describes it.
    pub fn acpi(&self) -> AcpiDevice {
        AcpiDevice::VirtioMmio {
            addr: self.addr,
            len: WINDOW_SIZE,
            irq: self.irq,
        }
    }
}

/// Places `devices` in order: a window and an interrupt line each, and an entry on `cmdline`.
pub fn plan(
    devices: Vec<DeviceSpec>,
    cmdline: &mut Cmdline,
) -> Result<Vec<PlacedDevice>, ManagerError> {
    let mut windows = AddressAllocator::new(layout::VIRTIO_MMIO_START, layout::VIRTIO_MMIO_SIZE)
        .map_err(ManagerError::Allocate)?;
    let mut irqs = IdAllocator::new(layout::DEVICE_IRQ_FIRST, layout::DEVICE_IRQ_LAST)
        .map_err(ManagerError::Allocate)?;
    devices
        .into_iter()
        .map(|spec| {
            let window = windows
                .allocate(WINDOW_SIZE, WINDOW_SIZE, AllocPolicy::FirstMatch)
                .map_err(ManagerError::Allocate)?;
            let irq = irqs.allocate_id().map_err(ManagerError::Allocate)?;
            cmdline
                .add_virtio_mmio_device(WINDOW_SIZE, GuestAddress(window.start()), irq, None)
                .map_err(ManagerError::Cmdline)?;
            Ok(PlacedDevice {
                spec,
                addr: window.start(),
                irq,
                input: String::new(),
            })
        })
        .collect()
}

/// A device in a running VM: where it is, and its transport, for snapshots. The VM's
/// devices are a list of these in the guest's order, each named by its id
/// ([`DeviceSpec::id`]).
#[derive(Clone)]
pub struct Attached {
    /// The device and its place.
    pub place: PlacedDevice,
    /// Its transport.
    pub transport: Arc<Mutex<dyn SavedTransport>>,
    /// The host's side of the balloon, if this is the balloon.
    pub balloon: Option<Arc<BalloonControl>>,
}

/// A device as a snapshot holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    /// The device, its host side and its place in the guest.
    pub place: PlacedDevice,
    /// Its transport and queues.
    pub transport: TransportState,
}

/// What registering a device needs from the VM being built.
pub struct Registrar<'a> {
    /// The VM.
    pub vm: &'a VmFd,
    /// Guest memory.
    pub mem: &'a GuestMemoryMmap,
    /// The MMIO bus.
    pub mmio: &'a mut Bus,
    /// The event loop.
    pub events: &'a mut EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>,
    /// The VM's budgets for messages the guest can cause.
    pub logs: &'a GuestLogs,
}

impl Registrar<'_> {
    /// Puts `device` at `place`: its queue notifications become ioeventfds, its interrupt an
    /// irqfd, its registers a window on the MMIO bus, and it joins the event loop.
    pub fn register<D: VirtioDevice + 'static>(
        &mut self,
        device: D,
        place: &PlacedDevice,
    ) -> Result<Attached, ManagerError> {
        let kvm_err = |what| move |source| ManagerError::Kvm { what, source };
        let irqfd = EventFd::new(EFD_NONBLOCK).map_err(ManagerError::EventFd)?;
        self.vm
            .register_irqfd(&irqfd, place.irq)
            .map_err(kvm_err("irqfd"))?;
        let mut queue_evts = Vec::new();
        for q in 0..device.queue_max_sizes().len() {
            let evt = EventFd::new(EFD_NONBLOCK).map_err(ManagerError::EventFd)?;
            // A 32-bit write of the queue's index to QUEUE_NOTIFY signals this eventfd in
            // KVM, without a vCPU exit to ember.
            self.vm
                .register_ioevent(
                    &evt,
                    &IoEventAddress::Mmio(place.addr + QUEUE_NOTIFY),
                    q as u32,
                )
                .map_err(kvm_err("ioeventfd"))?;
            queue_evts.push(evt);
        }
        let transport = Arc::new(Mutex::new(MmioTransport::new(
            device,
            self.mem.clone(),
            Arc::new(Interrupt::new(irqfd)),
            queue_evts,
            EventFd::new(EFD_NONBLOCK).map_err(ManagerError::EventFd)?,
            self.logs.limit(place.spec.name()),
        )));
        self.mmio
            .insert(transport.clone(), place.addr, WINDOW_SIZE)?;
        self.events.add_subscriber(transport.clone());
        Ok(Attached {
            place: place.clone(),
            transport,
            balloon: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn drive(id: &str) -> DeviceSpec {
        DeviceSpec::Block(Drive {
            drive_id: id.into(),
            path_on_host: PathBuf::from("/x"),
            ..Default::default()
        })
    }

    #[test]
    fn windows_irqs_and_command_line_entries() {
        let mut c = Cmdline::try_from("console=ttyS0", 2048).unwrap();
        let placed = plan(vec![drive("a"), drive("b")], &mut c).unwrap();
        assert_eq!(
            (placed[0].addr, placed[0].irq, placed[1].addr, placed[1].irq),
            (
                layout::VIRTIO_MMIO_START,
                5,
                layout::VIRTIO_MMIO_START + 0x1000,
                6
            )
        );
        assert_eq!(
            c.as_cstring().unwrap().to_str().unwrap(),
            "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"
        );
        // Init arguments stay after `--`.
        let mut c = Cmdline::try_from("quiet -- init-arg", 2048).unwrap();
        plan(vec![drive("a")], &mut c).unwrap();
        assert!(
            c.as_cstring()
                .unwrap()
                .to_str()
                .unwrap()
                .ends_with("virtio_mmio.device=4K@0xd0000000:5 -- init-arg")
        );
    }

    #[test]
    fn interrupt_lines_run_out_cleanly() {
        let mut c = Cmdline::new(1 << 16).unwrap();
        let many = (0..30).map(|i| drive(&i.to_string())).collect();
        assert!(matches!(plan(many, &mut c), Err(ManagerError::Allocate(_))));
        let mut tiny = Cmdline::new(40).unwrap();
        assert!(matches!(
            plan(vec![drive("a"), drive("b")], &mut tiny),
            Err(ManagerError::Cmdline(_))
        ));
    }
}
