//! Where a new helper thread runs, and what starting it costs the thread that starts it, on
//! this host. Each run is a fresh process (this example, re-executed) that starts one thread
//! to read KVM's supported CPUID, as `ember run` does, then does 0.4 ms of work of its own (the
//! VM's build); it reports whether the helper's work ran on its CPU, and how long it was kept
//! off its CPU meanwhile. Runs alternate between a plain `std::thread::spawn` and ember's
//! `placement::spawn`. docs/startup-latency.md quotes it.
//!
//!     cargo run --release --example helper_start [RUNS]

use std::process::Command;
use std::thread::Builder;
use std::time::{Duration, Instant};

use ember::placement::{self, Placement};
use kvm_ioctls::Kvm;

/// The starting thread's own work after the start.
const WORK: Duration = Duration::from_micros(400);

fn main() {
    let mut args = std::env::args().skip(1);
    let result = match args.next().as_deref() {
        Some("--once") => once(args.next().as_deref() == Some("placed")),
        runs => compare(runs.and_then(|n| n.parse().ok()).unwrap_or(30)),
    };
    if let Err(e) = result {
        eprintln!("helper_start: {e}");
        std::process::exit(1);
    }
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn compare(runs: usize) -> Res<()> {
    let exe = std::env::current_exe()?;
    for how in ["plain", "placed"] {
        let mut same = 0;
        let mut delays = Vec::with_capacity(runs);
        for _ in 0..runs {
            let out = Command::new(&exe).args(["--once", how]).output()?;
            let text = String::from_utf8(out.stdout)?;
            let mut words = text.split_whitespace();
            let (Some(s), Some(d)) = (words.next(), words.next()) else {
                return Err(format!("a run printed {text:?}").into());
            };
            same += usize::from(s == "1");
            delays.push(d.parse::<u64>()?);
        }
        delays.sort_unstable();
        let slow = delays.iter().filter(|&&d| d > 200).count();
        println!(
            "{how}: helper's work on the starter's CPU in {same} of {runs} runs; starter kept off \
             its CPU: median {} us, {slow} runs over 200 us, max {} us",
            delays[runs / 2],
            delays[runs - 1]
        );
    }
    Ok(())
}

/// One start; prints "1" if the helper's work began on the starter's CPU, then how many
/// microseconds the starter spent off its CPU during the start and its own work.
fn once(placed: bool) -> Res<()> {
    let kvm = Kvm::new()?;
    let here = cpu_now();
    let placement = if placed {
        Placement::away_from_here()
    } else {
        None
    };
    let wall = Instant::now();
    let cpu = thread_cpu_time();
    let helper = placement::spawn(placement.as_ref(), Builder::new(), move || {
        let ran_on = cpu_now();
        kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map(|_| ran_on)
    })?;
    while thread_cpu_time() - cpu < WORK {
        std::hint::spin_loop();
    }
    let off_cpu = wall.elapsed().saturating_sub(thread_cpu_time() - cpu);
    let ran_on = helper.join().map_err(|_| "the helper panicked")??;
    println!("{} {}", u8::from(ran_on == here), off_cpu.as_micros());
    Ok(())
}

fn cpu_now() -> i32 {
    // SAFETY: sched_getcpu has no preconditions.
    unsafe { libc::sched_getcpu() }
}

/// CPU time of the calling thread.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the live timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
