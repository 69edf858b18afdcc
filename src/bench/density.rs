//! `ember bench --density N[,N...]`: how many idle instances a host holds, measured as a user
//! would. For each count N and each subject, N instances are started at once and each is
//! waited for until its first line; then, once they have settled, the host's memory is read
//! again: the drop in MemAvailable divided by N (host memory each), each instance's own PSS
//! (`/proc/PID/smaps_rollup`), and the kernel's growth in Slab + PageTables + KernelStack
//! (kernel memory each). Then they are all stopped, and the next subject starts from a quiet
//! host. The subjects run the same idle work: ember a tiny guest that prints a line and halts
//! (tests/guests/halt.S), crun a static program that prints the same kind of line and pauses
//! (ember's init, `/init --idle`), as `crun run -d`.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

/// How long N instances may take to all print their line.
const UP_LIMIT: Duration = Duration::from_secs(300);
/// How long the host is left to settle before it is measured (page cache, RCU frees).
const SETTLE: Duration = Duration::from_secs(2);

/// The host's memory figures that count, in KiB (`/proc/meminfo`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemInfo {
    /// MemAvailable.
    pub available: u64,
    /// Slab + PageTables + KernelStack.
    pub kernel: u64,
}

impl MemInfo {
    /// Reads them now.
    pub fn read() -> std::io::Result<Self> {
        Ok(Self::parse(&std::fs::read_to_string("/proc/meminfo")?))
    }

    fn parse(text: &str) -> Self {
        let mut fields = BTreeMap::new();
        for line in text.lines() {
            if let Some((name, rest)) = line.split_once(':') {
                let kib = rest
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
                fields.insert(name.trim().to_string(), kib);
            }
        }
        let f = |n: &str| fields.get(n).copied().unwrap_or(0);
        Self {
            available: f("MemAvailable"),
            kernel: f("Slab") + f("PageTables") + f("KernelStack"),
        }
    }
}

/// One subject at one count.
#[derive(Debug, Clone, Serialize)]
pub struct DensityResult {
    /// The subject.
    pub subject: String,
    /// Instances started.
    pub n: usize,
    /// How many printed their line within the limit.
    pub up: usize,
    /// Seconds from the first start until the last line (the starts are one after the other,
    /// from this one thread, as a shell loop would).
    pub all_up_s: f64,
    /// Host memory each: the drop in MemAvailable over N, KiB.
    pub host_kib_each: f64,
    /// Each instance's own PSS, the mean, KiB (what the measured processes map).
    pub pss_kib_each: f64,
    /// The kernel's growth (Slab + PageTables + KernelStack) over N, KiB.
    pub kernel_kib_each: f64,
    /// Host CPU time from the first start until the last line, over N, milliseconds: every
    /// CPU's busy time (`/proc/stat`), so it holds what the instances, the kernel and the
    /// benchmark's own polling spent.
    pub cpu_ms_each: f64,
}

/// Every CPU's busy time so far (user, nice, system, irq, softirq, steal), in clock ticks.
fn cpu_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    stat.lines()
        .find_map(|l| l.strip_prefix("cpu "))
        .map(|rest| {
            rest.split_whitespace()
                .filter_map(|v| v.parse::<u64>().ok())
                .enumerate()
                // idle (3) and iowait (4) are not busy; guest time (8, 9) is in user already.
                .filter(|(i, _)| matches!(i, 0 | 1 | 2 | 5 | 6 | 7))
                .map(|(_, v)| v)
                .sum()
        })
        .unwrap_or(0)
}

/// Milliseconds in `ticks` of `/proc/stat`.
fn ticks_ms(ticks: u64) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    ticks as f64 * 1000.0 / hz as f64
}

/// How to start one instance of a subject and find its process.
pub trait Instances {
    /// The subject's name in reports.
    fn name(&self) -> &str;
    /// Starts instance `i`, its stdout a pipe.
    fn start(&self, i: usize) -> std::io::Result<Child>;
    /// The pid whose PSS counts for instance `i`, once it is up (`child` is what `start`
    /// returned).
    fn measured_pid(&self, i: usize, child: &Child) -> Option<u32>;
    /// Stops instance `i` and reaps what it left.
    fn stop(&self, i: usize, child: &mut Child);
    /// What an instance prints once it is up; `None`: its first whole line.
    fn ready_text(&self) -> Option<&str> {
        None
    }
}

/// What the idle Linux guests print once their userspace is up.
pub const LINUX_IDLE_LINE: &str = "ember-density-idle";

/// ember instances, each `ember ARGS`: the idle tiny guest, or a Linux guest booted or
/// restored.
pub struct EmberVms {
    /// The subject's name.
    pub name: String,
    /// The ember executable.
    pub exe: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// What an instance prints once it is up; `None`: its first line.
    pub ready: Option<&'static str>,
}

impl EmberVms {
    /// The idle tiny guest at `guest`: one line, then halted.
    pub fn tiny(exe: PathBuf, guest: &Path) -> Self {
        let guest = guest.display().to_string();
        Self {
            name: "ember".into(),
            exe,
            args: ["run", "--kernel", &guest, "--no-initrd", "--timeout", "0"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            ready: None,
        }
    }

    /// A Linux subject running `ember ARGS`, up once it prints [`LINUX_IDLE_LINE`].
    pub fn linux(name: &str, exe: &Path, args: Vec<String>) -> Self {
        Self {
            name: name.into(),
            exe: exe.to_path_buf(),
            args,
            ready: Some(LINUX_IDLE_LINE),
        }
    }

    /// `ember run`'s arguments for a 128 MiB Linux guest (the kernel and anything else from
    /// `run_args`) whose `--exec` program, busybox's shell, says the idle line and sleeps;
    /// `extra` go before `--exec`.
    pub fn linux_boot_args(run_args: &[String], extra: &[&str]) -> Vec<String> {
        let mut args = vec!["run".to_string()];
        args.extend(run_args.iter().cloned());
        args.extend(
            ["--mem-mib", "128", "--timeout", "0"]
                .iter()
                .chain(extra)
                .map(|s| s.to_string()),
        );
        args.extend(
            [
                "--exec",
                "/bin/busybox",
                "--",
                "sh",
                "-c",
                &format!("echo {LINUX_IDLE_LINE}; exec busybox sleep 100000000"),
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        args
    }
}

impl Instances for EmberVms {
    fn name(&self) -> &str {
        &self.name
    }
    fn start(&self, _i: usize) -> std::io::Result<Child> {
        Command::new(&self.exe)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
    }
    fn measured_pid(&self, _i: usize, child: &Child) -> Option<u32> {
        Some(child.id())
    }
    fn stop(&self, _i: usize, child: &mut Child) {
        let _ = child.kill();
        let _ = child.wait();
    }
    fn ready_text(&self) -> Option<&str> {
        self.ready
    }
}

/// crun running the idle program as a detached container (`crun run -d`).
pub struct CrunIdle {
    /// The OCI bundle (its process is `/init --idle`).
    pub bundle: PathBuf,
    /// A prefix for the container names, unique to this run.
    pub prefix: String,
}

impl CrunIdle {
    fn id(&self, i: usize) -> String {
        format!("{}-{i}", self.prefix)
    }
}

impl Instances for CrunIdle {
    fn name(&self) -> &str {
        "crun"
    }
    fn start(&self, i: usize) -> std::io::Result<Child> {
        Command::new("crun")
            .args(["run", "-d", "--bundle"])
            .arg(&self.bundle)
            .arg(self.id(i))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
    }
    fn measured_pid(&self, i: usize, _child: &Child) -> Option<u32> {
        let out = Command::new("crun")
            .args(["state", &self.id(i)])
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["pid"].as_u64().and_then(|p| u32::try_from(p).ok())
    }
    fn stop(&self, i: usize, child: &mut Child) {
        let _ = Command::new("crun")
            .args(["delete", "-f", &self.id(i)])
            .stderr(Stdio::null())
            .status();
        let _ = child.wait();
    }
}

/// Writes the OCI bundle for the idle container under `dir`: its process `/init --idle`, its
/// root `rootfs` read-only.
pub fn idle_bundle(dir: &Path, rootfs: &Path) -> Result<PathBuf, String> {
    super::subjects::oci_bundle(&dir.join("bundle-idle"), rootfs, &["/init", "--idle"])
}

/// A process's PSS in KiB (`smaps_rollup`), if it can be read.
fn pss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Waits until every child in `children` has printed a whole line, or `ready` if given (or
/// `limit` passes); returns how many did, when the last one did, and their pipes (kept open
/// until the instances are stopped: a closed pipe would end one that writes again).
fn wait_for_lines(
    children: &mut [Child],
    ready: Option<&str>,
    start: Instant,
    limit: Duration,
) -> (usize, Duration, Vec<Option<std::process::ChildStdout>>) {
    let mut pipes: Vec<Option<std::process::ChildStdout>> =
        children.iter_mut().map(|c| c.stdout.take()).collect();
    for p in pipes.iter().flatten() {
        // SAFETY: fcntl on a pipe fd this process owns.
        unsafe {
            let fd = p.as_raw_fd();
            let flags = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
    let mut done = vec![false; pipes.len()];
    // What each has printed so far, when waiting for a text (a boot log comes first).
    let mut seen = vec![Vec::new(); pipes.len()];
    let mut up = 0;
    let mut last = Duration::ZERO;
    let mut buf = [0u8; 512];
    while up < pipes.len() && start.elapsed() < limit {
        let mut fds: Vec<libc::pollfd> = pipes
            .iter()
            .zip(&done)
            .filter(|(_, d)| !**d)
            .filter_map(|(p, _)| p.as_ref())
            .map(|p| libc::pollfd {
                fd: p.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: fds is a live array of pollfd of the length given.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
        for ((slot, done), seen) in pipes.iter_mut().zip(done.iter_mut()).zip(&mut seen) {
            let Some(p) = slot.as_mut().filter(|_| !*done) else {
                continue;
            };
            match p.read(&mut buf) {
                Ok(0) => *slot = None, // it ended without a line
                Ok(n) => {
                    let is_up = match ready {
                        None => buf[..n].contains(&b'\n'),
                        Some(text) => {
                            seen.extend_from_slice(&buf[..n]);
                            let found = seen.windows(text.len()).any(|w| w == text.as_bytes());
                            // Only the tail can still hold the start of it.
                            let keep = seen.len().saturating_sub(text.len());
                            seen.drain(..keep);
                            found
                        }
                    };
                    if is_up {
                        up += 1;
                        last = start.elapsed();
                        *done = true;
                    }
                }
                Err(_) => {}
            }
        }
    }
    (up, last, pipes)
}

/// Raises the open-file limit to its hard limit: N instances need N pipes here.
pub fn raise_fd_limit() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit on a live rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// Measures `subject` at `n` instances.
pub fn measure(subject: &dyn Instances, n: usize) -> std::io::Result<DensityResult> {
    let before = MemInfo::read()?;
    let busy_before = cpu_busy_ticks();
    let start = Instant::now();
    let mut children = Vec::with_capacity(n);
    for i in 0..n {
        children.push(subject.start(i)?);
    }
    let (up, all_up, pipes) = wait_for_lines(&mut children, subject.ready_text(), start, UP_LIMIT);
    let busy = cpu_busy_ticks().saturating_sub(busy_before);
    std::thread::sleep(SETTLE);
    let after = MemInfo::read()?;
    let pss: Vec<u64> = children
        .iter()
        .enumerate()
        .filter_map(|(i, c)| pss_kib(subject.measured_pid(i, c)?))
        .collect();
    for (i, c) in children.iter_mut().enumerate() {
        subject.stop(i, c);
    }
    drop(pipes);
    let each = |kib: i64| kib as f64 / n.max(1) as f64;
    Ok(DensityResult {
        subject: subject.name().to_string(),
        n,
        up,
        all_up_s: all_up.as_secs_f64(),
        host_kib_each: each(before.available as i64 - after.available as i64),
        pss_kib_each: if pss.is_empty() {
            0.0
        } else {
            pss.iter().sum::<u64>() as f64 / pss.len() as f64
        },
        kernel_kib_each: each(after.kernel as i64 - before.kernel as i64),
        cpu_ms_each: ticks_ms(busy) / n.max(1) as f64,
    })
}

/// The results as a table, MiB and KiB as the figures are given.
pub fn table(results: &[DensityResult]) -> String {
    let mut out = String::from(
        "subject                  N     up | host MiB each | process PSS KiB each | kernel KiB each | all up after | starts/s | host CPU ms each\n",
    );
    for r in results {
        out.push_str(&format!(
            "{:<20} {:>5} {:>6} | {:>13.2} | {:>20.0} | {:>15.0} | {:>10.2} s | {:>8.0} | {:>16.2}\n",
            r.subject,
            r.n,
            r.up,
            r.host_kib_each / 1024.0,
            r.pss_kib_each,
            r.kernel_kib_each,
            r.all_up_s,
            if r.all_up_s > 0.0 { r.up as f64 / r.all_up_s } else { 0.0 },
            r.cpu_ms_each
        ));
    }
    out.push_str("host MiB each = the drop in MemAvailable over N; PSS = each measured process's own (ember: its process; crun: the container's process); kernel = Slab + PageTables + KernelStack growth over N; host CPU = every CPU's busy time until the last line, over N\n");
    out
}

/// Host memory each against N, one line per subject (log scale in N), into `path` (SVG).
pub fn plot(results: &[DensityResult], path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let mut subjects: Vec<&str> = Vec::new();
    for r in results {
        if !subjects.contains(&r.subject.as_str()) {
            subjects.push(&r.subject);
        }
    }
    let mib = |r: &DensityResult| (r.host_kib_each / 1024.0).max(0.0);
    let max_n = results.iter().map(|r| r.n).max().unwrap_or(1) as f64;
    let min_n = results.iter().map(|r| r.n).min().unwrap_or(1) as f64;
    let top = results.iter().map(mib).fold(0.0, f64::max).max(0.1) * 1.2;
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Host memory per idle instance against the number running",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(((min_n * 0.8).max(1.0)..max_n * 1.25).log_scale(), 0.0..top)?;
    chart
        .configure_mesh()
        .x_desc("instances running at once (log scale)")
        .y_desc("MiB each (MemAvailable drop / N)")
        .draw()?;
    for (i, name) in subjects.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points: Vec<(f64, f64)> = results
            .iter()
            .filter(|r| r.subject == *name)
            .map(|r| (r.n as f64, mib(r)))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 4, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_fields() {
        let m = MemInfo::parse(
            "MemTotal: 100 kB\nMemAvailable:   5000 kB\nSlab: 10 kB\nPageTables: 20 kB\nKernelStack: 30 kB\n",
        );
        assert_eq!(
            m,
            MemInfo {
                available: 5000,
                kernel: 60
            }
        );
        assert!(MemInfo::read().unwrap().available > 0);
    }

    #[test]
    fn a_table_row_per_result() {
        let r = DensityResult {
            subject: "ember".into(),
            n: 10,
            up: 10,
            all_up_s: 0.5,
            host_kib_each: 1024.0,
            pss_kib_each: 260.0,
            kernel_kib_each: 380.0,
            cpu_ms_each: 2.5,
        };
        let t = table(std::slice::from_ref(&r));
        let svg = std::env::temp_dir().join(format!("ember-density-{}.svg", std::process::id()));
        plot(&[r], &svg).unwrap();
        assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"));
        let _ = std::fs::remove_file(svg);
        assert!(
            t.contains("ember                   10     10 |          1.00 |"),
            "{t}"
        );
    }
}
