//! The VMM: builds a VM from a [`VmSpec`] (boot steps 2-7 of docs/DESIGN.md), then runs it
//! until the guest leaves (steps 8-10) and says how it ended.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::thread::JoinHandleExt;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, kvm_pit_config};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use vmm_sys_util::timerfd::TimerFd;

use crate::arch::x86_64::boot::{self, BootError, EntryPoint, LoadedKernel};
use crate::arch::x86_64::{acpi, layout, mptable};
use crate::devices::boot_timer::{BOOT_TIMER_PORT, BOOT_TIMER_PORT_LEN, BootTimer};
use crate::devices::bus::{Bus, BusError, lock};
use crate::devices::i8042::{I8042, I8042_PORT, I8042_PORT_LEN};
use crate::devices::power::{POWER_PORT, POWER_PORT_LEN, Power};
use crate::devices::serial::{
    COM1_IRQ, COM1_PORT, COM1_PORT_LEN, ConsoleOut, ConsoleWatch, SerialDevice,
};
pub use crate::exit::VmOutcome;
use crate::exit::{ExitReason, ExitSignal, ExitSignalError, classify};
use crate::kvm::{self, KvmError};
use crate::memory::{self, MemoryError};
use crate::seccomp::{self, Role, Seccomp, SeccompError};
use crate::timing::{Phase, Timeline};
use crate::vcpu::{self, StartGate, Vcpu, VcpuError, VcpuSetup};

/// Where the TSS goes: three pages just below the IOAPIC, inside the MMIO gap.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
/// Ctrl-A, the console escape prefix (as in QEMU): Ctrl-A x stops the VM.
const ESCAPE_PREFIX: u8 = 0x01;

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
    #[error("--vcpus {asked} is more than this host's KVM allows ({max}): use at most {max}")]
    TooManyVcpus {
        /// Asked.
        asked: u32,
        /// Allowed.
        max: u32,
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
}

/// The initrd to hand the guest.
pub struct InitrdImage {
    /// What to call it in messages.
    pub name: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// Everything needed to build a VM, already validated.
pub struct VmSpec {
    /// Path of the kernel image.
    pub kernel: String,
    /// The initrd, if any.
    pub initrd: Option<InitrdImage>,
    /// The kernel command line.
    pub cmdline: String,
    /// vCPU count.
    pub vcpus: u32,
    /// Guest memory in bytes.
    pub mem_size: u64,
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
    /// Stop the guest if it still runs this long after it started.
    pub timeout: Option<Duration>,
    /// Which threads run under a seccomp filter. With [`Seccomp::AllThreads`] the thread that
    /// calls [`Vmm::run`] stays confined after it returns.
    pub seccomp: Seccomp,
}

/// A finished run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRun {
    /// How it ended.
    pub outcome: VmOutcome,
    /// Guest memory resident when the guest stopped (0 unless measured).
    pub guest_touched_bytes: u64,
}

/// A built VM, ready to run.
pub struct Vmm {
    // Field order is drop order: vCPU fds before the VM, the VM before the memory it maps.
    vcpus: Vec<Vcpu>,
    _vm: VmFd,
    _kvm: Kvm,
    mem: GuestMemoryMmap,
    measure_guest_memory: bool,
    timeout: Option<Duration>,
    seccomp: Seccomp,
    exit: Arc<ExitSignal>,
    console: Arc<Mutex<ConsoleWatch>>,
    serial: Arc<Mutex<SerialDevice>>,
    fifo_drained: EventFd,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    console_in: Option<RawFd>,
    console_in_is_tty: bool,
    /// Startup stamps.
    pub timeline: Arc<Timeline>,
    /// How the guest enters.
    pub entry: EntryPoint,
}

impl Vmm {
    /// Builds the VM: KVM, memory, devices, kernel, boot parameters, vCPUs.
    pub fn build(spec: VmSpec) -> Result<Self, VmmError> {
        // Step 2: KVM and its capabilities.
        let timeline = spec.timeline.clone();
        let kvm = kvm::open()?;
        timeline.mark(Phase::KvmReady);
        let max = kvm::max_vcpus(&kvm);
        if spec.vcpus > max {
            return Err(VmmError::TooManyVcpus {
                asked: spec.vcpus,
                max,
            });
        }
        // Step 3: the VM, its TSS, in-kernel irqchip and PIT.
        let vm_err = |what| move |source| VmmError::VmIoctl { what, source };
        let vm = kvm.create_vm().map_err(vm_err("create the VM"))?;
        vm.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(vm_err("set the TSS address"))?;
        vm.create_irq_chip().map_err(vm_err("create the irqchip"))?;
        vm.create_pit2(kvm_pit_config::default())
            .map_err(vm_err("create the PIT"))?;
        timeline.mark(Phase::VmCreated);

        // Step 4: guest memory.
        let mem = memory::create(spec.mem_size)?;
        memory::register(&vm, &mem)?;
        timeline.mark(Phase::MemoryMapped);

        // Step 5: devices.
        let host_err = |what| move |source| VmmError::Host { what, source };
        let exit = Arc::new(ExitSignal::new(timeline.clone())?);
        let console = Arc::new(Mutex::new(ConsoleWatch::default()));
        let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(host_err("serial irq eventfd"))?;
        vm.register_irqfd(&serial_irq, COM1_IRQ)
            .map_err(vm_err("register the serial irqfd"))?;
        let out = ConsoleOut::new(spec.console_out, timeline.clone(), console.clone());
        let (serial_dev, fifo_drained) =
            SerialDevice::new(serial_irq, out).map_err(host_err("serial eventfd"))?;
        let serial = Arc::new(Mutex::new(serial_dev));
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

        // Step 6: kernel, initrd, command line, MP table, boot parameters.
        let mut file = File::open(&spec.kernel).map_err(|source| BootError::ReadKernel {
            path: spec.kernel.clone(),
            source,
        })?;
        let kernel: LoadedKernel = boot::load_kernel(&mem, spec.mem_size, &spec.kernel, &mut file)?;
        let initrd = match &spec.initrd {
            Some(img) => Some(boot::load_initrd(
                &mem,
                spec.mem_size,
                &kernel,
                &img.name,
                &img.bytes,
            )?),
            None => None,
        };
        boot::write_cmdline(&mem, &spec.cmdline)?;
        // Both CPU descriptions: the MP table for kernels without ACPI (the project's), ACPI
        // for those that have it and may lack MP-table support (Debian's cloud kernel).
        mptable::write(&mem, spec.vcpus)?;
        let com1 = acpi::AcpiDevice::Serial {
            port: COM1_PORT as u16,
            irq: COM1_IRQ,
        };
        let rsdp = acpi::write(&mem, spec.vcpus, &[com1])?;
        boot::write_boot_params(
            &mem,
            spec.mem_size,
            &kernel,
            spec.cmdline.len(),
            initrd,
            rsdp,
        )?;
        timeline.mark(Phase::KernelLoaded);

        // Step 7: vCPUs.
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|source| VmmError::VmIoctl {
                what: "read KVM's supported CPUID",
                source,
            })?;
        let setup = VcpuSetup {
            supported_cpuid: &supported,
            cpu_count: spec.vcpus,
            mem: &mem,
            mem_size: spec.mem_size,
            entry: kernel.entry,
        };
        let vcpus = (0..spec.vcpus)
            .map(|id| Vcpu::new(&vm, id, &setup))
            .collect::<Result<Vec<_>, _>>()?;
        timeline.mark(Phase::VcpusConfigured);

        Ok(Self {
            vcpus,
            _vm: vm,
            _kvm: kvm,
            mem,
            measure_guest_memory: spec.measure_guest_memory,
            timeout: spec.timeout,
            seccomp: spec.seccomp,
            exit,
            console,
            serial,
            fifo_drained,
            pio: Arc::new(pio),
            mmio: Arc::new(mmio),
            console_in: spec.console_in,
            console_in_is_tty: spec.console_in_is_tty,
            timeline,
            entry: kernel.entry,
        })
    }

    /// Runs the VM until the guest leaves, a vCPU fails, or a signal stops it.
    pub fn run(mut self) -> Result<VmRun, VmmError> {
        let host_err = |what| move |source| VmmError::Host { what, source };
        // Signals become events: block them here (vCPU threads inherit the mask) and read
        // them from a signalfd in the event loop.
        let signals = SignalFd::new(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP])
            .map_err(host_err("signalfd"))?;
        vcpu::register_kick_signal().map_err(|e| VmmError::Host {
            what: "kick signal handler",
            source: std::io::Error::from_raw_os_error(e.errno()),
        })?;

        // Armed now, before this thread's filter (timerfd_create and settime are not in it).
        let deadline = match self.timeout {
            Some(after) => {
                let timer_err = |e: vmm_sys_util::errno::Error| VmmError::Host {
                    what: "the --timeout timerfd",
                    source: std::io::Error::from_raw_os_error(e.errno()),
                };
                let mut t = TimerFd::new().map_err(timer_err)?;
                t.reset(after, None).map_err(timer_err)?;
                Some((t, after))
            }
            None => None,
        };
        let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
            EventManager::new().map_err(VmmError::EventLoop)?;
        let controller = Arc::new(Mutex::new(Controller {
            exit: self.exit.clone(),
            serial: self.serial.clone(),
            fifo_drained: self.fifo_drained.try_clone().map_err(host_err("eventfd"))?,
            signals,
            deadline,
            console_in: self.console_in,
            input_state: InputState::Reading,
            escape_armed: false,
            escape_enabled: self.console_in_is_tty,
        }));
        em.add_subscriber(controller);

        // Both filters are built before any thread starts, so a failure stops nothing.
        let vcpu_filter = match self.seccomp {
            Seccomp::Off => None,
            Seccomp::VcpuThreads | Seccomp::AllThreads => {
                Some(Arc::new(seccomp::filter(Role::Vcpu)?))
            }
        };
        let vmm_filter = match self.seccomp {
            Seccomp::AllThreads => Some(seccomp::filter(Role::Vmm)?),
            Seccomp::Off | Seccomp::VcpuThreads => None,
        };
        let gate = Arc::new(StartGate::default());
        let _backstop = OpenOnLeave {
            gate: gate.clone(),
            exit: self.exit.clone(),
        };
        let mut handles = Vec::with_capacity(self.vcpus.len());
        let mut started = Ok(());
        for vcpu in self.vcpus.drain(..) {
            match vcpu.spawn(
                self.pio.clone(),
                self.mmio.clone(),
                self.exit.clone(),
                gate.clone(),
                self.timeline.clone(),
                vcpu_filter.clone(),
            ) {
                Ok(h) => handles.push(h),
                Err(e) => {
                    started = Err(VmmError::from(e));
                    break;
                }
            }
        }
        // This thread's filter goes on last, after the threads it starts and before the
        // gate lets them into the guest.
        if let (Ok(()), Some(f)) = (&started, &vmm_filter) {
            started = seccomp::apply(f, Role::Vmm).map_err(VmmError::from);
        }
        if let Err(e) = started {
            // Release the threads already waiting so they can see the stop.
            self.exit.request(ExitReason::VcpuFailed {
                cpu: 0,
                what: e.to_string(),
            });
            gate.open();
            stop_vcpus(handles);
            return Err(e);
        }
        seccomp::self_test(Role::Vmm, vmm_filter.is_some());
        gate.open();

        let mut loop_result = Ok(());
        while !self.exit.is_stopping() {
            if let Err(e) = em.run() {
                loop_result = Err(VmmError::EventLoop(e));
                self.exit.request(ExitReason::VcpuFailed {
                    cpu: 0,
                    what: "event loop failed".into(),
                });
            }
        }
        stop_vcpus(handles);
        loop_result?;

        let guest_touched_bytes = if self.measure_guest_memory {
            memory::resident_bytes(&self.mem)
        } else {
            0
        };
        let panic = lock(&self.console).panic.clone();
        let outcome = classify(
            self.exit.reason().unwrap_or(ExitReason::Reset),
            panic,
            self.exit.guest_status(),
        );
        Ok(VmRun {
            outcome,
            guest_touched_bytes,
        })
    }
}

/// Opens the start gate with a stop requested if `run` leaves without having opened it (a
/// panic unwinding through a library caller): no vCPU thread waits at the gate forever.
struct OpenOnLeave {
    gate: Arc<StartGate>,
    exit: Arc<ExitSignal>,
}

impl Drop for OpenOnLeave {
    fn drop(&mut self) {
        if !self.gate.is_open() {
            self.exit.request(ExitReason::VcpuFailed {
                cpu: 0,
                what: "the VMM thread stopped before the guest started".into(),
            });
            self.gate.open();
        }
    }
}

/// Kicks every vCPU thread out of KVM_RUN until it sees the stop, then joins it. A thread
/// that does not stop within two seconds (stuck in a host write) is left behind, detached.
fn stop_vcpus(handles: Vec<JoinHandle<Vcpu>>) {
    let deadline = Instant::now() + Duration::from_secs(2);
    for h in handles {
        let mut pause = Duration::from_micros(50);
        while !h.is_finished() && Instant::now() < deadline {
            // SAFETY: the pthread id belongs to a thread we own and have not joined; the
            // kick signal has a no-op handler installed.
            unsafe { libc::pthread_kill(h.as_pthread_t(), vcpu::kick_signal()) };
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(10));
        }
        if h.is_finished() {
            // Dropping the returned vCPU closes its fd here, outside the vCPU's filter.
            drop(h.join());
        } else {
            log::warn!("a vCPU thread did not stop in time; leaving it behind");
        }
    }
}

/// A signalfd for a set of signals, blocked in the calling thread while it lives.
struct SignalFd {
    fd: File,
    old_mask: libc::sigset_t,
}

impl SignalFd {
    fn new(signals: &[libc::c_int]) -> std::io::Result<Self> {
        use std::os::fd::FromRawFd;
        let set = vmm_sys_util::signal::create_sigset(signals)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
        // SAFETY: sigset_t is plain data; zeroed is a valid empty set to be filled.
        let mut old_mask: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are to live sigset_t values.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old_mask) };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        // SAFETY: `set` is a valid sigset; -1 asks for a new fd.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: signalfd returned a fresh fd that nothing else owns.
        let fd = unsafe { File::from_raw_fd(fd) };
        Ok(Self { fd, old_mask })
    }

    /// The next pending signal, if any.
    fn read(&self) -> Option<i32> {
        // SAFETY: signalfd_siginfo is plain data.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: the buffer is a live signalfd_siginfo of `size` bytes.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                &mut info as *mut _ as *mut libc::c_void,
                size,
            )
        };
        (n == size as isize).then_some(info.ssi_signo as i32)
    }
}

impl Drop for SignalFd {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in new().
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old_mask, std::ptr::null_mut()) };
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InputState {
    /// Reading stdin into the serial FIFO.
    Reading,
    /// The FIFO is full: stdin is off the poll set until the guest drains it.
    Paused,
    /// stdin hit EOF or cannot be polled: no more input, the guest runs on.
    Closed,
}

/// The event loop's one subscriber: exit, signals, and console input with backpressure.
struct Controller {
    exit: Arc<ExitSignal>,
    serial: Arc<Mutex<SerialDevice>>,
    fifo_drained: EventFd,
    signals: SignalFd,
    /// `--timeout`: fires once, with the limit it was armed with.
    deadline: Option<(TimerFd, Duration)>,
    console_in: Option<RawFd>,
    input_state: InputState,
    escape_armed: bool,
    escape_enabled: bool,
}

impl Controller {
    fn read_input(&mut self, fd: RawFd, ops: &mut EventOps) {
        let capacity = lock(&self.serial).uart.fifo_capacity();
        if capacity == 0 {
            if ops.remove(Events::empty_raw(fd)).is_ok() {
                self.input_state = InputState::Paused;
            }
            return;
        }
        let mut buf = [0u8; 64];
        let want = capacity.min(buf.len());
        // SAFETY: reading into a live buffer of at least `want` bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, want) };
        let n = match usize::try_from(n) {
            Ok(0) => None,
            Ok(n) => Some(n),
            Err(_) => match std::io::Error::last_os_error().kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => return,
                _ => None,
            },
        };
        let Some(n) = n else {
            // EOF (or a broken stdin): the guest keeps running without input.
            let _ = ops.remove(Events::empty_raw(fd));
            self.input_state = InputState::Closed;
            return;
        };
        let input = &buf[..n];
        let mut forward = Vec::with_capacity(input.len());
        for &b in input {
            if self.escape_enabled && self.escape_armed {
                self.escape_armed = false;
                match b {
                    b'x' | b'X' => {
                        self.exit.request(ExitReason::Escape);
                        return;
                    }
                    // Ctrl-A Ctrl-A sends one Ctrl-A.
                    ESCAPE_PREFIX => forward.push(b),
                    other => {
                        forward.push(ESCAPE_PREFIX);
                        forward.push(other);
                    }
                }
            } else if self.escape_enabled && b == ESCAPE_PREFIX {
                self.escape_armed = true;
            } else {
                forward.push(b);
            }
        }
        let mut serial = lock(&self.serial);
        log::trace!(
            "console input: {} bytes, fifo capacity {}",
            forward.len(),
            serial.uart.fifo_capacity()
        );
        if let Err(e) = serial.uart.enqueue_raw_bytes(&forward) {
            log::debug!("serial input: {e:?}");
        }
    }
}

impl MutEventSubscriber for Controller {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.exit.eventfd().as_raw_fd() {
            let _ = self.exit.eventfd().read();
        } else if fd == self.signals.fd.as_raw_fd() {
            while let Some(sig) = self.signals.read() {
                self.exit.request(ExitReason::Signal(sig));
            }
        } else if let Some((timer, after)) = &mut self.deadline
            && fd == timer.as_raw_fd()
        {
            let _ = timer.wait();
            self.exit.request(ExitReason::Timeout(*after));
        } else if fd == self.fifo_drained.as_raw_fd() {
            let _ = self.fifo_drained.read();
            if let (InputState::Paused, Some(input)) = (self.input_state, self.console_in)
                && ops.add(Events::new_raw(input, EventSet::IN)).is_ok()
            {
                self.input_state = InputState::Reading;
            }
        } else if Some(fd) == self.console_in {
            if events.event_set().intersects(EventSet::IN) {
                self.read_input(fd, ops);
            } else if events
                .event_set()
                .intersects(EventSet::HANG_UP | EventSet::ERROR)
            {
                let _ = ops.remove(Events::empty_raw(fd));
                self.input_state = InputState::Closed;
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(self.exit.eventfd(), EventSet::IN));
        let _ = ops.add(Events::new(&self.signals.fd, EventSet::IN));
        let _ = ops.add(Events::new(&self.fifo_drained, EventSet::IN));
        if let Some((timer, _)) = &self.deadline {
            let _ = ops.add(Events::new(timer, EventSet::IN));
        }
        if let Some(input) = self.console_in {
            // A stdin that cannot be polled (/dev/null, a regular file) gives no input.
            if ops.add(Events::new_raw(input, EventSet::IN)).is_err() {
                log::debug!("console input fd {input} cannot be polled; the guest gets no input");
                self.input_state = InputState::Closed;
            }
        }
    }
}
