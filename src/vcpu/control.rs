//! Telling a running vCPU thread to pause, resume or stop. The thread checks its requested
//! state after every exit; to get it out of KVM_RUN promptly, a request sets the vCPU's
//! `immediate_exit` (so a KVM_RUN about to start returns at once) and sends the kick signal
//! once (so one already running returns with EINTR). No request is ever repeated, and nothing
//! waits by sleeping: pause and stop wait on a condition variable for the thread's answer.

use std::sync::{Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

use kvm_bindings::kvm_run;
use kvm_ioctls::VcpuFd;

use crate::signals::kick_signal;
use crate::sync::lock;

/// What a vCPU thread is asked to do, or is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Not started yet: its thread waits for it.
    Created,
    /// Running the guest.
    Running,
    /// Asked to pause at its next exit.
    PauseRequested,
    /// Paused: out of KVM_RUN, waiting to resume.
    Paused,
    /// Asked to stop at its next exit.
    StopRequested,
    /// Its thread has finished (stopped, failed, or never entered the guest).
    Stopped,
}

/// The `kvm_run` page of a vCPU, written from other threads only to set `immediate_exit`.
struct RunPage(*mut kvm_run);

// SAFETY: the page is a shared mapping of the vCPU fd; other threads touch only its
// `immediate_exit` byte, with a volatile write, which KVM defines for exactly this use. The
// pointer is dropped (set to None under the lock) before the vCPU fd can be closed.
unsafe impl Send for RunPage {}

/// Work a paused vCPU's thread does with its own fd (saving or setting its state): KVM's vCPU
/// ioctls belong to the thread that runs the vCPU.
pub type Task = Box<dyn FnOnce(&VcpuFd) + Send>;

/// What the vCPU thread does after an interrupted KVM_RUN.
pub(super) enum Decision {
    /// Enter the guest again.
    Run,
    /// Leave the run loop.
    Stop,
    /// Do this while paused, then ask again.
    Serve(Task),
}

struct Inner {
    state: RunState,
    thread: Option<libc::pthread_t>,
    run_page: Option<RunPage>,
    /// A task for the paused thread, not yet taken.
    task: Option<Task>,
}

/// Shared between a vCPU thread and whoever controls it.
pub struct VcpuControl {
    id: u32,
    inner: Mutex<Inner>,
    changed: Condvar,
}

impl VcpuControl {
    /// A control for vCPU `id` whose `kvm_run` page is at `run_page`.
    pub fn new(id: u32, run_page: *mut kvm_run) -> Self {
        Self {
            id,
            inner: Mutex::new(Inner {
                state: RunState::Created,
                thread: None,
                run_page: Some(RunPage(run_page)),
                task: None,
            }),
            changed: Condvar::new(),
        }
    }

    /// The vCPU's id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The current state.
    pub fn state(&self) -> RunState {
        lock(&self.inner).state
    }

    /// Called by the vCPU thread as it starts running the guest.
    pub(super) fn started(&self) -> RunState {
        let mut inner = lock(&self.inner);
        // SAFETY: pthread_self has no preconditions.
        inner.thread = Some(unsafe { libc::pthread_self() });
        if inner.state == RunState::Created {
            inner.state = RunState::Running;
        }
        inner.state
    }

    /// Called by the vCPU thread after an exit that needs a decision (EINTR): clears
    /// `immediate_exit`, parks while paused (serving tasks), and says what to do next.
    pub(super) fn after_interrupt(&self) -> Decision {
        let mut inner = lock(&self.inner);
        loop {
            if let Some(page) = &inner.run_page {
                // SAFETY: the page is live while the thread runs (see RunPage).
                unsafe { std::ptr::addr_of_mut!((*page.0).immediate_exit).write_volatile(0) };
            }
            match inner.state {
                RunState::StopRequested | RunState::Stopped => return Decision::Stop,
                RunState::PauseRequested | RunState::Paused => {
                    if inner.state == RunState::PauseRequested {
                        inner.state = RunState::Paused;
                        self.changed.notify_all();
                    }
                    if let Some(task) = inner.task.take() {
                        return Decision::Serve(task);
                    }
                    inner = self
                        .changed
                        .wait_while(inner, |i| i.state == RunState::Paused && i.task.is_none())
                        .unwrap_or_else(|p| p.into_inner());
                }
                RunState::Created | RunState::Running => return Decision::Run,
            }
        }
    }

    /// Called by the vCPU thread itself after an exit: pauses it before the guest's next
    /// instruction. Its next KVM_RUN completes the exit (a port write's, say) and returns at
    /// once, as `immediate_exit` asks; then [`VcpuControl::after_interrupt`] parks it.
    pub(super) fn pause_self(&self) {
        let mut inner = lock(&self.inner);
        if inner.state == RunState::Running {
            inner.state = RunState::PauseRequested;
            if let Some(page) = &inner.run_page {
                // SAFETY: the page is live while the thread runs (see RunPage).
                unsafe { std::ptr::addr_of_mut!((*page.0).immediate_exit).write_volatile(1) };
            }
        }
    }

    /// Has the paused vCPU's thread run `work` on its fd and returns what it gave, or `None`
    /// when the vCPU is not paused, stopped meanwhile, or did not answer within `limit`.
    pub fn serve<R: Send + 'static>(
        &self,
        limit: Duration,
        work: impl FnOnce(&VcpuFd) -> R + Send + 'static,
    ) -> Option<R> {
        let (tx, rx) = mpsc::sync_channel(1);
        {
            let mut inner = lock(&self.inner);
            if inner.state != RunState::Paused || inner.task.is_some() {
                return None;
            }
            inner.task = Some(Box::new(move |fd: &VcpuFd| {
                // The asker may have given up: then nobody wants the answer.
                let _ = tx.send(work(fd));
            }));
            self.changed.notify_all();
        }
        rx.recv_timeout(limit).ok()
    }

    /// Whether the thread should leave its run loop now.
    pub(super) fn stop_requested(&self) -> bool {
        matches!(
            lock(&self.inner).state,
            RunState::StopRequested | RunState::Stopped
        )
    }

    /// Called by the vCPU thread as it leaves: no one may touch its `kvm_run` page any more.
    pub(super) fn finished(&self) {
        let mut inner = lock(&self.inner);
        inner.state = RunState::Stopped;
        inner.run_page = None;
        inner.thread = None;
        // Its asker sees the channel close.
        inner.task = None;
        self.changed.notify_all();
    }

    /// Sets `immediate_exit` and sends the kick signal, once. Called with the lock held, so
    /// the thread cannot finish (and its fd close) meanwhile.
    fn kick(inner: &Inner) {
        if let Some(page) = &inner.run_page {
            // SAFETY: the page is live while the thread runs (see RunPage).
            unsafe { std::ptr::addr_of_mut!((*page.0).immediate_exit).write_volatile(1) };
        }
        if let Some(thread) = inner.thread {
            // SAFETY: the thread is alive: it clears `thread` under this lock before it ends;
            // the kick signal has a no-op handler.
            unsafe { libc::pthread_kill(thread, kick_signal()) };
        }
    }

    /// Asks the thread to stop at its next exit (a thread not yet started stops before the
    /// guest runs).
    pub fn request_stop(&self) {
        let mut inner = lock(&self.inner);
        if inner.state != RunState::Stopped {
            inner.state = RunState::StopRequested;
            Self::kick(&inner);
            self.changed.notify_all();
        }
    }

    /// Pauses the vCPU: it leaves KVM_RUN and waits. Returns whether it is paused (false if
    /// it stopped meanwhile, or did not answer within `limit`).
    pub fn pause(&self, limit: Duration) -> bool {
        let mut inner = lock(&self.inner);
        match inner.state {
            RunState::Running | RunState::Created => {
                inner.state = RunState::PauseRequested;
                Self::kick(&inner);
            }
            RunState::PauseRequested | RunState::Paused => {}
            RunState::StopRequested | RunState::Stopped => return false,
        }
        let deadline = Instant::now() + limit;
        while inner.state == RunState::PauseRequested {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            inner = self
                .changed
                .wait_timeout(inner, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        inner.state == RunState::Paused
    }

    /// Resumes a paused vCPU.
    pub fn resume(&self) {
        let mut inner = lock(&self.inner);
        if matches!(inner.state, RunState::Paused | RunState::PauseRequested) {
            inner.state = RunState::Running;
            self.changed.notify_all();
        }
    }

    /// Waits until the thread has finished, at most `limit`; returns whether it has.
    pub fn wait_stopped(&self, limit: Duration) -> bool {
        let inner = lock(&self.inner);
        let (inner, _) = self
            .changed
            .wait_timeout_while(inner, limit, |i| i.state != RunState::Stopped)
            .unwrap_or_else(|p| p.into_inner());
        inner.state == RunState::Stopped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A stand-in vCPU thread: runs until told otherwise, answering like the real one.
    fn fake_vcpu(c: Arc<VcpuControl>) -> std::thread::JoinHandle<u32> {
        std::thread::spawn(move || {
            c.started();
            let mut rounds = 0;
            while !c.stop_requested() {
                rounds += 1;
                match c.after_interrupt() {
                    Decision::Run => {}
                    Decision::Stop => break,
                    // No fd here: the task is dropped, its asker sees no answer.
                    Decision::Serve(task) => drop(task),
                }
                std::thread::yield_now();
            }
            c.finished();
            rounds
        })
    }

    #[test]
    fn pause_resume_stop() {
        crate::signals::register_kick_handler().unwrap();
        let mut page: kvm_run = Default::default();
        let c = Arc::new(VcpuControl::new(0, &mut page));
        let t = fake_vcpu(c.clone());
        assert!(c.pause(Duration::from_secs(5)));
        assert_eq!(c.state(), RunState::Paused);
        assert!(c.pause(Duration::from_secs(5)), "pausing twice is harmless");
        c.resume();
        c.request_stop();
        assert!(c.wait_stopped(Duration::from_secs(5)));
        assert!(t.join().unwrap() > 0);
        // Once the thread has finished, nothing touches its page any more (its fd may be
        // closed): later requests neither kick nor write immediate_exit.
        page.immediate_exit = 0;
        assert!(
            !c.pause(Duration::from_millis(1)),
            "a stopped vCPU cannot pause"
        );
        c.request_stop();
        assert_eq!(page.immediate_exit, 0);
    }

    #[test]
    fn a_stop_before_the_start_is_kept() {
        let mut page: kvm_run = Default::default();
        let c = Arc::new(VcpuControl::new(1, &mut page));
        c.request_stop();
        assert_eq!(page.immediate_exit, 1);
        let t = fake_vcpu(c.clone());
        assert_eq!(t.join().unwrap(), 0);
        assert_eq!(c.state(), RunState::Stopped);
    }
}
