//! A running VM paused, resumed and stopped through the library's `VmHandle`: while paused no
//! vCPU runs guest code (the guest's console output stops), after resume it runs again, and a
//! stop ends it however often it was paused. Two vCPUs, the second never started by the
//! guest, so a vCPU waiting for its INIT-SIPI inside KVM pauses too.

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

#[test]
fn a_running_guest_pauses_resumes_and_stops() {
    let (vm, mut runtime) = tiny_vm("tick", Seccomp::VcpuThreads, false);
    let count = Arc::new(AtomicUsize::new(0));
    runtime.console_out = Box::new(Counter(count.clone()));
    let vmm = Vmm::build(vm, runtime).expect("build");
    let handle = vmm.handle();
    let count2 = count.clone();
    let driver = std::thread::spawn(move || {
        // A driver that fails must end the test, not leave `run` waiting forever: its
        // unwinding stops the VM.
        let _stop = StopIfPanicking(handle.clone());
        let limit = Duration::from_secs(20);
        wait_past(&count2, 0, limit);
        for round in 0..20 {
            assert!(
                handle.pause(limit),
                "round {round}: the vCPUs did not pause"
            );
            let paused_at = count2.load(Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(20));
            assert_eq!(
                count2.load(Ordering::SeqCst),
                paused_at,
                "round {round}: the guest ran while paused"
            );
            handle.resume();
            wait_past(&count2, paused_at, limit);
        }
        // Stopping a paused VM works too.
        assert!(handle.pause(limit));
        handle.stop(libc::SIGTERM);
    });
    let run = vmm.run().expect("run");
    driver.join().expect("the driver thread");
    assert_eq!(
        run.outcome,
        VmOutcome::Interrupted(ExitReason::Signal(libc::SIGTERM))
    );
    assert!(count.load(Ordering::SeqCst) > 0);
}
