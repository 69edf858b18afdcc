//! vCPUs: configuring each one, and the thread that runs it. A vCPU thread hands each exit to
//! [`dispatch`] (port and MMIO accesses to the buses); anything it cannot continue from becomes
//! an exit reason on the shared exit signal. It pauses, resumes and stops when its
//! [`VcpuControl`] says so. It never exits the process and never panics on guest input.

pub mod control;
pub mod dispatch;
pub mod state;

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use kvm_bindings::CpuId;
use kvm_ioctls::{VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;

use control::Decision;
pub use control::{RunState, Task, VcpuControl};
use dispatch::{Next, dispatch};
pub use state::{StateError, VcpuState};

use crate::arch::x86_64::boot::EntryPoint;
use crate::arch::x86_64::cpuid::vcpu_cpuid;
use crate::arch::x86_64::{interrupts, msr, regs};
use crate::devices::bus::Bus;
use crate::exit::{ExitReason, ExitSignal};
use crate::guest_log::{GuestLogs, LogLimit};
use crate::placement::{self, Placement};
use crate::seccomp::{self, Role};
use crate::signals;
use crate::sync::lock;
use crate::timing::{Phase, Timeline};

/// KVM's internal-error suberror for a failed instruction emulation.
const KVM_INTERNAL_ERROR_EMULATION: u32 = 1;

/// Errors creating or configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A KVM vCPU ioctl failed.
    #[error("vCPU {cpu}: {what}: {source}")]
    Kvm {
        /// The vCPU.
        cpu: u32,
        /// What was being done.
        what: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// Building the MSR list failed.
    #[error("vCPU {cpu}: {source}")]
    Msr {
        /// The vCPU.
        cpu: u32,
        /// The error.
        source: msr::MsrError,
    },
    /// Writing boot structures failed.
    #[error("vCPU {cpu}: {source}")]
    Regs {
        /// The vCPU.
        cpu: u32,
        /// The error.
        source: regs::RegsError,
    },
    /// The vCPU thread could not install its seccomp filter.
    #[error("vCPU {cpu}: its thread's seccomp filter: {what}")]
    Filter {
        /// The vCPU.
        cpu: u32,
        /// Why.
        what: String,
    },
    /// Saving or restoring the vCPU's state failed.
    #[error("vCPU {cpu}: {source}")]
    State {
        /// The vCPU.
        cpu: u32,
        /// The error.
        source: StateError,
    },
    /// The vCPU thread could not be started.
    #[error("cannot start the thread for vCPU {cpu}: {source}")]
    Spawn {
        /// The vCPU.
        cpu: u32,
        /// The error.
        source: std::io::Error,
    },
}

/// One vCPU, configured and ready to run.
pub struct Vcpu {
    fd: VcpuFd,
    id: u32,
    control: Arc<VcpuControl>,
    /// The budget for messages the guest's exits can cause.
    log: Arc<LogLimit>,
}

/// What a vCPU needs to know to configure itself.
pub struct VcpuSetup<'a> {
    /// KVM's supported CPUID.
    pub supported_cpuid: &'a CpuId,
    /// All vCPUs in the VM.
    pub cpu_count: u32,
    /// Guest memory (for the boot CPU's GDT and page tables).
    pub mem: &'a GuestMemoryMmap,
    /// Guest memory size.
    pub mem_size: u64,
    /// Kernel entry.
    pub entry: EntryPoint,
    /// The VM's budgets for messages the guest can cause.
    pub logs: &'a GuestLogs,
}

impl Vcpu {
    /// Creates vCPU `id` and configures CPUID, MSRs and LAPIC; the boot vCPU (id 0) also gets
    /// its registers. The others wait, as on real hardware, for the guest's INIT-SIPI.
    pub fn new(vm: &VmFd, id: u32, setup: &VcpuSetup) -> Result<Self, VcpuError> {
        let kvm_err = |what| {
            move |source| VcpuError::Kvm {
                cpu: id,
                what,
                source,
            }
        };
        let fd = vm.create_vcpu(u64::from(id)).map_err(kvm_err("create"))?;
        let cpuid = vcpu_cpuid(setup.supported_cpuid, id, setup.cpu_count);
        fd.set_cpuid2(&cpuid).map_err(kvm_err("set CPUID"))?;
        if id == 0 {
            log_cpuid_overrides(&fd, &cpuid);
        }
        let msrs = msr::boot_msrs().map_err(|source| VcpuError::Msr { cpu: id, source })?;
        let set = fd.set_msrs(&msrs).map_err(kvm_err("set MSRs"))?;
        if set != msrs.as_slice().len() {
            log::debug!(
                "vCPU {id}: KVM took {set} of {} boot MSRs",
                msrs.as_slice().len()
            );
        }
        let mut lapic = fd.get_lapic().map_err(kvm_err("get LAPIC"))?;
        interrupts::set_lint(&mut lapic);
        fd.set_lapic(&lapic).map_err(kvm_err("set LAPIC"))?;
        if id == 0 {
            let sregs = fd.get_sregs().map_err(kvm_err("get sregs"))?;
            let sregs = regs::setup_sregs(setup.mem, setup.mem_size, setup.entry, sregs)
                .map_err(|source| VcpuError::Regs { cpu: id, source })?;
            fd.set_sregs(&sregs).map_err(kvm_err("set sregs"))?;
            fd.set_regs(&regs::boot_regs(setup.entry))
                .map_err(kvm_err("set regs"))?;
            fd.set_fpu(&regs::boot_fpu()).map_err(kvm_err("set FPU"))?;
        }
        let mut fd = fd;
        let control = Arc::new(VcpuControl::new(id, fd.get_kvm_run()));
        Ok(Self {
            fd,
            id,
            control,
            log: setup.logs.limit(format!("vCPU {id}")),
        })
    }

    /// Creates vCPU `id` for a snapshot's state ([`Vcpu::set_state`] next), and gives back
    /// the CPUID this host's KVM makes of `template` (ember's own, for a vCPU of this host),
    /// so the caller can check, before setting any of it, that the saved state asks for
    /// nothing more: a PVM host imposes its own leaves, which its supported list does not show.
    pub fn for_restore(
        vm: &VmFd,
        id: u32,
        template: &CpuId,
        logs: &GuestLogs,
    ) -> Result<(Self, CpuId), VcpuError> {
        let kvm = |what: &'static str| {
            move |source| VcpuError::Kvm {
                cpu: id,
                what,
                source,
            }
        };
        let mut fd = vm.create_vcpu(u64::from(id)).map_err(kvm("create"))?;
        // KVM takes a CPUID as often as it is given one until the vCPU first runs.
        fd.set_cpuid2(template).map_err(kvm("set CPUID"))?;
        let offered = fd
            .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm("read CPUID"))?;
        let control = Arc::new(VcpuControl::new(id, fd.get_kvm_run()));
        let vcpu = Self {
            fd,
            id,
            control,
            log: logs.limit(format!("vCPU {id}")),
        };
        Ok((vcpu, offered))
    }

    /// Sets a snapshot's `state` on this vCPU, before it first runs.
    pub fn set_state(&self, state: &VcpuState) -> Result<(), VcpuError> {
        state.restore(&self.fd).map_err(|source| VcpuError::State {
            cpu: self.id,
            source,
        })
    }

    /// The handle through which this vCPU's thread is paused, resumed and stopped.
    pub fn control(&self) -> Arc<VcpuControl> {
        self.control.clone()
    }

    /// The run loop: until a stop is requested or the vCPU cannot go on. A device that ends
    /// the VM (a reset, a power-off, the exit port) does so from this thread: the vCPU must
    /// not run the guest on past it.
    fn run(&mut self, pio: &Bus, mmio: &Bus, exit: &ExitSignal) {
        let id = self.id;
        while !self.control.stop_requested() && !exit.is_stopping() {
            // A "ready" for a snapshot from this exit (or another vCPU's meanwhile) pauses
            // this vCPU before the guest's next instruction, so the snapshot is of the moment
            // the guest chose.
            let ready = exit.ready_seq();
            let next = match self.fd.run() {
                Ok(e) => dispatch(e, id, pio, mmio, &self.log),
                // A kick (pause, stop) or a signal: ask the control what now.
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => loop {
                    match self.control.after_interrupt() {
                        Decision::Run => break Next::Run,
                        Decision::Stop => return,
                        // Paused: the task uses this thread's fd, then the thread asks again.
                        Decision::Serve(task) => task(&self.fd),
                    }
                },
                Err(e) => Next::Stop(ExitReason::VcpuFailed {
                    cpu: id,
                    what: format!("KVM_RUN failed: {e}"),
                }),
            };
            let reason = match next {
                Next::Run => {
                    if exit.ready_seq() != ready {
                        self.control.pause_self();
                    }
                    continue;
                }
                Next::Stop(reason) => reason,
                Next::TripleFault => ExitReason::TripleFault {
                    cpu: id,
                    // AMD's KVM resets the vCPU before reporting the shutdown: the reset
                    // vector says nothing about where the guest was.
                    rip: self
                        .fd
                        .get_regs()
                        .ok()
                        .map(|r| r.rip)
                        .filter(|&rip| rip != RESET_VECTOR_IP),
                },
                Next::InternalError => self.internal_error(),
            };
            exit.request(reason);
            break;
        }
    }

    /// Classifies KVM_EXIT_INTERNAL_ERROR. On PVM hosts a triple fault arrives this way rather
    /// than as KVM_EXIT_SHUTDOWN; it is told apart by its suberror.
    fn internal_error(&mut self) -> ExitReason {
        // SAFETY: the exit reason says the `internal` member of the union is the valid one.
        let suberror = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
        let rip = self.fd.get_regs().ok().map(|r| r.rip);
        if suberror != KVM_INTERNAL_ERROR_EMULATION && is_triple_fault_suberror(suberror) {
            return ExitReason::TripleFault { cpu: self.id, rip };
        }
        ExitReason::InternalError {
            cpu: self.id,
            suberror,
            rip,
        }
    }
}

/// What a vCPU thread runs with, handed over at the launch.
struct Launch {
    vcpu: Vcpu,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    exit: Arc<ExitSignal>,
    timeline: Arc<Timeline>,
}

/// What the VMM thread has handed a waiting vCPU thread.
enum Delivery {
    Nothing,
    Launch(Box<Launch>),
    Cancelled,
}

/// A vCPU thread's side of the handshake with the VMM thread.
struct InboxState {
    /// How installing the filter went, once the thread has tried (`Ok` without one).
    filter: Option<Result<(), String>>,
    delivery: Delivery,
}

/// A waiting vCPU thread's inbox.
struct Inbox {
    state: Mutex<InboxState>,
    changed: Condvar,
}

impl Inbox {
    fn set_filter(&self, result: Result<(), String>) {
        lock(&self.state).filter = Some(result);
        self.changed.notify_all();
    }

    fn deliver(&self, d: Delivery) {
        lock(&self.state).delivery = d;
        self.changed.notify_all();
    }

    /// Waits until the thread has tried its filter.
    fn filter(&self) -> Result<(), String> {
        let mut state = lock(&self.state);
        loop {
            if let Some(result) = &state.filter {
                return result.clone();
            }
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Waits for the launch; `None` if cancelled.
    fn wait(&self) -> Option<Box<Launch>> {
        let mut state = lock(&self.state);
        loop {
            match std::mem::replace(&mut state.delivery, Delivery::Nothing) {
                Delivery::Nothing => {}
                Delivery::Launch(l) => return Some(l),
                Delivery::Cancelled => return None,
            }
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// One waiting vCPU thread.
struct Waiting {
    id: u32,
    inbox: Arc<Inbox>,
    thread: JoinHandle<Option<Vcpu>>,
}

/// A VM's vCPU threads, started while the VM is still being built: their start and their
/// seccomp filters (0.2-0.3 ms each on a PVM host) then cost nothing on the way to the first
/// guest instruction. Each installs its filter, then waits for [`VcpuThreads::launch`] to hand
/// it its vCPU, and enters the guest at once. Dropped unlaunched, they are told to leave and
/// joined. The default is none (what is left once they are launched).
#[derive(Default)]
pub struct VcpuThreads {
    waiting: Vec<Waiting>,
}

impl VcpuThreads {
    /// Starts one thread per vCPU; each builds and installs the vCPU filter if `filtered`, and
    /// waits. They start with the stop signals blocked: those are the VMM thread's; with a
    /// placement, off the caller's CPU ([`placement::spawn`]).
    pub fn start(
        count: u32,
        filtered: bool,
        placement: Option<Placement>,
    ) -> Result<Self, VcpuError> {
        // Cannot fail for valid signal numbers; without it a thread would just not block them.
        let _blocked = signals::SignalsBlocked::block(&signals::STOP_SIGNALS).ok();
        let mut threads = Self {
            waiting: Vec::with_capacity(count as usize),
        };
        for id in 0..count {
            threads
                .waiting
                .push(Self::start_one(id, filtered, placement)?);
        }
        Ok(threads)
    }

    fn start_one(
        id: u32,
        filtered: bool,
        placement: Option<Placement>,
    ) -> Result<Waiting, VcpuError> {
        let inbox = Arc::new(Inbox {
            state: Mutex::new(InboxState {
                filter: None,
                delivery: Delivery::Nothing,
            }),
            changed: Condvar::new(),
        });
        let theirs = inbox.clone();
        let builder = std::thread::Builder::new().name(format!("vcpu{id}"));
        let run = move || {
            // The filter goes on before the vCPU arrives, so before any guest instruction;
            // the VMM thread checks how it went before it launches any vCPU.
            let result = if filtered {
                seccomp::filter(Role::Vcpu).and_then(|f| seccomp::apply(&f, Role::Vcpu))
            } else {
                Ok(())
            };
            theirs.set_filter(result.map_err(|e| e.to_string()));
            let Launch {
                mut vcpu,
                pio,
                mmio,
                exit,
                timeline,
            } = *theirs.wait()?;
            seccomp::self_test(Role::Vcpu, filtered);
            // A pause asked for before the thread got here has set immediate_exit: the first
            // KVM_RUN returns at once and the run loop parks, so the pause is answered.
            if !matches!(
                vcpu.control.started(),
                RunState::StopRequested | RunState::Stopped
            ) {
                if id == 0 {
                    timeline.mark(Phase::FirstKvmRun);
                }
                vcpu.run(&pio, &mmio, &exit);
            }
            vcpu.control.finished();
            // Handed back so the joining thread closes the fd: close is not in the filter.
            Some(vcpu)
        };
        let thread = placement::spawn(placement.as_ref(), builder, run)
            .map_err(|source| VcpuError::Spawn { cpu: id, source })?;
        Ok(Waiting { id, inbox, thread })
    }

    /// Waits until every thread has installed its filter; the error says which could not.
    pub fn ready(&self) -> Result<(), VcpuError> {
        for w in &self.waiting {
            w.inbox
                .filter()
                .map_err(|what| VcpuError::Filter { cpu: w.id, what })?;
        }
        Ok(())
    }

    /// Hands each thread its vCPU (`vcpus` in id order): they enter the guest now. Call
    /// [`VcpuThreads::ready`] first: a thread without its filter must not be launched. Joining
    /// a handle gives its vCPU back once the thread has stopped.
    pub fn launch(
        mut self,
        vcpus: Vec<Vcpu>,
        pio: &Arc<Bus>,
        mmio: &Arc<Bus>,
        exit: &Arc<ExitSignal>,
        timeline: &Arc<Timeline>,
    ) -> Vec<JoinHandle<Option<Vcpu>>> {
        std::mem::take(&mut self.waiting)
            .into_iter()
            .zip(vcpus)
            .map(|(w, vcpu)| {
                w.inbox.deliver(Delivery::Launch(Box::new(Launch {
                    vcpu,
                    pio: pio.clone(),
                    mmio: mmio.clone(),
                    exit: exit.clone(),
                    timeline: timeline.clone(),
                })));
                w.thread
            })
            .collect()
    }
}

impl Drop for VcpuThreads {
    fn drop(&mut self) {
        // All told first, then all joined: they leave together.
        for w in &self.waiting {
            w.inbox.deliver(Delivery::Cancelled);
        }
        for w in self.waiting.drain(..) {
            drop(w.thread.join());
        }
    }
}

/// Logs (at debug level) the CPUID leaves KVM changed after KVM_SET_CPUID2: a PVM host
/// imposes its own leaves 1, 7 and 0xd, which is why ember's CPUID template cannot hide
/// features there (docs/hosts.md).
fn log_cpuid_overrides(fd: &VcpuFd, wanted: &CpuId) {
    if !log::log_enabled!(log::Level::Debug) {
        return;
    }
    let Ok(got) = fd.get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES) else {
        return;
    };
    for (g, w) in got.as_slice().iter().zip(wanted.as_slice()) {
        let regs =
            |e: &kvm_bindings::kvm_cpuid_entry2| (e.function, e.index, e.eax, e.ebx, e.ecx, e.edx);
        if regs(g) != regs(w) {
            log::debug!(
                "KVM overrode CPUID {:#x}.{}: set {:08x} {:08x} {:08x} {:08x}, got {:08x} {:08x} {:08x} {:08x}",
                w.function,
                w.index,
                w.eax,
                w.ebx,
                w.ecx,
                w.edx,
                g.eax,
                g.ebx,
                g.ecx,
                g.edx
            );
        }
    }
}

/// The instruction pointer of a vCPU fresh from reset (CS base 0xffff0000).
const RESET_VECTOR_IP: u64 = 0xfff0;

/// Suberrors that mean the guest faulted while delivering a fault (a triple fault in the
/// making): KVM_INTERNAL_ERROR_SIMUL_EX (2) and KVM_INTERNAL_ERROR_DELIVERY_EV (3).
fn is_triple_fault_suberror(suberror: u32) -> bool {
    matches!(suberror, 2 | 3)
}
