//! A running VM paused, resumed and stopped through the library's `VmHandle`: while paused no
//! vCPU runs guest code (the guest's console output stops), after resume it runs again, and a
//! stop ends it however often it was paused. Two vCPUs, the second never started by the
//! guest, so a vCPU waiting for its INIT-SIPI inside KVM pauses too; the boot vCPU running the
//! guest, in HLT, and in a slow host write.

mod common;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use ember::exit::ExitReason;
use ember::seccomp::Seccomp;
use ember::vmm::{VmOutcome, Vmm};

/// Counts the console bytes the guest writes.
struct Counter(Arc<AtomicUsize>);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.fetch_add(buf.len(), Ordering::SeqCst);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Waits until `count` passes `above`; panics after `limit` (a wedged guest, not a slow one).
fn wait_past(count: &AtomicUsize, above: usize, limit: Duration) {
    let start = Instant::now();
    while count.load(Ordering::SeqCst) <= above {
        assert!(
            start.elapsed() < limit,
            "the guest wrote nothing more in {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Stops the VM when dropped while its thread panics.
struct StopIfPanicking(ember::vmm::VmHandle);

impl Drop for StopIfPanicking {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.stop(libc::SIGTERM);
        }
    }
}

/// Pauses and resumes the VM `rounds` times, then pauses it once more and stops it. With
/// `frozen`, each pause must also stop the guest's console output (a guest that keeps writing);
/// otherwise only the pause's answer counts (a guest in HLT writes nothing anyway).
fn drive(handle: ember::vmm::VmHandle, count: Arc<AtomicUsize>, rounds: usize, frozen: bool) {
    // A driver that fails must end the test, not leave `run` waiting forever: its unwinding
    // stops the VM.
    let _stop = StopIfPanicking(handle.clone());
    let limit = Duration::from_secs(20);
    wait_past(&count, 0, limit);
    for round in 0..rounds {
        assert!(
            handle.pause(limit),
            "round {round}: the vCPUs did not pause"
        );
        let paused_at = count.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(
            count.load(Ordering::SeqCst),
            paused_at,
            "round {round}: the guest ran while paused"
        );
        handle.resume();
        if frozen {
            wait_past(&count, paused_at, limit);
        }
    }
    // Stopping a paused VM works too.
    assert!(handle.pause(limit), "the last pause did not hold");
    handle.stop(libc::SIGTERM);
}

/// Builds the tiny guest `name` with its console going to `out`, drives it from another
/// thread, and checks that the stop ended the run.
fn pause_test(name: &str, out: impl Write + Send + 'static, count: Arc<AtomicUsize>, frozen: bool) {
    let (vm, mut runtime) = tiny_vm(name, Seccomp::VcpuThreads, false);
    runtime.console_out = Box::new(out);
    let vmm = Vmm::build(vm, runtime).expect("build");
    let handle = vmm.handle();
    let theirs = count.clone();
    let driver = std::thread::spawn(move || drive(handle, theirs, 20, frozen));
    let run = vmm.run().expect("run");
    driver.join().expect("the driver thread");
    assert_eq!(
        run.outcome,
        VmOutcome::Interrupted(ExitReason::Signal(libc::SIGTERM))
    );
    assert!(count.load(Ordering::SeqCst) > 0);
}

#[test]
fn a_running_guest_pauses_resumes_and_stops() {
    let count = Arc::new(AtomicUsize::new(0));
    pause_test("tick", Counter(count.clone()), count, true);
}

/// The boot vCPU in HLT with interrupts off: KVM holds it in KVM_RUN until the kick.
#[test]
fn a_halted_guest_pauses_resumes_and_stops() {
    let count = Arc::new(AtomicUsize::new(0));
    pause_test("halt", Counter(count.clone()), count, false);
}

/// A console slower than the guest: the vCPU spends most of its time in the host's write, not
/// in KVM_RUN, and the pause is answered when the write returns.
#[test]
fn a_guest_writing_to_a_slow_console_pauses_resumes_and_stops() {
    struct Slow(Counter);
    impl Write for Slow {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            // Busy, not asleep: the write runs on the vCPU thread, whose seccomp filter has no
            // nanosleep (a real slow terminal blocks in write, which it has).
            let start = Instant::now();
            while start.elapsed() < Duration::from_millis(2) {
                std::hint::spin_loop();
            }
            self.0.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let count = Arc::new(AtomicUsize::new(0));
    pause_test("tick", Slow(Counter(count.clone())), count, true);
}
