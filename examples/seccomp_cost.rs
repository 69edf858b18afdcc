//! What installing ember's seccomp filters costs the kernel on this host: each filter
//! installed on fresh threads (a filter cannot be taken off), against a one-instruction filter;
//! medians and ranges over the runs. docs/startup-latency.md quotes it.
//!
//!     cargo run --release --example seccomp_cost [RUNS]

use std::time::{Duration, Instant};

use ember::seccomp::{Role, filter};
use seccompiler::{BpfProgram, sock_filter};

/// `BPF_RET | BPF_K` with `SECCOMP_RET_ALLOW`: allow every call.
const ALLOW_ALL: sock_filter = sock_filter {
    code: 0x06,
    jt: 0,
    jf: 0,
    k: 0x7fff_0000,
};

fn main() {
    let runs = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(50);
    if let Err(e) = measure(runs) {
        eprintln!("seccomp_cost: {e}");
        std::process::exit(1);
    }
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn measure(runs: usize) -> Res<()> {
    let filters = [
        ("the VMM thread's filter", filter(Role::Vmm)?),
        ("a vCPU thread's filter", filter(Role::Vcpu)?),
        ("a one-instruction filter", vec![ALLOW_ALL]),
    ];
    let mut times = vec![Vec::with_capacity(runs); filters.len()];
    // Interleaved, so that the host's drift hits every filter alike.
    for _ in 0..runs {
        for (t, (_, f)) in times.iter_mut().zip(&filters) {
            t.push(install_on_a_new_thread(f)?);
        }
    }
    for (mut t, (what, f)) in times.into_iter().zip(&filters) {
        t.sort_unstable();
        println!(
            "{what}, {} instruction{}: median {:.0} us ({:.0}-{:.0})",
            f.len(),
            if f.len() == 1 { "" } else { "s" },
            micros(t[runs / 2]),
            micros(t[0]),
            micros(t[runs - 1])
        );
    }
    Ok(())
}

fn install_on_a_new_thread(f: &BpfProgram) -> Res<Duration> {
    let f = f.clone();
    let t = std::thread::spawn(move || {
        let start = Instant::now();
        seccompiler::apply_filter(&f).map(|()| start.elapsed())
    })
    .join()
    .map_err(|_| "the thread panicked")??;
    Ok(t)
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
