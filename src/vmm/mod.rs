//! The VMM: builds a VM from a [`ResolvedVm`] and a [`Runtime`] (boot steps 2-7 of
//! docs/DESIGN.md), then runs it until the guest leaves (steps 8-10) and says how it ended.

pub mod events;
mod requests;
mod snapshot;
mod teardown;

pub use requests::{RequestError, VmReply, VmRequest};
pub(crate) use teardown::KEEPER_CLONE_FLAGS;
pub use teardown::Teardown;

use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_bindings::{CpuId, KVM_CAP_SPLIT_IRQCHIP, KVM_MAX_CPUID_ENTRIES, kvm_enable_cap};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use vmm_sys_util::timerfd::TimerFd;

use crate::arch::x86_64::boot::{self, BootError, EntryPoint};
use crate::arch::x86_64::{acpi, layout, mptable};
use crate::command::{
    self,
    session::{CommandResult, ProcessIo, Session},
};
use crate::devices::boot_timer::{BOOT_TIMER_PORT, BOOT_TIMER_PORT_LEN, BootTimer};
use crate::devices::bus::{Bus, BusError};
use crate::devices::i8042::{I8042, I8042_PORT, I8042_PORT_LEN};
use crate::devices::ioapic::{IOAPIC_MMIO_LEN, Ioapic};
use crate::devices::manager::{Attached, DeviceSpec, ManagerError, PlacedDevice, Registrar};
use crate::devices::power::{POWER_PORT, POWER_PORT_LEN, Power};
use crate::devices::serial::{
    COM1_IRQ, COM1_PORT, COM1_PORT_LEN, ConsoleOut, ConsoleWatch, SerialDevice, SerialState,
};
use crate::devices::virtio::balloon::{Balloon, BalloonControl};
use crate::devices::virtio::block::{Block, BlockError};
use crate::devices::virtio::fs::{Fs, Share};
use crate::devices::virtio::net::{Net, NetError, Tap, default_mac};
use crate::devices::virtio::vsock::{Vsock, VsockError};
pub use crate::exit::VmOutcome;
use crate::exit::{ExitReason, ExitSignal, ExitSignalError, classify};
use crate::guest_log::GuestLogs;
use crate::kvm::{self, KvmError};
use crate::memory::{self, MemoryError};
use crate::placement::Placement;
use crate::resolve::ResolvedVm;
use crate::seccomp::{self, Role, Seccomp, SeccompError};
use crate::signals::{self, SignalFd};
use crate::snapshot::SnapshotFiles;
use crate::sync::{Background, lock};
use crate::timing::{Phase, Timeline};
use crate::vcpu::{Vcpu, VcpuControl, VcpuError, VcpuSetup, VcpuThreads};
use events::{ConsoleInput, StopEvents};

/// Where the TSS goes (see the layout).
const KVM_TSS_ADDRESS: usize = layout::KVM_TSS_START as usize;
/// How long a stopping VMM waits for a vCPU thread to leave before leaving it behind (one
/// stuck in a host write that no signal interrupts).
const VCPU_STOP_LIMIT: Duration = Duration::from_secs(2);

/// Errors building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// KVM could not be opened or lacks something.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// Guest memory failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Loading the kernel or initrd failed.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// The MP table failed.
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    /// The ACPI tables failed.
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    /// A vCPU failed to set up.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// More vCPUs than KVM allows.
    #[error("{input}: more than this host's KVM allows ({max}): use at most {max}")]
    TooManyVcpus {
        /// The vCPU count's input, with its value.
        input: String,
        /// Allowed.
        max: u32,
    },
    /// The guest's memory size does not suit what goes in it, or the host.
    #[error("{source} ({input})")]
    MemorySize {
        /// The memory size's input, with its value.
        input: String,
        /// What did not fit.
        source: Box<VmmError>,
    },
    /// A device's host side could not be set up (a disk image, a TAP, a vsock socket).
    #[error("{input}: {reason}")]
    Device {
        /// The device's input, as the user gave it.
        input: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A device could not be placed.
    #[error("device layout: {0}")]
    Bus(#[from] BusError),
    /// The exit eventfd failed.
    #[error(transparent)]
    ExitSignal(#[from] ExitSignalError),
    /// A VM-level KVM ioctl failed.
    #[error("{what}: {source}")]
    VmIoctl {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// A host resource (eventfd, epoll, signalfd, thread) failed.
    #[error("{what}: {source}")]
    Host {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The event loop failed.
    #[error("event loop: {0:?}")]
    EventLoop(event_manager::Error),
    /// A seccomp filter could not be built or installed.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// A device could not be put in place.
    #[error(transparent)]
    Devices(#[from] ManagerError),
    /// A snapshot could not be read, or cannot be restored here.
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
}

/// What kind of failure a [`VmmError`] is, for a front end's exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The user's input cannot be built: fix the input.
    BadInput,
    /// /dev/kvm is missing, not permitted, or lacks something ember needs.
    NoKvm,
    /// The host failed (an ioctl, a thread, an eventfd).
    Host,
}

impl VmmError {
    /// Whose the failure is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            VmmError::Kvm(
                KvmError::NoDevice
                | KvmError::NoPermission
                | KvmError::MissingCap(..)
                | KvmError::ApiVersion(_)
                | KvmError::Open(_),
            ) => ErrorKind::NoKvm,
            VmmError::Boot(_)
            | VmmError::TooManyVcpus { .. }
            | VmmError::MemorySize { .. }
            | VmmError::Device { .. }
            | VmmError::Mptable(_)
            | VmmError::Acpi(_)
            | VmmError::Snapshot(_) => ErrorKind::BadInput,
            _ => ErrorKind::Host,
        }
    }
}

/// KVM's supported CPUID, read on a helper thread of its own (with its own /dev/kvm file) while
/// the caller goes on: 0.3-0.5 ms on a PVM host, where the host's own CPUID instructions trap.
/// `ember run` starts it before it even reads its configuration.
pub struct CpuidRead(Background<Result<CpuId, kvm_ioctls::Error>>);

impl CpuidRead {
    /// Starts the read, on the CPUs `placement` names if any.
    pub fn start(placement: Option<&Placement>) -> Result<Self, VmmError> {
        Background::start("ember-cpuid", placement, || {
            Kvm::new()?.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        })
        .map(Self)
        .map_err(|source| VmmError::Host {
            what: "start the CPUID thread",
            source,
        })
    }

    /// Waits for the read.
    pub fn wait(self) -> Result<CpuId, VmmError> {
        self.0
            .wait()
            .ok_or(VmmError::Host {
                what: "read KVM's supported CPUID",
                source: std::io::Error::other("its thread panicked"),
            })?
            .map_err(|source| VmmError::VmIoctl {
                what: "read KVM's supported CPUID",
                source,
            })
    }
}

/// What a running VM is attached to: not part of its configuration, but of the process that
/// runs it.
pub struct Runtime {
    /// Where guest console output goes.
    pub console_out: Box<dyn Write + Send>,
    /// Where console input comes from (a pollable fd), if anywhere.
    pub console_in: Option<RawFd>,
    /// Whether console input is a terminal (enables the Ctrl-A x escape).
    pub console_in_is_tty: bool,
    /// Where startup phases are stamped.
    pub timeline: Arc<Timeline>,
    /// Whether to count the guest's resident memory when it stops (for `--timings`).
    pub measure_guest_memory: bool,
    /// Which threads run under a seccomp filter. With [`Seccomp::AllThreads`] the thread that
    /// calls [`Vmm::run`] stays confined after it returns.
    pub seccomp: Seccomp,
    /// When KVM's share of the teardown happens: [`Teardown::AfterExit`] only for a process
    /// that exits once [`Vmm::run`] returns.
    pub teardown: Teardown,
    /// KVM's supported CPUID, if the caller started reading it (as `ember run` does at its
    /// start); [`Vmm::build`] starts the read itself otherwise.
    pub cpuid: Option<CpuidRead>,
    /// Where a `process`'s stdio goes (its stdin then does not go to the console); default:
    /// no input, this process's stdout and stderr.
    pub process_io: Option<ProcessIo>,
    /// Where to write a snapshot when the guest says "ready", and what then.
    pub snapshot_on_ready: Option<SnapshotOnReady>,
    /// Whether a front end may ask for snapshots while the VM runs ([`VmHandle::ask`]):
    /// the MSRs a snapshot saves are listed up front.
    pub snapshots_on_request: bool,
    /// The host signals that stop the VM, read on the event loop ([`ExitReason::Signal`]):
    /// the front end's choice (`ember run` gives [`signals::STOP_SIGNALS`]); none leaves the
    /// process's signals alone, for a caller that handles them itself and stops the VM with
    /// [`VmHandle::stop`].
    pub stop_signals: Vec<libc::c_int>,
}

/// `--snapshot-on-ready`: the files, made before the VM runs, and whether the VM goes on.
pub struct SnapshotOnReady {
    /// The snapshot's files.
    pub files: SnapshotFiles,
    /// After the snapshot: stop the VM (`false`) or let it run on (`true`).
    pub continue_after: bool,
}

impl Runtime {
    /// No console input, output to `out`, a fresh timeline: what a library user or a test
    /// wants, with `seccomp` as given.
    pub fn detached(out: Box<dyn Write + Send>, seccomp: Seccomp) -> Self {
        Self {
            console_out: out,
            console_in: None,
            console_in_is_tty: false,
            timeline: Arc::new(Timeline::new()),
            measure_guest_memory: false,
            seccomp,
            teardown: Teardown::Inline,
            cpuid: None,
            process_io: None,
            snapshot_on_ready: None,
            snapshots_on_request: false,
            stop_signals: signals::STOP_SIGNALS.to_vec(),
        }
    }
}

/// A finished run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRun {
    /// How it ended.
    pub outcome: VmOutcome,
    /// Guest memory resident when the guest stopped (0 unless measured).
    pub guest_touched_bytes: u64,
    /// Whether KVM's teardown was handed to a keeper that ends after this process.
    pub teardown_deferred: bool,
    /// Messages the guest caused that were counted instead of logged, by source
    /// ([`crate::guest_log`]).
    pub suppressed_messages: Vec<(String, u64)>,
    /// Console bytes stdout could not take, and why the first was dropped.
    pub console_dropped: (u64, Option<String>),
    /// What became of a `process`, if the VM ran one.
    pub command: Option<CommandResult>,
    /// What ember's init printed it could not do, if it did: (kind, reason).
    pub init_failure: Option<(String, String)>,
    /// Host time spent preparing the shared directories (the detached mounts, the file
    /// servers and their threads).
    pub share_setup: Duration,
}

/// Pauses, resumes and stops a running VM from any thread.
#[derive(Clone)]
pub struct VmHandle {
    vcpus: Vec<Arc<VcpuControl>>,
    exit: Arc<ExitSignal>,
    requests: Arc<requests::Requests>,
    balloon: Option<Arc<BalloonControl>>,
}

impl VmHandle {
    /// The host's side of the VM's balloon, if it has one: its target and what it holds.
    pub fn balloon(&self) -> Option<&BalloonControl> {
        self.balloon.as_deref()
    }

    /// Whether the VM wrote its snapshot (`--snapshot-on-ready`).
    pub fn snapshot_written(&self) -> bool {
        self.exit.has_snapshot()
    }

    /// Takes every vCPU out of the guest and holds it there; returns whether all of them
    /// paused within `limit` (a VM that is stopping does not pause).
    pub fn pause(&self, limit: Duration) -> bool {
        self.vcpus.iter().all(|v| v.pause(limit))
    }

    /// Lets every paused vCPU run again.
    pub fn resume(&self) {
        for v in &self.vcpus {
            v.resume();
        }
    }

    /// Stops the VM as a host signal would: `run` returns with [`ExitReason::Signal`].
    pub fn stop(&self, signal: i32) {
        self.exit.request(ExitReason::Signal(signal));
    }
}

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// A `process`'s channel session and what it records.
type ProcessSession = (Arc<Mutex<Session>>, Arc<Mutex<CommandResult>>);

/// A built VM, ready to run.
pub struct Vmm {
    // Field order is drop order: vCPU fds and the devices (the IOAPIC holds the VM, to set its
    // routes) go before the VM, the VM before the memory it maps. Measured on a PVM host with
    // the in-kernel irqchip (tiny guest, 15 runs each): closing the VM fd was the whole
    // teardown (3.1 ms median, up to 16), and unmapping guest memory first made it slower
    // (4.2 ms, plus 0.2 for the unmap).
    threads: VcpuThreads,
    vcpus: Vec<Vcpu>,
    controls: Vec<Arc<VcpuControl>>,
    events: EventManager<Subscriber>,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    serial: Arc<Mutex<SerialDevice>>,
    ioapic: Arc<Mutex<Ioapic>>,
    vm: Arc<VmFd>,
    _kvm: Kvm,
    mem: GuestMemoryMmap,
    exit: Arc<ExitSignal>,
    console: Arc<Mutex<ConsoleWatch>>,
    guest_logs: GuestLogs,
    session: Option<ProcessSession>,
    share_setup: Duration,
    timeout: Option<Duration>,
    measure_guest_memory: bool,
    seccomp: Seccomp,
    teardown: Teardown,
    /// The MSRs a snapshot saves (KVM_GET_MSR_INDEX_LIST).
    msr_index: Arc<Vec<u32>>,
    mem_size: u64,
    /// The virtio devices, in the guest's order, for snapshots.
    devices: Vec<Attached>,
    exec: Option<std::path::PathBuf>,
    snapshot_on_ready: Option<SnapshotOnReady>,
    /// What front ends on other threads ask of the running VM.
    requests: Arc<requests::Requests>,
    /// The host signals that stop it.
    stop_signals: Vec<libc::c_int>,
    /// Paused by a request (a snapshot on request needs it).
    paused: bool,
    /// Startup stamps.
    pub timeline: Arc<Timeline>,
    /// How the guest enters (none for a restored VM: it continues where it was).
    pub entry: Option<EntryPoint>,
}

/// Guest RAM for a new VM: fresh, or a snapshot's memory file mapped copy-on-write.
enum Ram<'a> {
    /// Anonymous memory of this size.
    Fresh(u64),
    /// The memory file, and the RAM size it holds.
    Snapshot(&'a std::fs::File, u64),
}

/// What every VM has, booted or restored: KVM, the vCPU threads (waiting), the VM, its memory
/// and split irqchip, the legacy devices on their buses, and the event loop. Boot steps 2-5 up
/// to the virtio devices.
struct Base {
    kvm: Kvm,
    placement: Option<Placement>,
    /// Taken by whoever needs it first.
    supported: Option<CpuidRead>,
    threads: VcpuThreads,
    vm: Arc<VmFd>,
    mem: GuestMemoryMmap,
    exit: Arc<ExitSignal>,
    guest_logs: GuestLogs,
    events: EventManager<Subscriber>,
    console: Arc<Mutex<ConsoleWatch>>,
    serial: Arc<Mutex<SerialDevice>>,
    ioapic: Arc<Mutex<Ioapic>>,
    pio: Bus,
    mmio: Bus,
}

impl Base {
    /// Creates it for `vcpus` vCPUs (`vcpus_input` names where the count came from) and
    /// `ram` (`mem_input`, the same for the size), its UART in `serial` state if given, console
    /// input from `console_in`. Takes the console output and the CPUID read from `runtime`.
    fn create(
        vcpus: u32,
        vcpus_input: &str,
        ram: Ram,
        mem_input: &str,
        serial: Option<&SerialState>,
        console_in: Option<RawFd>,
        runtime: &mut Runtime,
    ) -> Result<Self, VmmError> {
        let timeline = runtime.timeline.clone();
        // Step 2: KVM and its capabilities.
        let kvm = kvm::open()?;
        timeline.mark(Phase::KvmReady);
        // The helpers (the CPUID read, the vCPU threads) run beside this thread, not on its CPU.
        let placement = Placement::away_from_here();
        let supported = match runtime.cpuid.take() {
            Some(read) => read,
            None => CpuidRead::start(placement.as_ref())?,
        };
        let max = kvm::max_vcpus(&kvm);
        if vcpus > max {
            return Err(VmmError::TooManyVcpus {
                input: vcpus_input.to_string(),
                max,
            });
        }
        // The vCPU threads first: they start and install their filters while the VM is
        // built, on the host's other CPUs (each costs 0.2-0.3 ms on a PVM host), instead of
        // between the last ioctl and the first guest instruction.
        let threads = VcpuThreads::start(vcpus, runtime.seccomp != Seccomp::Off, placement)?;
        // Step 3: the VM and its TSS.
        let vm_err = |what| move |source| VmmError::VmIoctl { what, source };
        let vm_fd = kvm.create_vm().map_err(vm_err("create the VM"))?;
        vm_fd
            .set_tss_address(KVM_TSS_ADDRESS)
            .map_err(vm_err("set the TSS address"))?;
        timeline.mark(Phase::VmCreated);

        // Step 4: guest memory, then the interrupt controllers. A split irqchip: KVM keeps only
        // the local APICs, ember the IOAPIC (`devices::ioapic`); there is no PIC and no PIT.
        // Measured on a PVM host (examples/kvm_irqchip_cost.rs, docs/startup-latency.md): the
        // in-kernel PIC, IOAPIC and PIT cost 0.1-0.5 ms to create and 13-18 ms of KVM's time to
        // destroy, and a memslot registered after them waits out an SRCU grace period (5-12
        // ms); the split irqchip costs under 0.01 ms, and a VM without them closes in 0.3-0.4.
        let mem = match ram {
            Ram::Fresh(size) => memory::create(size).map_err(|e| VmmError::MemorySize {
                input: mem_input.to_string(),
                source: Box::new(e.into()),
            })?,
            Ram::Snapshot(file, size) => {
                crate::snapshot::memory::map(file, size).map_err(|source| VmmError::Host {
                    what: "map the snapshot's memory file",
                    source,
                })?
            }
        };
        memory::register(&vm_fd, &memory::regions(&mem))?;
        timeline.mark(Phase::MemoryMapped);
        let split = kvm_enable_cap {
            cap: KVM_CAP_SPLIT_IRQCHIP,
            args: [layout::IOAPIC_PINS as u64, 0, 0, 0],
            ..Default::default()
        };
        vm_fd
            .enable_cap(&split)
            .map_err(vm_err("enable the split irqchip"))?;
        let vm_fd = Arc::new(vm_fd);

        // Step 5: the legacy devices and the event loop.
        let host_err = |what| move |source| VmmError::Host { what, source };
        let exit = Arc::new(ExitSignal::new(timeline.clone())?);
        let guest_logs = GuestLogs::default();
        let mut events: EventManager<Subscriber> =
            EventManager::new().map_err(VmmError::EventLoop)?;
        let console = Arc::new(Mutex::new(ConsoleWatch::default()));
        let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(host_err("serial irq eventfd"))?;
        vm_fd
            .register_irqfd(&serial_irq, COM1_IRQ)
            .map_err(vm_err("register the serial irqfd"))?;
        let out = ConsoleOut::new(
            std::mem::replace(&mut runtime.console_out, Box::new(std::io::sink())),
            timeline.clone(),
            console.clone(),
            exit.clone(),
        );
        let (serial_dev, fifo_drained) =
            SerialDevice::new(serial_irq, out, serial).map_err(host_err("serial device"))?;
        let serial = Arc::new(Mutex::new(serial_dev));
        events.add_subscriber(Arc::new(Mutex::new(ConsoleInput::new(
            exit.clone(),
            serial.clone(),
            fifo_drained,
            console_in,
            runtime.console_in_is_tty,
        ))));
        let boot_timer = Arc::new(Mutex::new(BootTimer::new(timeline.clone(), exit.clone())));
        let mut pio = Bus::new();
        pio.insert(serial.clone(), COM1_PORT, COM1_PORT_LEN)?;
        pio.insert(
            Arc::new(Mutex::new(I8042::new(exit.clone()))),
            I8042_PORT,
            I8042_PORT_LEN,
        )?;
        pio.insert(boot_timer.clone(), BOOT_TIMER_PORT, BOOT_TIMER_PORT_LEN)?;
        pio.insert(
            Arc::new(Mutex::new(Power::new(exit.clone()))),
            POWER_PORT,
            POWER_PORT_LEN,
        )?;
        let mut mmio = Bus::new();
        mmio.insert(boot_timer, layout::BOOT_TIMER_MMIO, 1)?;
        // The IOAPIC's id: after the vCPUs' APIC ids, as the MP table and MADT say.
        let ioapic = Arc::new(Mutex::new(Ioapic::new(
            vcpus as u8,
            Box::new(vm_fd.clone()),
        )));
        mmio.insert(ioapic.clone(), layout::IOAPIC_START, IOAPIC_MMIO_LEN)?;
        Ok(Self {
            kvm,
            placement,
            supported: Some(supported),
            threads,
            vm: vm_fd,
            mem,
            exit,
            guest_logs,
            events,
            console,
            serial,
            ioapic,
            pio,
            mmio,
        })
    }
}

impl Base {
    /// KVM's supported CPUID, waited for.
    fn supported(&mut self) -> Result<CpuId, VmmError> {
        match self.supported.take() {
            Some(read) => read.wait(),
            None => Err(VmmError::Host {
                what: "read KVM's supported CPUID",
                source: std::io::Error::other("read twice"),
            }),
        }
    }
}

/// What a VM's devices and guest add to its [`Base`] once built or restored.
struct Extras {
    vcpus: Vec<Vcpu>,
    session: Option<ProcessSession>,
    share_setup: Duration,
    timeout: Option<Duration>,
    entry: Option<EntryPoint>,
    mem_size: u64,
    /// The virtio devices.
    devices: Vec<Attached>,
    /// The `--exec` program, whose status the guest reports (kept in a snapshot).
    exec: Option<std::path::PathBuf>,
}

impl Vmm {
    /// Builds the VM: KVM, memory, devices, kernel, boot parameters, vCPUs.
    pub fn build(mut vm: ResolvedVm, mut runtime: Runtime) -> Result<Self, VmmError> {
        let timeline = runtime.timeline.clone();
        let sized = |e: VmmError| VmmError::MemorySize {
            input: vm.names.mem.clone(),
            source: Box::new(e),
        };
        // A process takes stdin for itself; the console then gets none.
        let console_in = if vm.program.is_some() {
            None
        } else {
            runtime.console_in
        };
        let mut base = Base::create(
            vm.vcpus,
            &vm.names.vcpus,
            Ram::Fresh(vm.mem_size),
            &vm.names.mem,
            None,
            console_in,
            &mut runtime,
        )?;
        let host_err = |what| move |source| VmmError::Host { what, source };
        // Step 5, continued: the virtio devices.
        let mut registrar = Registrar {
            vm: &base.vm,
            mem: &base.mem,
            mmio: &mut base.mmio,
            events: &mut base.events,
            logs: &base.guest_logs,
        };
        let mut session_stream = None;
        let mut share_setup = Duration::ZERO;
        let mut attached = Vec::with_capacity(vm.devices.len());
        for place in &vm.devices {
            let device = |reason: String| VmmError::Device {
                input: place.input.clone(),
                reason,
            };
            let a = match &place.spec {
                DeviceSpec::Vsock {
                    config,
                    channel: true,
                } => {
                    let (ours, theirs) = UnixStream::pair()
                        .map_err(host_err("the process channel's socket pair"))?;
                    ours.set_nonblocking(true)
                        .map_err(host_err("the process channel's socket pair"))?;
                    session_stream = Some(ours);
                    let channel = Some((command::VSOCK_PORT, theirs));
                    registrar.register(open_vsock(place, config.as_ref(), channel)?, place)?
                }
                DeviceSpec::Fs { dir, tag } => {
                    let started = std::time::Instant::now();
                    let share = Share::prepare(&dir.path_on_host, dir.writable)
                        .map_err(|e| device(e.to_string()))?;
                    let fs = Fs::new(
                        tag,
                        share,
                        base.placement.as_ref(),
                        runtime.seccomp != Seccomp::Off,
                    )
                    .map_err(|e| device(e.to_string()))?;
                    share_setup += started.elapsed();
                    registrar.register(fs, place)?
                }
                _ => attach_host_device(&mut registrar, place, vm.mem_size)?,
            };
            attached.push(a);
        }
        let session = match session_stream {
            Some(stream) => {
                let io = runtime.process_io.take().unwrap_or(ProcessIo {
                    stdin: None,
                    stdout: libc::STDOUT_FILENO,
                    stderr: libc::STDERR_FILENO,
                    escape: false,
                    winsize: None,
                });
                let result = Arc::new(Mutex::new(CommandResult::default()));
                let s = Arc::new(Mutex::new(Session::new(
                    stream,
                    io,
                    result.clone(),
                    base.exit.clone(),
                    timeline.clone(),
                )));
                base.events.add_subscriber(s.clone());
                Some((s, result))
            }
            None => None,
        };

        let supported = base.supported()?;
        // Step 6: kernel, initrd, command line, MP table, ACPI tables, boot parameters.
        let mem = &base.mem;
        let kernel =
            boot::load_kernel(mem, vm.mem_size, &mut vm.kernel).map_err(|e| sized(e.into()))?;
        let initrd = match &vm.initrd {
            Some(img) => Some(
                boot::load_initrd(mem, vm.mem_size, &kernel, &img.name, &img.bytes)
                    .map_err(|e| sized(e.into()))?,
            ),
            None => None,
        };
        let cmdline = vm.cmdline_text();
        boot::write_cmdline(mem, &cmdline).map_err(|e| sized(e.into()))?;
        // Both CPU descriptions: the MP table for kernels without ACPI (the project's),
        // ACPI for those that have it and may lack MP-table support (Debian's cloud kernel).
        mptable::write(mem, vm.vcpus)?;
        let mut described = vec![acpi::AcpiDevice::Serial {
            port: COM1_PORT as u16,
            irq: COM1_IRQ,
        }];
        described.extend(vm.devices.iter().map(|d| d.acpi()));
        let rsdp = acpi::write(mem, vm.vcpus, &described)?;
        boot::write_boot_params(mem, vm.mem_size, &kernel, cmdline.len(), initrd, rsdp)?;
        timeline.mark(Phase::KernelLoaded);

        // Step 7: vCPUs.
        let setup = VcpuSetup {
            supported_cpuid: &supported,
            cpu_count: vm.vcpus,
            mem,
            mem_size: vm.mem_size,
            entry: kernel.entry,
            logs: &base.guest_logs,
        };
        let vcpus = (0..vm.vcpus)
            .map(|id| Vcpu::new(&base.vm, id, &setup))
            .collect::<Result<Vec<_>, _>>()?;
        timeline.mark(Phase::VcpusConfigured);
        let extras = Extras {
            vcpus,
            session,
            share_setup,
            timeout: vm.timeout,
            entry: Some(kernel.entry),
            mem_size: vm.mem_size,
            devices: attached,
            exec: vm.exec.clone(),
        };
        Ok(Self::assemble(base, extras, runtime))
    }

    /// The VM from its parts.
    fn assemble(base: Base, extras: Extras, runtime: Runtime) -> Self {
        // Only a VM that will be snapshotted needs the MSR list (and the armed "ready").
        if runtime.snapshot_on_ready.is_some() {
            base.exit.arm_snapshot();
        }
        let msr_index = if runtime.snapshot_on_ready.is_some() || runtime.snapshots_on_request {
            base.kvm
                .get_msr_index_list()
                .map(|l| l.as_slice().to_vec())
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let controls = extras.vcpus.iter().map(Vcpu::control).collect();
        Self {
            threads: base.threads,
            vcpus: extras.vcpus,
            controls,
            events: base.events,
            vm: base.vm,
            _kvm: base.kvm,
            mem: base.mem,
            exit: base.exit,
            console: base.console,
            guest_logs: base.guest_logs,
            session: extras.session,
            share_setup: extras.share_setup,
            pio: Arc::new(base.pio),
            mmio: Arc::new(base.mmio),
            serial: base.serial,
            ioapic: base.ioapic,
            msr_index: Arc::new(msr_index),
            mem_size: extras.mem_size,
            devices: extras.devices,
            exec: extras.exec,
            snapshot_on_ready: runtime.snapshot_on_ready,
            requests: Arc::default(),
            stop_signals: runtime.stop_signals,
            paused: false,
            timeout: extras.timeout,
            measure_guest_memory: runtime.measure_guest_memory,
            seccomp: runtime.seccomp,
            teardown: runtime.teardown,
            timeline: runtime.timeline,
            entry: extras.entry,
        }
    }

    /// A handle to pause, resume or stop this VM while [`Vmm::run`] runs it.
    pub fn handle(&self) -> VmHandle {
        VmHandle {
            vcpus: self.controls.clone(),
            exit: self.exit.clone(),
            requests: self.requests.clone(),
            balloon: self.devices.iter().find_map(|d| d.balloon.clone()),
        }
    }

    /// The VM's KVM file, for device set-up by library users.
    pub fn vm_fd(&self) -> &VmFd {
        &self.vm
    }

    /// Runs the VM until the guest leaves, a vCPU fails, or a signal stops it.
    pub fn run(mut self) -> Result<VmRun, VmmError> {
        let host_err = |what| move |source| VmmError::Host { what, source };
        // Signals become events: block them here (the vCPU threads block them themselves) and
        // read them from a signalfd in the event loop.
        let signals = SignalFd::new(&self.stop_signals).map_err(host_err("signalfd"))?;
        signals::register_kick_handler().map_err(host_err("kick signal handler"))?;
        // Armed now, before this thread's filter (timerfd_create and settime are not in it).
        let deadline = match self.timeout {
            Some(after) => {
                let timer_err = |e: vmm_sys_util::errno::Error| VmmError::Host {
                    what: "the timeout's timerfd",
                    source: std::io::Error::from_raw_os_error(e.errno()),
                };
                let mut t = TimerFd::new().map_err(timer_err)?;
                t.reset(after, None).map_err(timer_err)?;
                Some((t, after))
            }
            None => None,
        };
        self.events
            .add_subscriber(Arc::new(Mutex::new(StopEvents::new(
                self.exit.clone(),
                signals,
                deadline,
            ))));

        // The keeper's pipe now: the VMM thread's filter has no pipe2. Without it the
        // teardown simply stays inline.
        let handoff = match self.teardown {
            Teardown::AfterExit => teardown::Handoff::prepare()
                .inspect_err(|e| log::debug!("teardown stays inline: no pipe: {e}"))
                .ok(),
            Teardown::Inline => None,
        };
        let vmm_filter = match self.seccomp {
            Seccomp::AllThreads => Some(seccomp::filter(Role::Vmm)?),
            Seccomp::Off | Seccomp::VcpuThreads => None,
        };
        // Every thread is confined before the first guest instruction: the vCPU threads have
        // had their filters since the build (a failure stops the VM before it starts), and
        // this thread's goes on now. Measured on a PVM host, putting it on after the launch
        // instead would start the guest about 0.3 ms sooner, with this thread unconfined while
        // guest code runs: not worth it (docs/security.md).
        self.threads.ready()?;
        if let Some(f) = &vmm_filter {
            seccomp::apply(f, Role::Vmm)?;
        }
        seccomp::self_test(Role::Vmm, vmm_filter.is_some());
        // Into the guest.
        let launched = Launched {
            controls: self.controls.clone(),
            handles: std::mem::take(&mut self.threads).launch(
                std::mem::take(&mut self.vcpus),
                &self.pio,
                &self.mmio,
                &self.exit,
                &self.timeline,
            ),
        };

        let mut loop_result = Ok(());
        while !self.exit.is_stopping() {
            if let Err(e) = self.events.run() {
                loop_result = Err(VmmError::EventLoop(e));
                self.exit.request(ExitReason::VcpuFailed {
                    cpu: 0,
                    what: "event loop failed".into(),
                });
            }
            if self.exit.take_snapshot_request() {
                self.on_ready();
            }
            for (request, reply) in self.requests.take() {
                // The asker may have given up waiting: nothing to tell it then.
                let _ = reply.send(self.serve(request));
            }
        }
        drop(launched);
        loop_result?;
        // What the program wrote last, still on its way to stdout and stderr.
        let command = self.session.as_ref().map(|(s, result)| {
            lock(s).finish();
            lock(result).clone()
        });

        let guest_touched_bytes = if self.measure_guest_memory {
            memory::resident_bytes(&self.mem)
        } else {
            0
        };
        let (panic, console_dropped, init_failure) = {
            let c = lock(&self.console);
            (
                c.panic.clone(),
                (c.dropped, c.drop_reason.clone()),
                c.init_failure.clone(),
            )
        };
        let outcome = classify(
            self.exit.reason().unwrap_or(ExitReason::Reset),
            panic,
            self.exit.guest_status(),
        );
        // Every vCPU thread has stopped: hand the VM to a keeper, and keep guest memory
        // mapped (one reference never dropped), so that nothing this process still does
        // before it exits makes KVM tear down.
        let teardown_deferred = match handoff.map(|h| h.start(self.vm.as_raw_fd())) {
            Some(Ok(())) => {
                std::mem::forget(self.mem.clone());
                true
            }
            Some(Err(e)) => {
                log::debug!("teardown stays inline: no keeper: {e}");
                false
            }
            None => false,
        };
        Ok(VmRun {
            outcome,
            guest_touched_bytes,
            teardown_deferred,
            suppressed_messages: self.guest_logs.suppressed(),
            console_dropped,
            command,
            init_failure,
            share_setup: self.share_setup,
        })
    }
}

/// The launched vCPU threads: asked to stop and joined when dropped, so that no way out of
/// [`Vmm::run`] (an error, a panic unwinding through a library caller) leaves one running the
/// guest.
struct Launched {
    controls: Vec<Arc<VcpuControl>>,
    handles: Vec<JoinHandle<Option<Vcpu>>>,
}

impl Drop for Launched {
    fn drop(&mut self) {
        stop_vcpus(&self.controls, std::mem::take(&mut self.handles));
    }
}

/// Asks every vCPU thread to stop (once each: `immediate_exit` and one kick), waits for them,
/// then joins them. A thread that does not stop within [`VCPU_STOP_LIMIT`] (stuck in a host
/// write) is left behind, detached.
fn stop_vcpus(controls: &[Arc<VcpuControl>], handles: Vec<JoinHandle<Option<Vcpu>>>) {
    for c in controls {
        c.request_stop();
    }
    let deadline = std::time::Instant::now() + VCPU_STOP_LIMIT;
    for (c, h) in controls.iter().zip(handles) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if c.wait_stopped(left) {
            // Dropping the returned vCPU closes its fd here, outside the vCPU's filter.
            drop(h.join());
        } else {
            log::warn!("vCPU {} did not stop in time; leaving it behind", c.id());
        }
    }
}

/// Opens the host side of a block, network or vsock device (without ember's channel), or
/// makes the balloon (for a guest of `mem_size` bytes), and registers it: what a boot and a
/// restore do alike.
fn attach_host_device(
    registrar: &mut Registrar,
    place: &PlacedDevice,
    mem_size: u64,
) -> Result<Attached, VmmError> {
    let device = |reason: String| VmmError::Device {
        input: place.input.clone(),
        reason,
    };
    Ok(match &place.spec {
        DeviceSpec::Block(d) => registrar.register(
            Block::open(&d.drive_id, &d.path_on_host, d.is_read_only)
                .map_err(|e: BlockError| device(e.to_string()))?,
            place,
        )?,
        DeviceSpec::Net(n) => {
            let mac = match &n.guest_mac {
                // Checked when the configuration was validated.
                Some(m) => crate::config::parse_mac(m).unwrap_or_default(),
                None => default_mac(&n.host_dev_name),
            };
            let tap = Tap::open(&n.host_dev_name).map_err(|e: NetError| device(e.to_string()))?;
            registrar.register(Net::new(tap, mac), place)?
        }
        DeviceSpec::Vsock {
            config,
            channel: false,
        } => registrar.register(open_vsock(place, config.as_ref(), None)?, place)?,
        DeviceSpec::Balloon(b) => {
            let control = Arc::new(BalloonControl::new(b, mem_size));
            let mut a = registrar.register(Balloon::new(control.clone()), place)?;
            a.balloon = Some(control);
            a
        }
        DeviceSpec::Vsock { .. } | DeviceSpec::Fs { .. } => {
            return Err(device(
                "this device has no host side to open on its own".into(),
            ));
        }
    })
}

/// The vsock device of `place`: the configuration's CID and socket, and ember's channel if
/// given.
fn open_vsock(
    place: &PlacedDevice,
    config: Option<&crate::config::Vsock>,
    channel: Option<(u32, UnixStream)>,
) -> Result<Vsock, VmmError> {
    let cid = config.map(|v| v.guest_cid).unwrap_or(command::DEFAULT_CID);
    let uds = config.map(|v| v.uds_path.as_path());
    Vsock::new(u64::from(cid), uds, channel).map_err(|e: VsockError| VmmError::Device {
        input: place.input.clone(),
        reason: e.to_string(),
    })
}
