//! The `ember` command: clap → VmConfig → Vmm → exit code.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};

use ember::arch::x86_64::boot;
use ember::bench::{BenchConfig, BenchError};
use ember::config::{self, ConfigError, InitrdChoice, VmConfig};
use ember::devices::serial::FdWriter;
use ember::exit::ExitReason;
use ember::kvm::{HostFlavour, KvmError};
use ember::seccomp::Seccomp;
use ember::timing::report::{self, Report};
use ember::timing::{Phase, Timeline, process_start};
use ember::vmm::{InitrdImage, VmOutcome, VmSpec, Vmm, VmmError};
use ember::{initramfs, terminal};

/// Process exit codes. docs and README list them; tests assert them.
mod code {
    /// ember failed on the host side (an ioctl, memory, a thread).
    pub const HOST_ERROR: u8 = 1;
    /// Bad input: usage, configuration, a kernel or initrd that cannot be loaded.
    pub const BAD_INPUT: u8 = 2;
    /// /dev/kvm missing, not permitted or lacking a capability.
    pub const NO_KVM: u8 = 3;
    /// The guest kernel panicked.
    pub const GUEST_PANIC: u8 = 4;
    /// KVM_EXIT_INTERNAL_ERROR: the host could not run a guest instruction.
    pub const INTERNAL_ERROR: u8 = 5;
    /// Another vCPU exit ember cannot continue from.
    pub const VCPU_FAILED: u8 = 6;
    /// ember itself panicked (a bug).
    pub const EMBER_PANIC: u8 = 7;
    /// `--exec`: the guest stopped without reporting the program's status.
    pub const NO_STATUS: u8 = 8;
    /// A vCPU triple-faulted: the guest crashed (its reboots go through the i8042 instead).
    pub const TRIPLE_FAULT: u8 = 9;
    /// `--timeout` expired with the guest still running.
    pub const TIMEOUT: u8 = 10;
    /// Stopped by a signal: 128 + the signal number (130 SIGINT, 143 SIGTERM); the console
    /// escape Ctrl-A x counts as SIGINT.
    pub const SIGNAL_BASE: u8 = 128;
}

#[derive(Parser)]
#[command(
    name = "ember",
    version,
    about = "A lean KVM micro-VM monitor: boots Linux guests in milliseconds"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a guest and attach its serial console to this terminal.
    Run(RunArgs),
    /// Describe this host's KVM: API version, capabilities, vCPU limit, hardware or PVM.
    Host,
    /// Measure ember's startup against container runtimes and peer VMMs on this host.
    Bench(BenchArgs),
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Counted runs per subject.
    #[arg(long, value_name = "N", default_value_t = 20)]
    runs: usize,
    /// Runs dropped at the start of each block (warm-up).
    #[arg(long, value_name = "W", default_value_t = 1)]
    warmup: usize,
    /// Baselines, comma-separated: process, namespaces, crun, runc, podman, docker, qemu.
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "process,namespaces,crun,runc,podman,docker,qemu"
    )]
    baselines: Vec<String>,
    /// A peer VMM to add: NAME='COMMAND {kernel} {initrd}' (run with sh -c); repeatable.
    #[arg(long = "peer", value_name = "NAME=CMD")]
    peers: Vec<String>,
    /// Where results.json, results.csv and plot.svg go.
    #[arg(long, value_name = "DIR", default_value = "ember-bench")]
    out: PathBuf,
    /// Options for `ember run` (after `--`); default: the guest suited to this host.
    #[arg(last = true, value_name = "RUN-OPTIONS")]
    run_args: Vec<String>,
}

#[derive(clap::Args)]
struct RunArgs {
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
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = config::DEFAULT_VCPUS)]
    vcpus: u32,
    /// Allow more vCPUs than the CPUs this host gives ember (they then share CPUs).
    #[arg(long)]
    overcommit_vcpus: bool,
    /// Guest memory in MiB.
    #[arg(long, value_name = "M", default_value_t = config::DEFAULT_MEM_MIB)]
    mem_mib: u64,
    /// Log level on stderr: off, error, warn, info, debug, trace.
    #[arg(long, value_name = "LEVEL", default_value = "warn", value_parser = parse_level)]
    log_level: log::LevelFilter,
    /// Report the startup timeline after the guest stops: a table on stderr (`--timings`),
    /// JSON on stderr (`--timings=json`) or JSON into a file (`--timings=FILE`).
    #[arg(long, value_name = "json|FILE", num_args = 0..=1, require_equals = true, default_missing_value = "table")]
    timings: Option<String>,
    /// Stop the guest if it is still running after this long (90, 90s, 500ms, 5m, 1h; 0: never).
    /// Default: none, except for a Linux guest on a PVM-based /dev/kvm (see `ember host`).
    #[arg(long, value_name = "DURATION", value_parser = config::parse_duration)]
    timeout: Option<std::time::Duration>,
    /// Run without seccomp filters (vCPU threads and the VMM thread). Unsafe: it leaves the
    /// threads that handle guest-controlled input unconfined; for debugging ember only.
    #[arg(long)]
    no_seccomp: bool,
    /// Arguments for the --exec program.
    #[arg(last = true, value_name = "ARGS")]
    args: Vec<String>,
}

fn parse_level(s: &str) -> Result<log::LevelFilter, String> {
    s.parse()
        .map_err(|_| format!("unknown log level {s:?}: use off, error, warn, info, debug or trace"))
}

/// One-line stderr logger.
struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            let level = r.level().as_str().to_ascii_lowercase();
            // In raw mode a bare \n does not return the carriage.
            let _ = write!(std::io::stderr(), "ember: {level}: {}\r\n", r.args());
        }
    }
    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

/// An error on its way to becoming a message and an exit code.
struct Failure {
    code: u8,
    message: String,
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure {
            code: code::BAD_INPUT,
            message: e.to_string(),
        }
    }
}

impl From<VmmError> for Failure {
    fn from(e: VmmError) -> Self {
        let code = match &e {
            VmmError::Kvm(
                KvmError::NoDevice
                | KvmError::NoPermission
                | KvmError::MissingCap(..)
                | KvmError::ApiVersion(_)
                | KvmError::Open(_),
            ) => code::NO_KVM,
            VmmError::Boot(_)
            | VmmError::TooManyVcpus { .. }
            | VmmError::Mptable(_)
            | VmmError::Memory(ember::memory::MemoryError::Map { .. }) => code::BAD_INPUT,
            _ => code::HOST_ERROR,
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

fn main() -> ExitCode {
    std::panic::set_hook(Box::new(|info| {
        // One report and one exit, however many threads panic at once: the later ones wait
        // here for the process to end.
        static PANICKED: AtomicBool = AtomicBool::new(false);
        if PANICKED.swap(true, Ordering::SeqCst) {
            loop {
                std::thread::park();
            }
        }
        terminal::restore();
        // One line: a panic's message names its location on a line of its own.
        let info = config::one_line(&info.to_string());
        // Not eprintln: a closed stderr must not panic inside the panic hook.
        let _ = writeln!(
            std::io::stderr(),
            "ember: internal error (a bug, please report it): {info}"
        );
        std::process::exit(i32::from(code::EMBER_PANIC));
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line, like every other ember error: clap's first line names the flag and
            // the value; its usage block would only push that off the screen.
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or_default();
            let first = first.strip_prefix("error: ").unwrap_or(first);
            let _ = writeln!(
                std::io::stderr(),
                "ember: {}; see ember --help",
                config::one_line(first)
            );
            return ExitCode::from(code::BAD_INPUT);
        }
    };
    let result = match cli.command {
        Command::Host => host(),
        Command::Bench(args) => bench(args),
        Command::Run(args) => run(args),
    };
    terminal::restore();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            // One line, whatever a path or an OS error carried.
            let _ = writeln!(std::io::stderr(), "ember: {}", config::one_line(&f.message));
            ExitCode::from(f.code)
        }
    }
}

fn bench(args: BenchArgs) -> Result<u8, Failure> {
    let cfg = BenchConfig {
        runs: args.runs,
        warmup: args.warmup,
        baselines: args.baselines,
        peers: args.peers,
        out: args.out,
        run_args: args.run_args,
    };
    let results = ember::bench::run(&cfg).map_err(|e| Failure {
        code: match e {
            BenchError::Ember(_) | BenchError::Exe(_) => code::HOST_ERROR,
            _ => code::BAD_INPUT,
        },
        message: e.to_string(),
    })?;
    // A closed stdout (`| head`) loses output; it must not panic.
    let mut out = std::io::stdout();
    let _ = write!(out, "{}", results.table()).and_then(|_| {
        writeln!(
            out,
            "results: {}/results.json, results.csv, plot.svg",
            cfg.out.display()
        )
    });
    Ok(0)
}

fn host() -> Result<u8, Failure> {
    let report = ember::kvm::host_report().map_err(|e| Failure {
        code: code::NO_KVM,
        message: e.to_string(),
    })?;
    let _ = write!(std::io::stdout(), "{report}");
    Ok(0)
}

fn run(args: RunArgs) -> Result<u8, Failure> {
    let timeline = Arc::new(Timeline::new());
    log::set_logger(&LOGGER).ok();
    log::set_max_level(args.log_level);
    let timings = args
        .timings
        .as_deref()
        .map(TimingsOutput::parse)
        .transpose()?;
    // Looked up now: once the VM runs, this thread's seccomp filter forbids the netlink
    // socket and /proc files the lookup uses.
    let started = timings.is_some().then(process_start::lookup);

    let explicit_kernel = args.kernel.is_some();
    let kernel = args.kernel.unwrap_or_else(config::default_kernel);
    if !explicit_kernel && !kernel.exists() {
        return Err(ConfigError::NoDefaultKernel(kernel).into());
    }
    let exec = args.exec.clone();
    let initrd = match (args.initrd, args.exec, args.no_initrd) {
        (Some(p), _, _) => InitrdChoice::File(p),
        (None, Some(program), _) => InitrdChoice::Exec {
            program,
            args: args.args.clone(),
        },
        (None, None, true) => InitrdChoice::None,
        (None, None, false) => InitrdChoice::BuiltIn,
    };
    if !args.args.is_empty() && exec.is_none() {
        return Err(Failure {
            code: code::BAD_INPUT,
            message: "arguments after `--` go to the --exec program, but no --exec was given: add --exec PROG".into(),
        });
    }
    let flavour = HostFlavour::detect();
    let linux_on_pvm = flavour == HostFlavour::Pvm
        && File::open(&kernel)
            .map(|mut f| boot::looks_like_linux(&mut f))
            .unwrap_or(false);
    let cmdline = match args.cmdline {
        Some(c) => c,
        None if linux_on_pvm => {
            format!("{} {}", config::DEFAULT_CMDLINE, config::PVM_CMDLINE_EXTRA)
        }
        None => config::DEFAULT_CMDLINE.to_string(),
    };
    let cfg = VmConfig {
        kernel,
        initrd,
        cmdline,
        vcpus: args.vcpus,
        mem_mib: args.mem_mib,
        overcommit_vcpus: args.overcommit_vcpus,
    };
    cfg.validate()?;
    // A Linux guest on a PVM host cannot finish (its userspace never runs): bound the run.
    let timeout = match args.timeout {
        Some(t) => (!t.is_zero()).then_some(t),
        None if linux_on_pvm => Some(config::PVM_LINUX_TIMEOUT),
        None => None,
    };
    let initrd = build_initrd(&cfg)?;
    timeline.mark(Phase::ConfigParsed);
    if linux_on_pvm {
        // One line, whatever the log level: the user must know why Linux crawls here.
        let _ = write!(
            std::io::stderr(),
            "ember: warning: /dev/kvm is PVM-based (no VMX/SVM): a Linux guest boots 100-1000x slower than on \
             hardware KVM, stops where the host cannot emulate it, and its userspace does not run (docs/hosts.md)\r\n"
        );
    }

    let is_tty = terminal::stdin_is_tty();
    let spec = VmSpec {
        kernel: cfg.kernel.display().to_string(),
        initrd,
        cmdline: cfg.cmdline.clone(),
        vcpus: cfg.vcpus,
        mem_size: cfg.mem_mib << 20,
        console_out: Box::new(FdWriter::stdout()),
        console_in: Some(libc::STDIN_FILENO),
        console_in_is_tty: is_tty,
        timeline: timeline.clone(),
        measure_guest_memory: timings.is_some(),
        timeout,
        seccomp: if args.no_seccomp {
            Seccomp::Off
        } else {
            Seccomp::AllThreads
        },
    };
    let vmm = Vmm::build(spec)?;
    terminal::enter_raw_mode();
    let run = vmm.run();
    terminal::restore();
    let run = run?;
    timeline.mark(Phase::VmTornDown);
    let _ = std::io::stdout().flush();
    let code = exit_code(&run.outcome, &cfg, flavour, args.timeout.is_none());
    if let (Some(out), Some(started)) = (timings, started) {
        timeline.mark(Phase::ProcessExit);
        let (cpu, peak_rss) = report::own_usage();
        let r = Report::new(&timeline, started, cpu, peak_rss, run.guest_touched_bytes);
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
                    code: code::BAD_INPUT,
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
            TimingsOutput::Table => {
                let _ = write!(std::io::stderr(), "{}", r.table());
            }
            TimingsOutput::JsonStderr => {
                let _ = writeln!(std::io::stderr(), "{}", r.json());
            }
            TimingsOutput::JsonFile(path, mut file) => {
                file.write_all(r.json().as_bytes())
                    .and_then(|_| file.write_all(b"\n"))
                    .map_err(|e| Failure {
                        code: code::HOST_ERROR,
                        message: format!("--timings={}: cannot write it: {e}", path.display()),
                    })?;
            }
        }
        Ok(())
    }
}

fn build_initrd(cfg: &VmConfig) -> Result<Option<InitrdImage>, Failure> {
    let read = |what: &'static str, p: &PathBuf| {
        std::fs::read(p).map_err(|e| {
            Failure::from(ConfigError::File {
                what,
                path: p.clone(),
                reason: format!("cannot read it ({e})"),
            })
        })
    };
    Ok(match &cfg.initrd {
        InitrdChoice::None => None,
        InitrdChoice::BuiltIn => Some(InitrdImage {
            name: "built-in initramfs".into(),
            bytes: initramfs::build(ember::GUEST_INIT, None),
        }),
        InitrdChoice::File(p) => Some(InitrdImage {
            name: p.display().to_string(),
            bytes: read("initrd", p)?,
        }),
        InitrdChoice::Exec { program, args } => {
            let bytes = read("--exec program", program)?;
            let argv0 = program
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "exec".into());
            let mut argv = vec![argv0];
            argv.extend(args.iter().cloned());
            Some(InitrdImage {
                name: format!("initramfs for {}", program.display()),
                bytes: initramfs::build(ember::GUEST_INIT, Some((&bytes, &argv))),
            })
        }
    })
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

fn exit_code(
    outcome: &VmOutcome,
    cfg: &VmConfig,
    flavour: HostFlavour,
    default_timeout: bool,
) -> Result<u8, Failure> {
    let fail = |code, message: String| Err(Failure { code, message });
    match outcome {
        VmOutcome::Stopped { status, .. } => match (&cfg.initrd, status) {
            (InitrdChoice::Exec { .. }, Some(s)) => Ok(*s),
            (InitrdChoice::Exec { program, .. }, None) => fail(
                code::NO_STATUS,
                format!(
                    "the guest stopped before {} reported its exit status (see the console output above)",
                    program.display()
                ),
            ),
            _ => Ok(0),
        },
        VmOutcome::GuestPanic(msg) => fail(code::GUEST_PANIC, format!("guest kernel panic: {msg}")),
        VmOutcome::TripleFault { cpu, rip } => {
            let at = rip.map(|r| format!(" at rip {r:#x}")).unwrap_or_default();
            fail(
                code::TRIPLE_FAULT,
                format!(
                    "vCPU {cpu} triple-faulted{at}: the guest crashed (a fault while handling a fault); the console output above may say why"
                ),
            )
        }
        VmOutcome::Failed(ExitReason::InternalError { cpu, suberror, rip }) => {
            let at = rip.map(|r| format!(" at rip {r:#x}")).unwrap_or_default();
            let hint = if flavour == HostFlavour::Pvm {
                "; this PVM-based /dev/kvm cannot emulate that instruction (see docs/hosts.md)"
            } else {
                ""
            };
            fail(
                code::INTERNAL_ERROR,
                format!(
                    "vCPU {cpu} stopped: KVM could not run a guest instruction (KVM_EXIT_INTERNAL_ERROR, suberror {suberror}){at}{hint}"
                ),
            )
        }
        VmOutcome::Failed(ExitReason::VcpuFailed { cpu, what }) => {
            fail(code::VCPU_FAILED, format!("vCPU {cpu} stopped: {what}"))
        }
        VmOutcome::Failed(other) => fail(code::VCPU_FAILED, format!("the VM failed: {other:?}")),
        VmOutcome::Interrupted(ExitReason::Signal(sig)) => fail(
            code::SIGNAL_BASE + *sig as u8,
            format!("stopped by {}; the VM was shut down", signal_name(*sig)),
        ),
        VmOutcome::Interrupted(ExitReason::Timeout(after)) => {
            let why = if default_timeout {
                " (the default for a Linux guest on a PVM-based /dev/kvm, where its userspace \
                 cannot run: docs/hosts.md; --timeout 0 waits forever)"
            } else {
                ""
            };
            fail(
                code::TIMEOUT,
                format!(
                    "the guest was still running after {} (--timeout{why}); the VM was shut down",
                    config::show_duration(*after)
                ),
            )
        }
        VmOutcome::Interrupted(_) => fail(
            code::SIGNAL_BASE + libc::SIGINT as u8,
            "stopped from the console (Ctrl-A x)".into(),
        ),
    }
}
