//! `ember bench`: ember's startup against the container runtimes and peer VMMs, on the same
//! host, in the same run, each run a fresh process as a user would start it.
//!
//! Subjects run in alternating blocks (ember ×k, subject ×k, ember ×k, …) and the first
//! `warmup` runs of each block are dropped, so machine drift cancels and no subject pays for
//! the previous one's deferred teardown. docs/startup-latency.md has the method and figures.

pub mod density;
pub mod report;
pub mod runner;
pub mod stats;
pub mod subjects;

use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};

use crate::kvm::HostFlavour;
use report::{BenchResults, SampleOut, SubjectResult};
use runner::Sample;
use stats::Summary;
use subjects::{Subject, Workload};

/// Counted runs per block.
const BLOCK: usize = 5;
/// JSON schema identifier of results.json.
pub const SCHEMA: &str = "ember-bench/1";

/// Errors in `ember bench`'s input or output.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// `--runs 0`.
    #[error("--runs 0: a benchmark needs at least one run; pass --runs 1 or more")]
    NoRuns,
    /// An unknown `--baselines` entry.
    #[error("--baselines: unknown baseline {0:?}; choose from {list}", list = subjects::BASELINES.join(", "))]
    UnknownBaseline(String),
    /// A `--peer` without `NAME=`.
    #[error("--peer {0:?}: expected NAME='COMMAND {{kernel}} {{initrd}}'")]
    PeerSyntax(String),
    /// A peer template without `{kernel}`.
    #[error(
        "--peer {0}: the command has no {{kernel}}, so it would not boot the same guest; add {{kernel}} where the kernel path goes"
    )]
    PeerNoKernel(String),
    /// The output directory is unusable.
    #[error("--out {path}: cannot write there ({source}); pass a writable directory")]
    OutDir {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// ember itself could not run: nothing to compare against.
    #[error("ember could not boot the benchmark guest: {0}")]
    Ember(String),
    /// The ember executable could not be found.
    #[error("cannot find the ember executable: {0}")]
    Exe(std::io::Error),
}

/// What `ember bench` was asked to do.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Counted runs per subject.
    pub runs: usize,
    /// Runs dropped at the start of each block.
    pub warmup: usize,
    /// Baselines to run, by name.
    pub baselines: Vec<String>,
    /// Peer VMMs: `NAME=CMD` templates.
    pub peers: Vec<String>,
    /// Output directory.
    pub out: PathBuf,
    /// Options for `ember run`; empty means the default guest for this host.
    pub run_args: Vec<String>,
    /// Also time restores: the guest is snapshotted once where it says ready
    /// (`--snapshot-on-ready`), and an `ember restore` subject continues it, beside the cold
    /// boot; peers may restore it too (`{snapshot}` in their command).
    pub restore: bool,
    /// Density of Linux guests instead of the idle tiny guest: the kernel `run_args` name
    /// (or the default), booted plain, booted with a balloon, and restored from one snapshot
    /// with a balloon.
    pub density_linux: bool,
}

impl BenchConfig {
    /// Checks the configuration; creates the output directory.
    pub fn validate(&self) -> Result<Vec<(String, String)>, BenchError> {
        if self.runs == 0 {
            return Err(BenchError::NoRuns);
        }
        for b in &self.baselines {
            if !subjects::BASELINES.contains(&b.as_str()) {
                return Err(BenchError::UnknownBaseline(b.clone()));
            }
        }
        let mut peers = Vec::new();
        for p in &self.peers {
            let (name, cmd) = p
                .split_once('=')
                .ok_or_else(|| BenchError::PeerSyntax(p.clone()))?;
            if name.is_empty() || cmd.is_empty() {
                return Err(BenchError::PeerSyntax(p.clone()));
            }
            if !cmd.contains("{kernel}") {
                return Err(BenchError::PeerNoKernel(name.to_string()));
            }
            peers.push((name.to_string(), cmd.to_string()));
        }
        let out_err = |source| BenchError::OutDir {
            path: self.out.clone(),
            source,
        };
        std::fs::create_dir_all(&self.out).map_err(out_err)?;
        let probe = self.out.join(".ember-bench-probe");
        std::fs::write(&probe, b"").map_err(out_err)?;
        let _ = std::fs::remove_file(probe);
        Ok(peers)
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn uname_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// What a density run found.
pub struct DensityRun {
    /// The results, subject by subject, count by count.
    pub results: Vec<density::DensityResult>,
    /// The subjects skipped, with why.
    pub skipped: Vec<(String, String)>,
    /// What the figures leave out (the shared snapshot file of restored subjects).
    pub notes: Vec<String>,
}

/// `ember bench --density N,...`: each subject (ember's idle tiny guest; crun's idle
/// container, when `crun` is among the baselines and installed) at each count, one after the
/// other; writes density.json and density.csv into the output directory and returns the
/// results with the subjects that were skipped and why.
pub fn run_density(cfg: &BenchConfig, counts: &[usize]) -> Result<DensityRun, BenchError> {
    if counts.is_empty() || counts.contains(&0) {
        return Err(BenchError::NoRuns);
    }
    cfg.validate()?;
    let out = std::fs::canonicalize(&cfg.out).map_err(|source| BenchError::OutDir {
        path: cfg.out.clone(),
        source,
    })?;
    let out_err = |source| BenchError::OutDir {
        path: out.clone(),
        source,
    };
    density::raise_fd_limit();
    let exe = std::env::current_exe().map_err(BenchError::Exe)?;
    let mut notes = Vec::new();
    let mut subjects: Vec<Box<dyn density::Instances>> = if cfg.density_linux {
        let (subjects, note) = linux_density_subjects(&exe, &cfg.run_args, &out)?;
        notes.push(note);
        subjects
    } else {
        let guest = out.join("idle-guest");
        std::fs::write(&guest, crate::IDLE_GUEST).map_err(out_err)?;
        vec![Box::new(density::EmberVms::tiny(exe, &guest))]
    };
    let mut skipped = Vec::new();
    if cfg.baselines.iter().any(|b| b == "crun") {
        let rootfs = subjects::make_rootfs(&out).map_err(out_err)?;
        match density::idle_bundle(&out, &rootfs) {
            Ok(bundle) => subjects.push(Box::new(density::CrunIdle {
                bundle,
                prefix: format!("ember-density-{}", std::process::id()),
            })),
            Err(why) => skipped.push(("crun".to_string(), why)),
        }
    }
    let mut results = Vec::new();
    for &n in counts {
        for s in &subjects {
            let r = density::measure(s.as_ref(), n).map_err(out_err)?;
            if r.up < n && s.name().starts_with("ember") {
                return Err(BenchError::Ember(format!(
                    "only {} of {n} idle VMs printed their line",
                    r.up
                )));
            }
            results.push(r);
        }
    }
    let json = serde_json::json!({
        "schema": "ember-density/1",
        "host": { "flavour": HostFlavour::detect().name(), "cpu": cpu_model() },
        "results": results,
        "skipped": skipped,
        "notes": notes,
    });
    std::fs::write(out.join("density.json"), json.to_string()).map_err(out_err)?;
    let mut csv = String::from(
        "subject,n,up,all_up_s,host_kib_each,pss_kib_each,kernel_kib_each,cpu_ms_each\n",
    );
    for r in &results {
        csv.push_str(&format!(
            "{},{},{},{:.3},{:.1},{:.1},{:.1},{:.2}\n",
            r.subject,
            r.n,
            r.up,
            r.all_up_s,
            r.host_kib_each,
            r.pss_kib_each,
            r.kernel_kib_each,
            r.cpu_ms_each
        ));
    }
    std::fs::write(out.join("density.csv"), csv).map_err(out_err)?;
    density::plot(&results, &out.join("density.svg"))
        .map_err(|e| out_err(std::io::Error::other(format!("density.svg: {e}"))))?;
    Ok(DensityRun {
        results,
        skipped,
        notes,
    })
}

/// The Linux density subjects: a plain boot, a boot with a balloon (free page reporting), and
/// restores of one snapshot taken (with the balloon) where ember's init says ready, before
/// the idle program starts, so each restore runs it afresh. With them, a note of what the
/// snapshot's memory file holds: its pages are shared by every restore, and were on the host
/// before the first one started, so no instance's figure has them.
fn linux_density_subjects(
    exe: &Path,
    run_args: &[String],
    out: &Path,
) -> Result<(Vec<Box<dyn density::Instances>>, String), BenchError> {
    use density::EmberVms;
    let snapshot = out.join("density-snapshot");
    let _ = std::fs::remove_dir_all(&snapshot);
    let snapshot_text = snapshot.display().to_string();
    let take = EmberVms::linux_boot_args(
        run_args,
        &["--balloon", "--snapshot-on-ready", &snapshot_text],
    );
    let mut child = std::process::Command::new(exe)
        .args(&take)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(BenchError::Exe)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    let status = loop {
        if let Some(s) = child.try_wait().map_err(BenchError::Exe)? {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(BenchError::Ember(
                "the Linux guest did not reach ready within 600 s for its snapshot".into(),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    if !status.success() {
        return Err(BenchError::Ember(format!(
            "snapshotting the Linux guest ({}) failed: {status}",
            take.join(" ")
        )));
    }
    let linux = |name: &str, args: Vec<String>| -> Box<dyn density::Instances> {
        Box::new(EmberVms::linux(name, exe, args))
    };
    let held = std::fs::metadata(snapshot.join("memory"))
        .map(|m| {
            use std::os::unix::fs::MetadataExt;
            format!(
                "{:.1} MiB allocated of {:.0} MiB",
                (m.blocks() * 512) as f64 / 1048576.0,
                m.len() as f64 / 1048576.0
            )
        })
        .unwrap_or_else(|e| format!("unreadable ({e})"));
    let note = format!(
        "ember linux restored: every restore maps {}/memory copy-on-write ({held}), once for all of them and not in their figures",
        snapshot.display()
    );
    let subjects = vec![
        linux("ember linux", EmberVms::linux_boot_args(run_args, &[])),
        linux(
            "ember linux balloon",
            EmberVms::linux_boot_args(run_args, &["--balloon"]),
        ),
        linux(
            "ember linux restored",
            vec![
                "run".into(),
                "--restore".into(),
                snapshot_text,
                "--timeout".into(),
                "0".into(),
            ],
        ),
    ];
    Ok((subjects, note))
}

/// Runs the benchmark and writes its outputs; the caller prints the table.
pub fn run(cfg: &BenchConfig) -> Result<BenchResults, BenchError> {
    let peers = cfg.validate()?;
    let out = std::fs::canonicalize(&cfg.out).map_err(|source| BenchError::OutDir {
        path: cfg.out.clone(),
        source,
    })?;
    let out_err = |source| BenchError::OutDir {
        path: out.clone(),
        source,
    };
    let flavour = HostFlavour::detect();
    if !runner::adopt_orphans() {
        log::warn!("cannot become a child subreaper: what a run leaves behind goes uncounted");
    }
    let exe = std::env::current_exe().map_err(BenchError::Exe)?;
    let rootfs = subjects::make_rootfs(&out).map_err(out_err)?;

    // The guest: on hardware KVM the default Linux guest to userspace; elsewhere (PVM, where
    // Linux userspace does not run) a tiny guest that prints one line and resets, which
    // measures what is ember's own, the VMM overhead.
    let (run_args, workload, description) = if !cfg.run_args.is_empty() {
        let kernel = cfg
            .run_args
            .iter()
            .position(|a| a == "--kernel")
            .and_then(|i| cfg.run_args.get(i + 1))
            .map(PathBuf::from)
            .unwrap_or_else(crate::config::default_kernel);
        (
            cfg.run_args.clone(),
            Workload {
                rootfs,
                kernel,
                initrd: None,
            },
            format!("ember run {}", cfg.run_args.join(" ")),
        )
    } else if matches!(flavour, HostFlavour::Hardware(_)) {
        let kernel = crate::config::default_kernel();
        let initrd = out.join("initramfs.cpio");
        std::fs::write(&initrd, crate::initramfs::build(crate::GUEST_INIT, None))
            .map_err(out_err)?;
        (
            Vec::new(),
            Workload {
                rootfs,
                kernel: kernel.clone(),
                initrd: Some(initrd),
            },
            format!(
                "Linux {} with ember's initramfs, init prints one line",
                kernel.display()
            ),
        )
    } else {
        let guest = out.join("tiny-guest-pvh");
        std::fs::write(&guest, crate::BENCH_GUEST).map_err(out_err)?;
        (
            vec!["--kernel".into(), guest.display().to_string(), "--no-initrd".into()],
            Workload { rootfs, kernel: guest, initrd: None },
            "tiny PVH guest (one console line, boot timer, reset); containers run /init --workload (one line)".to_string(),
        )
    };

    let mut subjects: Vec<Subject> = vec![subjects::ember(&exe, &run_args, &out)];
    let snapshot = out.join("snapshot");
    if cfg.restore {
        subjects::take_snapshot(&exe, &run_args, &snapshot).map_err(BenchError::Ember)?;
        subjects.push(subjects::ember_restore(&exe, &snapshot, &out));
    }
    let mut results: Vec<SubjectResult> = Vec::new();
    let mut skipped: Vec<(String, String)> = Vec::new();
    for name in &cfg.baselines {
        match subjects::baseline(name, &out, &workload) {
            Ok(s) => subjects.push(s),
            Err(reason) => skipped.push((name.clone(), reason)),
        }
    }
    for (name, cmd) in &peers {
        subjects.push(subjects::peer(name, cmd, &workload).with_snapshot(&snapshot));
    }

    // Each subject's first run decides whether it runs at all.
    let mut active = Vec::new();
    for s in subjects {
        match runner::measure(&s, 0, &out) {
            Ok(_) => active.push(s),
            Err(reason) if s.is_ember => return Err(BenchError::Ember(reason)),
            Err(reason) => skipped.push((s.name.clone(), format!("first run failed: {reason}"))),
        }
    }

    let block = BLOCK.min(cfg.runs);
    let rounds = cfg.runs.div_ceil(block);
    let total_runs = (rounds * (block + cfg.warmup) * active.len()) as u64;
    let bar = ProgressBar::new(total_runs);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:40}] {pos}/{len} runs, {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); active.len()];
    let mut failures: Vec<Option<String>> = vec![None; active.len()];
    let mut run_no = 1;
    for _ in 0..rounds {
        for (i, s) in active.iter().enumerate() {
            bar.set_message(s.name.clone());
            for k in 0..block + cfg.warmup {
                bar.inc(1);
                run_no += 1;
                if failures[i].is_some() {
                    continue;
                }
                match runner::measure(s, run_no, &out) {
                    Ok(x) if k >= cfg.warmup && samples[i].len() < cfg.runs => samples[i].push(x),
                    Ok(_) => {}
                    Err(reason) => failures[i] = Some(format!("run {run_no} failed: {reason}")),
                }
            }
        }
    }
    bar.finish_and_clear();

    let ember_total = samples
        .first()
        .and_then(|v| median(v.iter().map(|x| x.total_ns as f64)));
    let ember_ttw = samples
        .first()
        .and_then(|v| median(v.iter().filter_map(|x| x.to_workload_ns.map(|t| t as f64))));
    for (i, s) in active.iter().enumerate() {
        if let Some(reason) = &failures[i] {
            skipped.push((s.name.clone(), reason.clone()));
            continue;
        }
        let v = &samples[i];
        // One clock's summary over the runs that have it.
        let of = |clock: fn(&Sample) -> Option<u64>| {
            Summary::of(
                &v.iter()
                    .filter_map(clock)
                    .map(|t| t as f64)
                    .collect::<Vec<_>>(),
            )
        };
        let total = of(|x| Some(x.total_ns));
        let cpu = of(|x| Some(x.cpu_ns));
        let gone = of(|x| Some(x.gone_ns));
        let first_output = of(|x| x.first_output_ns);
        let first_kvm_run = of(|x| x.first_kvm_run_ns);
        let ttw = of(|x| x.to_workload_ns);
        results.push(SubjectResult {
            name: s.name.clone(),
            skipped: None,
            configuration: (!s.configuration.is_empty()).then(|| s.configuration.clone()),
            command: s.argv.clone(),
            ratio_total_to_ember: total.zip(ember_total).map(|(t, e)| t.median_ns / e),
            ratio_to_workload_to_ember: ttw.zip(ember_ttw).map(|(t, e)| t.median_ns / e),
            to_workload: ttw,
            first_output,
            first_kvm_run,
            total,
            gone,
            cpu,
            phase_medians_ns: if s.is_ember {
                phase_medians(v)
            } else {
                Vec::new()
            },
            samples: v.iter().map(SampleOut::from).collect(),
        });
    }
    for (name, reason) in skipped {
        results.push(SubjectResult {
            name,
            skipped: Some(reason),
            configuration: None,
            command: Vec::new(),
            to_workload: None,
            first_output: None,
            first_kvm_run: None,
            total: None,
            gone: None,
            cpu: None,
            ratio_total_to_ember: None,
            ratio_to_workload_to_ember: None,
            phase_medians_ns: Vec::new(),
            samples: Vec::new(),
        });
    }

    let results = BenchResults {
        schema: SCHEMA,
        host: serde_json::json!({
            "flavour": flavour.name(),
            "cpu": cpu_model(),
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "kernel": uname_release(),
        }),
        guest: serde_json::json!({
            "description": description,
            "kernel": workload.kernel.display().to_string(),
            "initrd": workload.initrd.as_ref().map(|p| p.display().to_string()),
            "ember_run_args": run_args,
        }),
        method: serde_json::json!({
            "runs": cfg.runs,
            "warmup_dropped_per_block": cfg.warmup,
            "counted_per_block": block,
            "order": "alternating blocks, ember first",
        }),
        subjects: results,
    };
    results.write(&out).map_err(out_err)?;
    Ok(results)
}

fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    Summary::of(&values.collect::<Vec<_>>()).map(|s| s.median_ns)
}

/// The median delta of each ember phase, in the order phases appear in the first run.
fn phase_medians(samples: &[Sample]) -> Vec<(String, f64)> {
    let Some(first) = samples.first() else {
        return Vec::new();
    };
    first
        .phases
        .iter()
        .filter(|(name, _)| name != "process_start")
        .filter_map(|(name, _)| {
            let m = median(samples.iter().filter_map(|s| {
                s.phases
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, d)| *d as f64)
            }))?;
            Some((name.clone(), m))
        })
        .collect()
}

/// The default output directory.
pub fn default_out() -> PathBuf {
    Path::new("ember-bench").to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BenchConfig {
        BenchConfig {
            runs: 3,
            warmup: 1,
            baselines: vec!["process".into()],
            peers: vec![],
            out: std::env::temp_dir().join(format!("ember-bench-unit-{}", std::process::id())),
            run_args: vec![],
            restore: false,
            density_linux: false,
        }
    }

    #[test]
    fn bad_input_is_refused() {
        let mut c = cfg();
        c.runs = 0;
        assert!(matches!(c.validate(), Err(BenchError::NoRuns)));
        let mut c = cfg();
        c.baselines = vec!["lxc".into()];
        assert!(c.validate().unwrap_err().to_string().contains("lxc"));
        let mut c = cfg();
        c.peers = vec!["fc=firecracker --no-kernel".into()];
        assert!(matches!(c.validate(), Err(BenchError::PeerNoKernel(_))));
        let mut c = cfg();
        c.peers = vec!["firecracker".into()];
        assert!(matches!(c.validate(), Err(BenchError::PeerSyntax(_))));
        let mut c = cfg();
        c.out = PathBuf::from("/proc/ember-bench");
        assert!(matches!(c.validate(), Err(BenchError::OutDir { .. })));
    }

    #[test]
    fn phase_medians_follow_the_first_run() {
        let s = |a: u64, b: u64| Sample {
            to_workload_ns: None,
            first_output_ns: None,
            first_kvm_run_ns: None,
            total_ns: 0,
            gone_ns: 0,
            cpu_ns: 0,
            phases: vec![
                ("process_start".into(), 0),
                ("config_parsed".into(), a),
                ("kvm_ready".into(), b),
            ],
        };
        let m = phase_medians(&[s(1, 10), s(3, 30), s(2, 20)]);
        assert_eq!(
            m,
            vec![
                ("config_parsed".to_string(), 2.0),
                ("kvm_ready".to_string(), 20.0)
            ]
        );
    }
}
