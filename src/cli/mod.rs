//! The `ember` command's pieces: `run` (flags into a VM and an exit code), `host`, `bench`, and
//! how every failure becomes one line and an exit code.

pub mod api;
pub mod exit_code;
pub mod logger;
pub mod process;
pub mod run;
pub mod stderr;

use std::io::Write;
use std::path::PathBuf;

use ember::bench::{BenchConfig, BenchError};
use ember::config::ConfigError;
use ember::resolve::ResolveError;
use ember::vmm::{ErrorKind, VmmError};

/// An error on its way to becoming a message and an exit code.
pub struct Failure {
    /// The exit code.
    pub code: u8,
    /// The one-line message.
    pub message: String,
}

impl Failure {
    /// Bad input, with `e`'s message.
    pub fn bad_input(e: impl std::fmt::Display) -> Self {
        Failure {
            code: exit_code::BAD_INPUT,
            message: e.to_string(),
        }
    }
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        let code = match e {
            // As a shell says it.
            ConfigError::ProgramNotFound { .. } => exit_code::PROGRAM_NOT_FOUND,
            ConfigError::ProgramNotExecutable { .. } => exit_code::PROGRAM_NOT_EXECUTABLE,
            _ => exit_code::BAD_INPUT,
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

impl From<ResolveError> for Failure {
    fn from(e: ResolveError) -> Self {
        match e {
            ResolveError::Config(c) => c.into(),
            other => Failure::bad_input(other),
        }
    }
}

impl From<VmmError> for Failure {
    fn from(e: VmmError) -> Self {
        Failure {
            code: match e.kind() {
                ErrorKind::NoKvm => exit_code::NO_KVM,
                ErrorKind::BadInput => exit_code::BAD_INPUT,
                ErrorKind::Host => exit_code::HOST_ERROR,
            },
            message: e.to_string(),
        }
    }
}

/// `ember bench`'s flags.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Counted runs per subject.
    #[arg(long, value_name = "N", default_value_t = 20)]
    runs: usize,
    /// Runs dropped at the start of each block (warm-up).
    #[arg(long, value_name = "W", default_value_t = 1)]
    warmup: usize,
    /// Baselines, comma-separated: process, kvm-floor (examples/kvm_floor.rs: the least a VMM
    /// must do), namespaces, crun, runc, podman, docker, qemu.
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "process,kvm-floor,namespaces,crun,runc,podman,docker,qemu"
    )]
    baselines: Vec<String>,
    /// A peer VMM to add: NAME='COMMAND {kernel} {initrd}' (run with sh -c); repeatable.
    /// With --restore, {snapshot} is the benchmark snapshot's directory.
    #[arg(long = "peer", value_name = "NAME=CMD")]
    peers: Vec<String>,
    /// Also time restores: snapshot the guest once where it says ready, and add an "ember
    /// restore" subject continuing it, beside the cold boot (docs/snapshot.md).
    #[arg(long)]
    restore: bool,
    /// Measure density instead of time: N idle instances of each subject at once, for each N
    /// given (comma-separated): host memory, PSS and kernel memory each (docs/density.md).
    #[arg(long, value_name = "N,...", value_delimiter = ',')]
    density: Vec<usize>,
    /// With --density: Linux guests (the kernel named after `--`, or the default), 128 MiB,
    /// busybox sleeping as the idle program: booted plain, booted with --balloon, and
    /// restored from one snapshot; run it in the hardware tier.
    #[arg(long, requires = "density")]
    density_linux: bool,
    /// Where results.json, results.csv and plot.svg go.
    #[arg(long, value_name = "DIR", default_value = "ember-bench")]
    out: PathBuf,
    /// Options for `ember run` (after `--`); default: the guest suited to this host.
    #[arg(last = true, value_name = "RUN-OPTIONS")]
    run_args: Vec<String>,
}

/// `ember bench`.
pub fn bench(args: BenchArgs) -> Result<u8, Failure> {
    let cfg = BenchConfig {
        runs: args.runs,
        warmup: args.warmup,
        baselines: args.baselines,
        peers: args.peers,
        out: args.out,
        run_args: args.run_args,
        restore: args.restore,
        density_linux: args.density_linux,
    };
    let bench_failure = |e: BenchError| Failure {
        code: match e {
            BenchError::Ember(_) | BenchError::Exe(_) => exit_code::HOST_ERROR,
            _ => exit_code::BAD_INPUT,
        },
        message: e.to_string(),
    };
    if !args.density.is_empty() {
        let run = ember::bench::run_density(&cfg, &args.density).map_err(|e| match e {
            BenchError::NoRuns => Failure::bad_input("--density: give counts of 1 or more"),
            e => bench_failure(e),
        })?;
        let mut text = ember::bench::density::table(&run.results);
        for (name, why) in run.skipped {
            text.push_str(&format!("{name}: skipped: {why}\n"));
        }
        for note in run.notes {
            text.push_str(&format!("{note}\n"));
        }
        text.push_str(&format!(
            "results: {}/density.json, density.csv, density.svg\n",
            cfg.out.display()
        ));
        let _ = std::io::stdout().write_all(text.as_bytes());
        return Ok(0);
    }
    let results = ember::bench::run(&cfg).map_err(|e| Failure {
        code: match e {
            BenchError::Ember(_) | BenchError::Exe(_) => exit_code::HOST_ERROR,
            _ => exit_code::BAD_INPUT,
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

/// `ember host`.
pub fn host() -> Result<u8, Failure> {
    let report = ember::kvm::host_report().map_err(|e| Failure {
        code: exit_code::NO_KVM,
        message: e.to_string(),
    })?;
    let _ = write!(std::io::stdout(), "{report}");
    Ok(0)
}
