//! The `ember` command: flags → VmConfig → resolved for this host → Vmm → exit code. The
//! pieces live in `cli/`; this file holds the command tree, the logger and the panic hook.

mod cli;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};

use cli::exit_code;
use ember::{config, terminal};

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
    Run(Box<cli::run::RunArgs>),
    /// Describe this host's KVM: API version, capabilities, vCPU limit, hardware or PVM.
    Host,
    /// Measure ember's startup against container runtimes and peer VMMs on this host.
    Bench(cli::BenchArgs),
}

fn main() -> ExitCode {
    cli::stderr::init();
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
        cli::stderr::write(
            format!("ember: internal error (a bug, please report it): {info}\n").as_bytes(),
        );
        cli::stderr::flush();
        std::process::exit(i32::from(exit_code::EMBER_PANIC));
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
            // A missing argument is named on the lines under the first: one line with them.
            let joined = match e.kind() {
                clap::error::ErrorKind::MissingRequiredArgument => text
                    .lines()
                    .take_while(|l| !l.trim().is_empty())
                    .map(str::trim)
                    .collect::<Vec<_>>()
                    .join(" "),
                _ => text.lines().next().unwrap_or_default().to_string(),
            };
            let first = joined.as_str();
            let first = first.strip_prefix("error: ").unwrap_or(first);
            let first = match e.kind() {
                // clap's message names no argument: say which one.
                clap::error::ErrorKind::InvalidUtf8 => not_utf8(std::env::args_os()),
                _ => config::one_line(first),
            };
            cli::stderr::write(format!("ember: {first}; see ember --help\n").as_bytes());
            cli::stderr::flush();
            return ExitCode::from(exit_code::BAD_INPUT);
        }
    };
    let result = match cli.command {
        Command::Host => cli::host(),
        Command::Bench(args) => cli::bench(args),
        Command::Run(args) => {
            log::set_logger(&cli::logger::LOGGER).ok();
            log::set_max_level(args.log_level);
            cli::run::run(*args)
        }
    };
    terminal::restore();
    let code = match result {
        Ok(code) => code,
        Err(f) => {
            // One line, whatever a path or an OS error carried.
            cli::stderr::write(format!("ember: {}\n", config::one_line(&f.message)).as_bytes());
            f.code
        }
    };
    cli::stderr::flush();
    ExitCode::from(code)
}

/// Names the first argument that is not UTF-8, and the flag it follows.
fn not_utf8(args: impl Iterator<Item = std::ffi::OsString>) -> String {
    let args: Vec<_> = args.collect();
    let Some(i) = args.iter().position(|a| a.to_str().is_none()) else {
        return "an argument is not valid UTF-8: pass text".into();
    };
    let shown = config::one_line(&args[i].to_string_lossy());
    let after = i
        .checked_sub(1)
        .and_then(|p| args[p].to_str())
        .filter(|p| p.starts_with('-'))
        .map(|p| format!(" (the value of {p})"))
        .unwrap_or_default();
    format!(
        "argument {i}{after} is not valid UTF-8 (here with the bad bytes replaced: {shown:?}): pass text"
    )
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;

    #[test]
    fn a_non_utf8_argument_is_named_with_its_flag() {
        let args = ["ember", "run", "--cmdline"]
            .map(OsString::from)
            .into_iter()
            .chain([OsString::from_vec(b"a\xffb".to_vec())]);
        let m = super::not_utf8(args);
        assert!(
            m.starts_with("argument 3 (the value of --cmdline) is not valid UTF-8"),
            "{m}"
        );
    }
}
