//! Timing one run the way a user would see it: a fresh process, wall clock from just before
//! the spawn to its first byte on stdout (time to workload) and to its exit (whole process),
//! with a blocking wait so nothing rounds the exit up. The same wait (`wait4`) gives the CPU
//! time the run cost the host: the process's own and that of the descendants it waited for,
//! so a cost moved off the wall clock (onto another thread or a later moment in the process)
//! still shows. The bench is a child subreaper: a process the run leaves behind (ember's
//! teardown keeper) becomes its child when the run's process exits, and is reaped and counted
//! too, its end on a second clock ("all gone"). Work a daemon does for its client (dockerd,
//! containerd) is not in it.

use std::io::Read;
use std::process::Stdio;

use super::subjects::Subject;
use crate::timing::monotonic_ns;

/// One run's measurements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Exec to "workload started": ember's boot-timer stamp, else the first stdout byte.
    pub to_workload_ns: Option<u64>,
    /// Exec to the first byte on stdout, for every subject (for ember and the KVM floor: the
    /// guest's first output).
    pub first_output_ns: Option<u64>,
    /// Exec to the first KVM_RUN, by the subject's own stamp (ember's timeline, the KVM floor's
    /// `first_kvm_run_ns=` line on stderr): the first guest instruction.
    pub first_kvm_run_ns: Option<u64>,
    /// Exec to exit.
    pub total_ns: u64,
    /// Exec to the end of the last process the run left behind (ember's teardown keeper:
    /// the VM destroyed); `total_ns` when it left none.
    pub gone_ns: u64,
    /// CPU time, user and system, of the process, the descendants it waited for and those it
    /// left behind.
    pub cpu_ns: u64,
    /// ember only: each phase's delta from its `--timings` JSON.
    pub phases: Vec<(String, u64)>,
}

/// Runs `subject` once (run number `run`); an error says why the run failed.
pub fn measure(
    subject: &Subject,
    run: usize,
    timings_dir: &std::path::Path,
) -> Result<Sample, String> {
    let mut cmd = subject.command(run);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t0 = monotonic_ns();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", subject.argv[0]))?;
    let mut err = child.stderr.take();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    let mut first_byte = None;
    if let Some(mut out) = child.stdout.take() {
        let mut buf = [0u8; 8192];
        loop {
            match out.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    first_byte.get_or_insert_with(monotonic_ns);
                }
            }
        }
    }
    let (status, cpu_ns) = wait_with_cpu(&mut child)?;
    let t_end = monotonic_ns();
    let (left_cpu_ns, t_gone) = reap_left_behind();
    let stderr = err_reader.join().unwrap_or_default();
    if !status.success() {
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        return Err(format!("exited with {status}: {last}"));
    }
    let mut sample = Sample {
        to_workload_ns: first_byte.map(|t| t - t0),
        first_output_ns: first_byte.map(|t| t - t0),
        first_kvm_run_ns: stderr
            .lines()
            .find_map(|l| {
                l.strip_prefix("first_kvm_run_ns=")?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .and_then(|at| at.checked_sub(t0)),
        total_ns: t_end - t0,
        gone_ns: t_gone.unwrap_or(t_end) - t0,
        cpu_ns: cpu_ns + left_cpu_ns,
        phases: Vec::new(),
    };
    if subject.is_ember {
        let path = timings_dir.join(format!("ember-{run}.json"));
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("no timings in {}: {e}", path.display()))?;
        let _ = std::fs::remove_file(&path);
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("bad timings JSON: {e}"))?;
        let phases = v["phases"].as_array().cloned().unwrap_or_default();
        sample.to_workload_ns = phases
            .iter()
            .find(|p| p["name"] == "userspace_reached")
            .and_then(|p| p["t_ns"].as_u64());
        // On the bench's clock: ember's timeline says where its t_ns 0 was.
        let start = v["process_start"]["monotonic_ns"].as_u64();
        sample.first_kvm_run_ns = phases
            .iter()
            .find(|p| p["name"] == "first_kvm_run")
            .and_then(|p| p["t_ns"].as_u64())
            .zip(start)
            .and_then(|(t, start)| start.checked_add(t)?.checked_sub(t0));
        sample.phases = phases
            .iter()
            .filter_map(|p| Some((p["name"].as_str()?.to_string(), p["delta_ns"].as_u64()?)))
            .collect();
    }
    Ok(sample)
}

/// Makes this process a child subreaper, so that what a run leaves behind is reaped and
/// counted here. Returns whether the kernel took it.
pub fn adopt_orphans() -> bool {
    // SAFETY: a flag on this process; no memory is passed.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0 }
}

/// How long a run's leftovers may take to end before the bench stops waiting for them (a
/// daemon a runtime starts never ends; ember's keeper ends in milliseconds).
const LEFT_BEHIND_LIMIT_NS: u64 = 2_000_000_000;

/// Reaps the processes the last run left behind (adopted as this subreaper's children when
/// the run's process exited): their CPU time and when the last one ended, if any did.
fn reap_left_behind() -> (u64, Option<u64>) {
    let deadline = monotonic_ns() + LEFT_BEHIND_LIMIT_NS;
    let (mut cpu, mut last) = (0, None);
    loop {
        match wait4(-1, libc::WNOHANG) {
            Ok(Some((_, cpu_ns))) => {
                cpu += cpu_ns;
                last = Some(monotonic_ns());
                continue;
            }
            // Some still run.
            Ok(None) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // ECHILD: none left.
            Err(_) => return (cpu, last),
        }
        if monotonic_ns() > deadline {
            return (cpu, last);
        }
        std::thread::sleep(std::time::Duration::from_micros(20));
    }
}

/// One `wait4` for `pid` (-1: any child): the reaped child's raw wait status and CPU time
/// (user + system, its own waited-for descendants included), or None when `WNOHANG` found
/// none finished.
fn wait4(pid: i32, flags: i32) -> std::io::Result<Option<(i32, u64)>> {
    let mut raw = 0;
    // SAFETY: rusage is plain data that wait4 fills.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for a child of this process, with live out-pointers.
    let r = unsafe { libc::wait4(pid, &mut raw, flags, &mut ru) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    Ok((r > 0).then(|| (raw, tv(ru.ru_utime) + tv(ru.ru_stime))))
}

/// Waits for `child` like `Child::wait`, also returning its CPU time.
fn wait_with_cpu(
    child: &mut std::process::Child,
) -> Result<(std::process::ExitStatus, u64), String> {
    use std::os::unix::process::ExitStatusExt;
    let pid = i32::try_from(child.id()).map_err(|_| "wait: pid out of range".to_string())?;
    loop {
        match wait4(pid, 0) {
            Ok(Some((raw, cpu_ns))) => {
                return Ok((std::process::ExitStatus::from_raw(raw), cpu_ns));
            }
            Err(e) if e.kind() != std::io::ErrorKind::Interrupted => {
                return Err(format!("wait: {e}"));
            }
            _ => {}
        }
    }
}
