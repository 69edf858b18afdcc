//! `ember run`: flags (over an optional `--config` file) into a [`VmConfig`], resolved for this
//! host, built, run, and turned into an exit code.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ember::config::{self, ConfigError, Exec, VmConfig};
use ember::devices::manager::DeviceSpec;
use ember::devices::serial::FdWriter;
use ember::kvm::HostFlavour;
use ember::placement::Placement;
use ember::resolve;
use ember::seccomp::Seccomp;
use ember::snapshot::{self, SnapshotFiles};
use ember::terminal;
use ember::timing::report::{self, Report};
use ember::timing::{Phase, Timeline, process_start};
use ember::vmm::{CpuidRead, Runtime, SnapshotOnReady, Teardown, Vmm};

use super::process::ConsoleTail;
use super::{Failure, exit_code};

/// `ember run`'s flags. Each overrides the same field of a `--config` file.
#[derive(clap::Args)]
pub struct RunArgs {
    /// A JSON configuration file (Firecracker's sections: boot-source, machine-config, drives,
    /// network-interfaces, vsock); the flags below override it. docs/config.md has the format.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the resolved configuration as JSON (the effective command line included) and exit
    /// without booting.
    #[arg(long)]
    print_config: bool,
    /// Kernel image: an x86_64 ELF vmlinux (PVH note or 64-bit entry) or a bzImage.
    /// Default: $EMBER_KERNEL, else ~/.cache/ember/vmlinux (built by kernels/build.sh).
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Initrd image to hand the kernel instead of ember's built-in initramfs.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["exec", "no_initrd"])]
    initrd: Option<PathBuf>,
    /// Run this static program in the guest (packed into an in-memory initramfs); ember exits
    /// with its exit status. Arguments follow `--`.
    #[arg(long, value_name = "PROG", conflicts_with = "no_initrd")]
    exec: Option<PathBuf>,
    /// Boot without any initrd (bare kernels and tiny test guests).
    #[arg(long)]
    no_initrd: bool,
    /// Kernel command line, replacing the default (see README: "Kernel command line").
    #[arg(long, value_name = "STR")]
    cmdline: Option<String>,
    /// Number of vCPUs [default: 1].
    #[arg(long, value_name = "N", value_parser = config::parse_vcpus)]
    vcpus: Option<u32>,
    /// Allow more vCPUs than the CPUs this host gives ember (they then share CPUs).
    #[arg(long)]
    overcommit_vcpus: bool,
    /// Guest memory in MiB [default: 128].
    #[arg(long, value_name = "M", value_parser = config::parse_mem_mib)]
    mem_mib: Option<u64>,
    /// A disk image as a virtio block device (vda, vdb, ... in order); `ro` makes the device
    /// refuse writes; `id` names it (the serial number the guest reads). Repeatable.
    #[arg(long, value_name = "PATH[,ro][,id=NAME]")]
    disk: Vec<String>,
    /// A disk image as the first block device and the root filesystem (`root=/dev/vda rw`).
    #[arg(long, value_name = "PATH")]
    rootfs: Option<PathBuf>,
    /// A network interface backed by an existing TAP device. Repeatable.
    #[arg(long, value_name = "tap=NAME[,mac=MAC]")]
    net: Vec<String>,
    /// A vsock device: a host process connects to PATH and sends `CONNECT <port>\n`; guest
    /// connections to port P reach PATH_P (Firecracker's convention).
    #[arg(long, value_name = "cid=N,uds=PATH")]
    vsock: Option<String>,
    /// A virtio-balloon device: the guest gives back the memory it frees (free page
    /// reporting) and AMOUNT MiB on request, and takes it back when it runs out (deflate on
    /// OOM). Alone: amount_mib=0, both on. `PATCH /balloon` on --api-sock changes the amount.
    #[arg(long, value_name = "amount_mib=N,deflate_on_oom=on|off,free_page_reporting=on|off", num_args = 0..=1, require_equals = true, default_missing_value = "")]
    balloon: Option<String>,
    /// Stop the guest if it is still running after this long (90, 90s, 500ms, 5m, 1h; 0: never).
    /// Default: none, except for a Linux guest on a PVM-based /dev/kvm (see `ember host`).
    #[arg(long, value_name = "DURATION", value_parser = config::parse_duration)]
    timeout: Option<std::time::Duration>,
    /// Log level on stderr: off, error, warn, info, debug, trace.
    #[arg(long, value_name = "LEVEL", default_value = "warn", value_parser = parse_level)]
    pub log_level: log::LevelFilter,
    /// Report the startup timeline after the guest stops: a table on stderr (`--timings`),
    /// JSON on stderr (`--timings=json`) or JSON into a file (`--timings=FILE`).
    #[arg(long, value_name = "json|FILE", num_args = 0..=1, require_equals = true, default_missing_value = "table")]
    timings: Option<String>,
    /// Run without seccomp filters (vCPU threads and the VMM thread). Unsafe: it leaves the
    /// threads that handle guest-controlled input unconfined; for debugging ember only.
    #[arg(long)]
    no_seccomp: bool,
    /// When KVM destroys the VM (milliseconds of the host's time): `deferred` hands it to a
    /// short-lived process that holds only the VM and finishes it after ember has exited, so
    /// the exit status comes that much sooner; `inline` before ember exits.
    #[arg(long, value_name = "deferred|inline", default_value = "deferred", value_parser = parse_teardown)]
    teardown: Teardown,
    /// When the guest says "ready" (the byte 124 on port 0x3f0), snapshot the VM into DIR (a
    /// state file and a memory file) and stop it; `ember run --restore DIR` continues it.
    #[arg(long, value_name = "DIR")]
    snapshot_on_ready: Option<PathBuf>,
    /// With --snapshot-on-ready: let the VM run on after the snapshot instead of stopping it.
    #[arg(long, requires = "snapshot_on_ready")]
    continue_after_snapshot: bool,
    /// Continue the VM snapshotted in DIR (by --snapshot-on-ready) instead of booting one: in
    /// this new process, with its memory mapped copy-on-write from DIR/memory.
    #[arg(long, value_name = "DIR", conflicts_with_all = [
        "config", "print_config", "kernel", "initrd", "exec", "no_initrd", "cmdline", "vcpus",
        "overcommit_vcpus", "mem_mib", "disk", "rootfs", "net", "vsock", "balloon", "args",
        "snapshot_on_ready",
    ])]
    restore: Option<PathBuf>,
    /// With --restore: open the snapshot's device ID on another host path: a disk's image,
    /// a network interface's TAP, or (ID `vsock`) the vsock socket. Repeatable; the other
    /// devices open what the snapshot names.
    #[arg(long, value_name = "ID=PATH", requires = "restore")]
    reattach: Vec<String>,
    /// A control socket at PATH (it must not exist yet): Firecracker's API shapes over HTTP
    /// (`GET /`, `PATCH /vm` to pause and resume, `PUT /snapshot/create`), docs/snapshot.md.
    #[arg(long, value_name = "PATH")]
    api_sock: Option<PathBuf>,
    /// The program to run in the guest, from the host's files (or --root's), and its
    /// arguments: `ember run -- make check`. With --exec, the static program's arguments.
    #[arg(last = true, value_name = "PROG [ARGS]")]
    args: Vec<String>,
    /// What shapes a program's VM.
    #[command(flatten)]
    pub process: super::process::ProcessArgs,
}

/// Names each of a loaded snapshot's devices for messages, and moves those `--reattach`
/// names to their new host paths.
fn reattach(loaded: &mut snapshot::Loaded, dir: &Path, moves: &[String]) -> Result<(), Failure> {
    let state = dir.join(snapshot::STATE_FILE);
    for d in &mut loaded.vm.devices {
        d.place.input = format!(
            "{}: {} ({})",
            state.display(),
            d.place.spec.name(),
            d.place.spec.host_path()
        );
    }
    for m in moves {
        let bad = |why: String| Failure {
            code: exit_code::BAD_INPUT,
            message: format!("--reattach {m}: {why}"),
        };
        let Some((id, path)) = m
            .split_once('=')
            .filter(|(i, p)| !i.is_empty() && !p.is_empty())
        else {
            return Err(bad(
                "write ID=PATH: a device's id in the snapshot (a drive's id, an interface's id, vsock) and its new host path".into(),
            ));
        };
        let place = loaded.vm.reattach(id, path).map_err(&bad)?;
        place.input = format!("--reattach {m}");
    }
    Ok(())
}

fn parse_level(s: &str) -> Result<log::LevelFilter, String> {
    s.parse()
        .map_err(|_| format!("unknown log level {s:?}: use off, error, warn, info, debug or trace"))
}

fn parse_teardown(s: &str) -> Result<Teardown, String> {
    match s {
        "deferred" => Ok(Teardown::AfterExit),
        "inline" => Ok(Teardown::Inline),
        _ => Err(format!("unknown teardown {s:?}: use deferred or inline")),
    }
}

impl RunArgs {
    /// The configuration these flags describe, on top of `--config` if given; each field a
    /// flag sets is recorded, so that errors name the flag rather than the file. `terminal`:
    /// whether a program run gets a terminal.
    pub fn to_config(&self, terminal: bool) -> Result<VmConfig, ConfigError> {
        let mut c = match &self.config {
            Some(path) => VmConfig::from_file(path)?,
            None => VmConfig::default(),
        };
        let src = &mut c.sources;
        let boot = &mut c.boot_source;
        if let Some(k) = &self.kernel {
            boot.kernel_image_path = Some(k.clone());
            src.set_by("boot-source.kernel_image_path", "--kernel");
        }
        // Any of the three initrd flags replaces the file's choice.
        if self.initrd.is_some() || self.exec.is_some() || self.no_initrd {
            boot.initrd_path = self.initrd.clone();
            boot.exec = self.exec.as_ref().map(|program| Exec {
                program: program.clone(),
                args: self.args.clone(),
            });
            boot.no_initrd = self.no_initrd;
            src.set_by("boot-source.initrd_path", "--initrd");
            src.set_by("boot-source.exec.program", "--exec");
        }
        let program = !self.args.is_empty() && boot.exec.is_none();
        if !program && let Some(flag) = self.process.first_given() {
            return Err(ConfigError::Invalid {
                input: flag.to_string(),
                reason: "shapes a program's VM, but no program was given: add -- PROG [ARGS]"
                    .into(),
            });
        }
        if let Some(cmdline) = &self.cmdline {
            boot.boot_args = Some(cmdline.clone());
            src.set_by("boot-source.boot_args", "--cmdline");
        }
        let m = &mut c.machine_config;
        if let Some(v) = self.vcpus {
            m.vcpu_count = v;
            src.set_by("machine-config.vcpu_count", "--vcpus");
        }
        if let Some(mib) = self.mem_mib {
            m.mem_size_mib = mib;
            src.set_by("machine-config.mem_size_mib", "--mem-mib");
        }
        if self.overcommit_vcpus {
            m.overcommit_vcpus = true;
            src.set_by("machine-config.overcommit_vcpus", "--overcommit-vcpus");
        }
        if let Some(root) = &self.rootfs {
            c.drives.insert(0, config::parse_rootfs(root));
        }
        for d in &self.disk {
            let index = c.drives.len();
            c.drives.push(config::parse_disk(d, index)?);
        }
        for n in &self.net {
            let index = c.network_interfaces.len();
            c.network_interfaces.push(config::parse_net(n, index)?);
        }
        if let Some(v) = &self.vsock {
            c.vsock = Some(config::parse_vsock(v)?);
        }
        if let Some(b) = &self.balloon {
            c.balloon = Some(config::parse_balloon(b)?);
        }
        if let Some(t) = self.timeout {
            c.timeout = Some(t);
        }
        if program {
            super::process::configure(&mut c, &self.process, &self.args, terminal)?;
        }
        Ok(c)
    }
}

/// `ember run`.
pub fn run(args: RunArgs) -> Result<u8, Failure> {
    // KVM's CPUID read (0.3-0.5 ms on a PVM host) starts first, beside the checks below, on
    // another CPU; without it the build starts it later itself.
    let cpuid = if args.print_config {
        None
    } else {
        CpuidRead::start(Placement::away_from_here().as_ref()).ok()
    };
    let timeline = Arc::new(Timeline::new());
    let timings = args
        .timings
        .as_deref()
        .map(TimingsOutput::parse)
        .transpose()?;
    // Looked up now: once the VM runs, this thread's seccomp filter forbids the netlink
    // socket and /proc files the lookup uses.
    let started = timings.is_some().then(process_start::lookup);

    // A program gets a terminal when ember has one both ways, as `docker run -it` would.
    // SAFETY: isatty has no preconditions.
    let terminal = terminal::stdin_is_tty() && unsafe { libc::isatty(libc::STDOUT_FILENO) } == 1;
    let seccomp = if args.no_seccomp {
        Seccomp::Off
    } else {
        Seccomp::AllThreads
    };
    // Bound first: a path that cannot be is bad input before anything starts.
    let api = args
        .api_sock
        .as_deref()
        .map(super::api::ApiSocket::bind)
        .transpose()?;
    if let Some(dir) = &args.restore {
        let mut loaded = snapshot::load(dir).map_err(|e| Failure {
            code: exit_code::BAD_INPUT,
            message: format!("--restore: {e}"),
        })?;
        reattach(&mut loaded, dir, &args.reattach)?;
        timeline.mark(Phase::ConfigParsed);
        let tail = ConsoleTail::new(false);
        let runtime = Runtime {
            console_out: Box::new(FdWriter::stdout()),
            console_in: Some(libc::STDIN_FILENO),
            console_in_is_tty: terminal::stdin_is_tty(),
            timeline: timeline.clone(),
            measure_guest_memory: timings.is_some(),
            seccomp,
            teardown: args.teardown,
            cpuid,
            process_io: None,
            snapshot_on_ready: None,
            snapshots_on_request: api.is_some(),
            stop_signals: ember::signals::STOP_SIGNALS.to_vec(),
        };
        let facts = exit_code::RunFacts::restored(loaded.vm.exec.clone());
        let mut vmm = Vmm::restore(loaded, runtime).map_err(|e| {
            let mut f = Failure::from(e);
            f.message = format!("--restore {}: {}", dir.display(), f.message);
            f
        })?;
        vmm.set_timeout(args.timeout.filter(|t| !t.is_zero()));
        let _api = api.map(|a| a.serve(vmm.handle(), seccomp)).transpose()?;
        return finish(
            vmm,
            false,
            true,
            &tail,
            &facts,
            HostFlavour::detect(),
            Finish {
                timeline,
                timings,
                started,
            },
        );
    }
    let config = args.to_config(terminal)?;
    let flavour = HostFlavour::detect();
    let vm = resolve::resolve(&config, flavour)?;
    if args.print_config {
        let mut shown = config.clone();
        shown.boot_source.kernel_image_path = Some(config.kernel()?);
        shown.boot_source.boot_args = Some(vm.cmdline_text());
        shown.timeout = vm.timeout;
        shown.drives = config.drives_in_guest_order();
        let text = serde_json::to_string_pretty(&shown).unwrap_or_default();
        let _ = writeln!(std::io::stdout(), "{text}");
        return Ok(0);
    }
    timeline.mark(Phase::ConfigParsed);
    if args.snapshot_on_ready.is_some() {
        let unheld = vm.devices.iter().find(|d| {
            matches!(
                d.spec,
                DeviceSpec::Fs { .. } | DeviceSpec::Vsock { channel: true, .. }
            )
        });
        if let Some(device) = unheld {
            let what = if config.process.is_some() {
                "a program run (`-- PROG`) shares the host's files over virtio-fs and talks to its init over vsock".to_string()
            } else {
                format!("this VM shares a host directory ({})", device.input)
            };
            return Err(Failure {
                code: exit_code::BAD_INPUT,
                message: format!(
                    "--snapshot-on-ready: {what}, which snapshots do not hold yet: run a static program from an initramfs with --exec instead"
                ),
            });
        }
    }
    if vm.linux_on_pvm {
        // One line, whatever the log level: the user must know why Linux crawls here.
        super::stderr::write(
            b"ember: warning: /dev/kvm is PVM-based (no VMX/SVM): a Linux guest boots 100-1000x slower than on \
             hardware KVM, stops where the host cannot emulate it, and its userspace does not run (docs/hosts.md)\r\n",
        );
    }

    // A program's run keeps the kernel's console aside: the program's output is stdout's.
    let program = config.process.is_some();
    let tail = ConsoleTail::new(args.process.verbose);
    let console_out: Box<dyn Write + Send> = if program {
        Box::new(tail.clone())
    } else {
        Box::new(FdWriter::stdout())
    };
    let mut made_dir = false;
    let snapshot_on_ready = match &args.snapshot_on_ready {
        Some(dir) => {
            let files = SnapshotFiles::create(dir).map_err(|e| Failure {
                code: exit_code::BAD_INPUT,
                message: format!("--snapshot-on-ready: {e}"),
            })?;
            made_dir = files.made_dir;
            Some(SnapshotOnReady {
                files,
                continue_after: args.continue_after_snapshot,
            })
        }
        None => None,
    };
    let runtime = Runtime {
        console_out,
        console_in: Some(libc::STDIN_FILENO),
        console_in_is_tty: terminal::stdin_is_tty(),
        timeline: timeline.clone(),
        measure_guest_memory: timings.is_some(),
        seccomp,
        teardown: args.teardown,
        cpuid,
        process_io: program.then(|| super::process::io(terminal)),
        snapshot_on_ready,
        snapshots_on_request: api.is_some(),
        stop_signals: ember::signals::STOP_SIGNALS.to_vec(),
    };
    // The exit code needs these after the build has taken the resolved VM.
    let facts = exit_code::RunFacts::of(&vm);
    let vmm = Vmm::build(vm, runtime)?;
    let handle = vmm.handle();
    let _api = api.map(|a| a.serve(vmm.handle(), seccomp)).transpose()?;
    let code = finish(
        vmm,
        program,
        terminal,
        &tail,
        &facts,
        flavour,
        Finish {
            timeline,
            timings,
            started,
        },
    );
    let Some(dir) = &args.snapshot_on_ready else {
        return code;
    };
    if handle.snapshot_written() {
        if code.is_ok() && !args.continue_after_snapshot {
            super::stderr::write(
                format!(
                    "ember: snapshot written to {0}; continue it with: ember run --restore {0}\n",
                    dir.display()
                )
                .as_bytes(),
            );
        }
        return code;
    }
    // No snapshot: nothing of one is left behind (the VMM thread's filter allows unlink, and
    // rmdir for this).
    let _ = std::fs::remove_file(dir.join(snapshot::STATE_FILE));
    let _ = std::fs::remove_file(dir.join(snapshot::MEMORY_FILE));
    if made_dir {
        let _ = std::fs::remove_dir(dir);
    }
    match code {
        Ok(0) => Err(Failure {
            code: exit_code::NOT_READY,
            message: format!(
                "--snapshot-on-ready {}: the guest stopped before it said ready (the byte 124 on I/O port 0x3f0); no snapshot was written",
                dir.display()
            ),
        }),
        other => other,
    }
}

/// What [`finish`] reports with.
struct Finish {
    timeline: Arc<Timeline>,
    timings: Option<TimingsOutput>,
    started: Option<Option<process_start::ProcessStart>>,
}

/// Runs a built or restored VM to its end and makes the exit code: warnings for what the
/// guest's logging and the console dropped, the program's status or the outcome's code, and
/// the `--timings` report.
fn finish(
    vmm: Vmm,
    program: bool,
    terminal: bool,
    tail: &ConsoleTail,
    facts: &exit_code::RunFacts,
    flavour: HostFlavour,
    report_with: Finish,
) -> Result<u8, Failure> {
    let Finish {
        timeline,
        timings,
        started,
    } = report_with;
    // Raw mode for the console, or for a program on a terminal; a program without one
    // reads plain input, which the terminal edits and echoes as for any local program.
    if !program || terminal {
        terminal::enter_raw_mode();
    }
    let run = vmm.run();
    terminal::restore();
    let run = run?;
    timeline.mark(Phase::VmTornDown);
    let mut suppressed = run.suppressed_messages.clone();
    suppressed.extend(super::logger::LOGGER.suppressed());
    for (source, count) in &suppressed {
        super::stderr::write(
            format!(
                "ember: warning: {source}: {count} more messages were not logged (each source the guest drives logs only its first few)\n"
            )
            .as_bytes(),
        );
    }
    if let (n @ 1.., reason) = &run.console_dropped {
        super::stderr::write(
            format!(
                "ember: warning: {n} bytes of the guest's console output were dropped: stdout could not take them ({})\n",
                reason.as_deref().unwrap_or("unknown error")
            )
            .as_bytes(),
        );
    }
    let _ = std::io::stdout().flush();
    let code = match (&run.command, &run.outcome, &facts.program) {
        (Some(result), ember::exit::VmOutcome::Stopped { .. }, Some(p)) => {
            super::process::exit_for(result, run.init_failure.as_ref(), p, tail)
        }
        _ => exit_code::for_outcome(&run.outcome, facts, flavour),
    };
    if let (Some(out), Some(started)) = (timings, started) {
        timeline.mark(Phase::ProcessExit);
        let (cpu, peak_rss) = report::own_usage();
        let r = Report::new(&timeline, started, cpu, peak_rss, run.guest_touched_bytes)
            .with_teardown_deferred(run.teardown_deferred)
            .with_dropped(run.console_dropped.0, &suppressed)
            .with_shares_setup(
                (!run.share_setup.is_zero()).then_some(run.share_setup.as_nanos() as u64),
            );
        out.write(&r)?;
    }
    code
}

/// Where `--timings` goes.
enum TimingsOutput {
    /// A table on stderr.
    Table,
    /// JSON on stderr.
    JsonStderr,
    /// JSON into a file, created before the VM starts so a bad path fails early.
    JsonFile(PathBuf, File),
}

impl TimingsOutput {
    fn parse(value: &str) -> Result<Self, Failure> {
        Ok(match value {
            "table" => TimingsOutput::Table,
            "json" => TimingsOutput::JsonStderr,
            path => {
                let path = PathBuf::from(path);
                let file = File::create(&path).map_err(|e| Failure {
                    code: exit_code::BAD_INPUT,
                    message: format!(
                        "--timings={}: cannot create it ({e}): pass a writable file path, `json` or `table`",
                        path.display()
                    ),
                })?;
                TimingsOutput::JsonFile(path, file)
            }
        })
    }

    fn write(self, r: &Report) -> Result<(), Failure> {
        match self {
            // A closed stderr loses the report; it must not panic.
            TimingsOutput::Table => super::stderr::write(r.table().as_bytes()),
            TimingsOutput::JsonStderr => super::stderr::write(format!("{}\n", r.json()).as_bytes()),
            TimingsOutput::JsonFile(path, mut file) => {
                file.write_all(r.json().as_bytes())
                    .and_then(|_| file.write_all(b"\n"))
                    .map_err(|e| Failure {
                        code: exit_code::HOST_ERROR,
                        message: format!("--timings={}: cannot write it: {e}", path.display()),
                    })?;
            }
        }
        Ok(())
    }
}
