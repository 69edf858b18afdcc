//! Linux guests, as far as the host allows. On hardware KVM they boot to userspace and the
//! init reports back; on a PVM-based /dev/kvm they prove kernel loading, the boot protocols and
//! the console, and that whatever stops them ends ember cleanly. Each test prints its tier.

mod common;

use std::time::Duration;

use common::*;
use ember::config::DEFAULT_CMDLINE;

/// Exit codes (README "Exit codes").
const GUEST_PANIC: i32 = 4;
const INTERNAL_ERROR: i32 = 5;
const SIGTERM_EXIT: i32 = 143;

/// Linux on a PVM host is slow: minutes, not milliseconds.
const PVM_LIMIT: Duration = Duration::from_secs(20 * 60);

fn kernel_or_skip(test: &str, file: &str) -> Option<String> {
    match project_kernel(file) {
        Some(p) => Some(p.display().to_string()),
        None => {
            skip(test, &format!("{file} is not built: run kernels/build.sh"));
            None
        }
    }
}

/// On PVM without the PVM command-line template the kernel stops at its first XRSTOR, a few
/// seconds in: the banner and early log must be on the console and the stop must be clean.
fn assert_pvm_early_stop(o: &Outcome) {
    assert!(o.stdout.contains("Linux version 6.1"), "no banner: {o:?}");
    assert!(o.stdout.contains("Command line:"), "no early log: {o:?}");
    assert_eq!(o.code, Some(INTERNAL_ERROR), "{o:?}");
    let errors: Vec<&str> = o
        .stderr
        .lines()
        .filter(|l| !l.contains("warning:"))
        .collect();
    assert_eq!(errors.len(), 1, "{o:?}");
    assert!(errors[0].contains("KVM_EXIT_INTERNAL_ERROR"), "{o:?}");
    assert!(o.stderr.contains("warning: /dev/kvm is PVM-based"), "{o:?}");
}

fn assert_greeting(o: &Outcome, vcpus: u32) {
    let s = if vcpus == 1 { "" } else { "s" };
    assert!(
        o.stdout.contains("Hello from ember: Linux 6.1")
            && o.stdout.contains(&format!(", {vcpus} vCPU{s} online")),
        "{o:?}"
    );
    assert_eq!(o.code, Some(0), "{o:?}");
}

/// Boots the project kernel in `file` with the built-in initramfs: the greeting on hardware,
/// the banner and a clean early stop on PVM.
fn boot_project_kernel(test: &str, file: &str) {
    let Some(k) = kernel_or_skip(test, file) else {
        return;
    };
    match tier(test) {
        HostFlavour::Hardware(_) => {
            let o = run(&["run", "--kernel", &k], Duration::from_secs(120));
            assert_greeting(&o, 1);
        }
        _ => {
            let o = run(
                &["run", "--kernel", &k, "--cmdline", DEFAULT_CMDLINE],
                PVM_LIMIT,
            );
            assert_pvm_early_stop(&o);
        }
    }
}

#[test]
fn project_kernel_elf_pvh() {
    boot_project_kernel("project_kernel_elf_pvh", "vmlinux");
}

#[test]
fn project_kernel_bzimage() {
    boot_project_kernel("project_kernel_bzimage", "bzImage");
}

#[test]
fn project_kernel_as_far_as_the_host_allows() {
    let test = "project_kernel_as_far_as_the_host_allows";
    let Some(k) = kernel_or_skip(test, "vmlinux") else {
        return;
    };
    match tier(test) {
        HostFlavour::Hardware(_) => {
            // SMP and memory across the MMIO gap, seen from inside the guest.
            let o = run(
                &[
                    "run",
                    "--kernel",
                    &k,
                    "--vcpus",
                    "4",
                    "--overcommit-vcpus",
                    "--mem-mib",
                    "5120",
                ],
                Duration::from_secs(120),
            );
            assert_greeting(&o, 4);
        }
        _ => {
            // The default command line on PVM carries the PVM template: the kernel reaches
            // its init, whose first system call cannot reach the kernel here; init dies, the
            // kernel panics, ember says so.
            let o = run(&["run", "--kernel", &k], PVM_LIMIT);
            assert!(o.stdout.contains("Run /init as init process"), "{o:?}");
            assert_eq!(o.code, Some(GUEST_PANIC), "{o:?}");
            assert!(
                o.stderr
                    .contains("guest kernel panic: Attempted to kill init!"),
                "{o:?}"
            );
        }
    }
}

#[test]
fn exec_returns_the_program_status() {
    let test = "exec_returns_the_program_status";
    let Some(k) = kernel_or_skip(test, "vmlinux") else {
        return;
    };
    if !matches!(tier(test), HostFlavour::Hardware(_)) {
        skip(
            test,
            "Linux userspace does not run on a PVM-based /dev/kvm (the initramfs it packs is unit-tested)",
        );
        return;
    }
    let busybox = "/bin/busybox";
    if !std::path::Path::new(busybox).exists() {
        skip(
            test,
            "needs busybox-static (apt-get install busybox-static)",
        );
        return;
    }
    let o = run(
        &[
            "run",
            "--kernel",
            &k,
            "--exec",
            busybox,
            "--",
            "sh",
            "-c",
            "echo exec says hi; exit 42",
        ],
        Duration::from_secs(120),
    );
    assert!(o.stdout.contains("exec says hi"), "{o:?}");
    assert_eq!(o.code, Some(42), "{o:?}");
}

#[test]
fn debian_stock_kernel_bzimage() {
    let test = "debian_stock_kernel_bzimage";
    let Some(k) = debian_kernel() else {
        skip(
            test,
            "Debian's cloud kernel is not fetched: run kernels/fetch-debian-kernel.sh",
        );
        return;
    };
    let k = k.display().to_string();
    match tier(test) {
        HostFlavour::Hardware(_) => {
            let o = run(&["run", "--kernel", &k], Duration::from_secs(120));
            assert_greeting(&o, 1);
        }
        _ => {
            // It unpacks itself under emulation for minutes; once its banner and command line
            // are on the console the boot protocol has done its part: stop it, cleanly.
            let o = run_until_then_stop(
                &["run", "--kernel", &k, "--cmdline", DEFAULT_CMDLINE],
                "Command line:",
                PVM_LIMIT,
            );
            assert!(o.stdout.contains("Linux version 6.1"), "{o:?}");
            assert!(o.stdout.contains("Debian"), "{o:?}");
            assert_eq!(o.code, Some(SIGTERM_EXIT), "{o:?}");
        }
    }
}

#[test]
fn linux_startup_timeline() {
    let test = "linux_startup_timeline";
    let Some(k) = kernel_or_skip(test, "vmlinux") else {
        return;
    };
    let file =
        std::env::temp_dir().join(format!("ember-linux-timings-{}.json", std::process::id()));
    let arg = format!("--timings={}", file.display());
    let hardware = matches!(tier(test), HostFlavour::Hardware(_));
    let o = if hardware {
        run(&["run", "--kernel", &k, &arg], Duration::from_secs(120))
    } else {
        // The early stop (a few seconds): the kernel is alive on the console, then stops.
        run(
            &["run", "--kernel", &k, "--cmdline", DEFAULT_CMDLINE, &arg],
            PVM_LIMIT,
        )
    };
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let names: Vec<&str> = v["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    let mut want = vec!["first_kvm_run", "first_console_byte"];
    if hardware {
        assert_eq!(o.code, Some(0), "{o:?}");
        want.extend(["userspace_reached", "workload_end"]);
    } else {
        assert_eq!(o.code, Some(INTERNAL_ERROR), "{o:?}");
        assert!(!names.contains(&"userspace_reached"), "{names:?}");
    }
    want.extend(["shutdown_requested", "vm_torn_down", "process_exit"]);
    let positions: Vec<usize> = want
        .iter()
        .map(|w| {
            names
                .iter()
                .position(|n| n == w)
                .unwrap_or_else(|| panic!("{w} missing: {names:?}"))
        })
        .collect();
    assert!(positions.windows(2).all(|p| p[0] < p[1]), "{names:?}");
}
