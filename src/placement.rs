//! Where ember's helper threads start: on a CPU other than the one building the VM.
//!
//! Linux puts a new thread on its parent's CPU, even with another CPU idle, and the two then
//! share it: on a 2-CPU PVM host the thread building the VM waited out the helper's work (KVM's
//! CPUID read, 0.3-0.5 ms there) instead of going on beside it (`examples/helper_start.rs`:
//! 28 of 30 starts, the starter off its CPU 0.45 ms at the median; docs/startup-latency.md). So a helper started through [`spawn`] sleeps until its
//! parent has moved it onto the process's other CPUs, and then takes its full set of CPUs
//! back: the move places its start, it does not pin it.

use std::mem::{size_of, zeroed};
use std::os::unix::thread::JoinHandleExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{Builder, JoinHandle};

/// The CPUs the process may run on, and the same set without the calling thread's current
/// CPU.
#[derive(Clone, Copy)]
pub struct Placement {
    away: libc::cpu_set_t,
    all: libc::cpu_set_t,
}

impl Placement {
    /// Away from the CPU the calling thread runs on now; `None` where there is no other CPU to
    /// go to (the process may run on one CPU only) or the set cannot be read.
    pub fn away_from_here() -> Option<Self> {
        // SAFETY: an all-zero cpu_set_t is the empty set.
        let mut all: libc::cpu_set_t = unsafe { zeroed() };
        // SAFETY: sched_getaffinity writes at most `size_of` bytes into the live set.
        if unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut all) } != 0 {
            return None;
        }
        // SAFETY: sched_getcpu has no preconditions.
        let here = usize::try_from(unsafe { libc::sched_getcpu() }).ok()?;
        let mut away = all;
        if here < 8 * size_of::<libc::cpu_set_t>() {
            // SAFETY: `here` is within the set's bits, checked above.
            unsafe { libc::CPU_CLR(here, &mut away) };
        }
        // SAFETY: CPU_COUNT only reads the set.
        (unsafe { libc::CPU_COUNT(&away) } > 0).then_some(Self { away, all })
    }

    /// Moves `thread` onto the other CPUs. Best effort: a thread left where it started is
    /// only slower to start.
    fn send<T>(&self, thread: &JoinHandle<T>) {
        // SAFETY: the handle keeps the thread's pthread_t valid; the set is live.
        let rc = unsafe {
            libc::pthread_setaffinity_np(
                thread.as_pthread_t(),
                size_of::<libc::cpu_set_t>(),
                &self.away,
            )
        };
        if rc != 0 {
            log::debug!("a helper thread starts on the builder's CPU: error {rc}");
        }
    }

    /// Gives the calling thread all the process's CPUs back.
    fn release(&self) {
        // SAFETY: the set is live; the call only changes where this thread may run.
        unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &self.all) };
    }
}

/// Spawns `f` on a thread made by `builder`; with a placement, the thread runs none of `f` on
/// the calling thread's CPU: it sleeps until this thread has moved it (even when it started by
/// preempting this thread), then runs `f` where it was moved, free to go anywhere later.
pub fn spawn<T: Send + 'static>(
    placement: Option<&Placement>,
    builder: Builder,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<JoinHandle<T>> {
    match placement {
        Some(p) => start_moved(*p, builder, true, f),
        None => builder.spawn(f),
    }
}

/// [`spawn`] with a placement; `release`: whether the thread takes all the CPUs back once
/// moved (false only to test where it was moved).
fn start_moved<T: Send + 'static>(
    p: Placement,
    builder: Builder,
    release: bool,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<JoinHandle<T>> {
    let moved = Arc::new(AtomicBool::new(false));
    let theirs = moved.clone();
    let thread = builder.spawn(move || {
        while !theirs.load(Ordering::Acquire) {
            std::thread::park();
        }
        if release {
            p.release();
        }
        f()
    })?;
    p.send(&thread);
    moved.store(true, Ordering::Release);
    thread.thread().unpark();
    Ok(thread)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_cpus() -> libc::cpu_set_t {
        // SAFETY: an all-zero cpu_set_t is the empty set.
        let mut set: libc::cpu_set_t = unsafe { zeroed() };
        // SAFETY: sched_getaffinity writes at most `size_of` bytes into the live set.
        let rc = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) };
        assert_eq!(rc, 0);
        set
    }

    fn cpu_now() -> usize {
        // SAFETY: sched_getcpu has no preconditions.
        usize::try_from(unsafe { libc::sched_getcpu() }).unwrap()
    }

    fn placement_or_skip(test: &str) -> Option<Placement> {
        let p = Placement::away_from_here();
        if p.is_none() {
            println!("SKIP: {test}: this process may run on one CPU only");
        }
        p
    }

    #[test]
    fn a_placed_thread_runs_only_away_from_its_parents_cpu() {
        let Some(p) = placement_or_skip("a_placed_thread_runs_only_away_from_its_parents_cpu")
        else {
            return;
        };
        let (cpu, mask) = start_moved(p, Builder::new(), false, || (cpu_now(), own_cpus()))
            .unwrap()
            .join()
            .unwrap();
        // SAFETY: CPU_ISSET and CPU_EQUAL only read the sets; `cpu` came from the kernel.
        unsafe {
            assert!(libc::CPU_ISSET(cpu, &p.away));
            assert!(libc::CPU_EQUAL(&mask, &p.away));
        }
    }

    #[test]
    fn a_placed_thread_gets_every_cpu_back() {
        let Some(p) = placement_or_skip("a_placed_thread_gets_every_cpu_back") else {
            return;
        };
        let mask = spawn(Some(&p), Builder::new(), own_cpus)
            .unwrap()
            .join()
            .unwrap();
        // SAFETY: CPU_EQUAL only reads both sets.
        assert!(unsafe { libc::CPU_EQUAL(&mask, &own_cpus()) });
    }

    #[test]
    fn without_a_placement_a_thread_simply_runs() {
        let v = spawn(None, Builder::new(), || 7).unwrap().join().unwrap();
        assert_eq!(v, 7);
    }
}
