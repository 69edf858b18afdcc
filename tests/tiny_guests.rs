//! Every VMM mechanism, proven by a tiny guest from tests/guests booting on /dev/kvm. They run
//! in microseconds on any KVM, PVM-based included, so none of these is ever skipped.

mod common;

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use common::*;

#[test]
fn boots_64bit_linux_boot_protocol_and_resets_through_i8042() {
    let o = run_guest("hello64", &["--log-level", "info"]);
    assert!(o.stdout.contains("hello from 64-bit long mode"), "{o:?}");
    assert!(o.stdout.contains("boot_params ok"), "{o:?}");
    assert_eq!(o.code, Some(0), "{o:?}");
    // The boot-timer port write was seen.
    assert!(o.stderr.contains("userspace reached"), "{o:?}");
}

#[test]
fn device_interrupts_reach_the_guest_through_embers_ioapic() {
    // COM1's pin, programmed by the guest in ember's IOAPIC, becomes an MSI route in KVM: the
    // UART's irqfd interrupts the vCPU, edge-triggered and then level-triggered (whose EOI
    // comes back to ember as KVM_EXIT_IOAPIC_EOI and must not stop the VM).
    // A route that never arrives leaves the guest halted: the timeout makes that a failure.
    let o = run_guest("irq", &["--log-level", "debug", "--timeout", "20s"]);
    assert!(
        o.stdout.contains("ioapic version 0x0000000000170020"),
        "{o:?}"
    );
    assert!(
        o.stdout.contains(
            "edge-triggered interrupt on vector 0x31\nlevel-triggered interrupt on vector 0x31\n"
        ),
        "{o:?}"
    );
    assert!(
        o.stderr
            .contains("vCPU 0: EOI of level-triggered vector 0x31"),
        "{o:?}"
    );
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(
        o.stderr.lines().all(|l| l.starts_with("ember: debug:")),
        "{o:?}"
    );
}

#[test]
fn boots_32bit_pvh_entry_with_mmio_boot_timer() {
    let o = run_guest("hello_pvh", &["--log-level", "info"]);
    assert!(o.stdout.contains("hello from 32-bit PVH entry"), "{o:?}");
    assert!(o.stdout.contains("start_info ok"), "{o:?}");
    // The reset is the guest's last instruction: the code after it must never run.
    assert!(
        !o.stdout.contains("BAD"),
        "the vCPU ran on past the reset: {o:?}"
    );
    assert_eq!(o.code, Some(0), "{o:?}");
    // Firecracker's MMIO boot timer at 0xc0000000 was seen.
    assert!(o.stderr.contains("userspace reached"), "{o:?}");
}

#[test]
fn serial_input_reaches_the_guest_from_a_pipe() {
    let mut child = spawn_piped(&[
        "run",
        "--kernel",
        guest("echo").to_str().unwrap(),
        "--no-initrd",
    ]);
    let mut stdin = child.stdin.take().unwrap();
    // More than the 64-byte FIFO, so the input path must pause and resume.
    // Anything but 'q', which ends the echo guest.
    let alphabet = b"abcdefghijklmnoprstuvwxyz0123456789";
    let line: String = (0..300)
        .map(|i| char::from(alphabet[i % alphabet.len()]))
        .collect();
    stdin.write_all(line.as_bytes()).unwrap();
    stdin.write_all(b"q").unwrap();
    drop(stdin);
    let o = wait(child, Duration::from_secs(60));
    assert!(o.stdout.contains("echo ready"), "{o:?}");
    assert!(o.stdout.contains(&line), "{o:?}");
    assert!(o.stdout.contains("echo done"), "{o:?}");
    assert_eq!(o.code, Some(0), "{o:?}");
}

#[test]
fn stdin_eof_does_not_stop_the_guest() {
    // /dev/null: EOF at once; the guest still runs to its own end.
    let o = run_guest("hello64", &[]);
    assert_eq!(o.code, Some(0), "{o:?}");
    // A pipe closed before the guest reads: same.
    let child = spawn_piped(&[
        "run",
        "--kernel",
        guest("hello64").to_str().unwrap(),
        "--no-initrd",
    ]);
    let o = wait(child, Duration::from_secs(60));
    assert!(o.stdout.contains("boot_params ok"), "{o:?}");
    assert_eq!(o.code, Some(0), "{o:?}");
}

#[test]
fn triple_fault_is_a_crash_with_its_own_exit_code() {
    // Never silent, never 0: ember's guests reboot through the i8042, so a triple fault is a
    // crash a script must be able to tell from a clean stop.
    let o = run_guest("triple", &[]);
    assert!(o.stdout.contains("triple fault next"), "{o:?}");
    assert_eq!(o.code, Some(9), "{o:?}");
    assert_eq!(o.stderr.lines().count(), 1, "{o:?}");
    assert!(
        o.stderr.contains("ember: vCPU 0 triple-faulted at rip 0x"),
        "{o:?}"
    );
}

/// The CPUID ember hands over stays consistent with the XCR0 KVM enforces: after the guest
/// enables AVX state, leaf 0xd reports the area that state needs.
#[test]
fn xsave_size_follows_xcr0() {
    let o = run_guest("xsave", &[]);
    assert_eq!(o.code, Some(0), "{o:?}");
    if o.stdout.contains("xsave: not offered") {
        skip("xsave_size_follows_xcr0", "this host's KVM offers no XSAVE");
        return;
    }
    assert!(o.stdout.contains("xsave consistent"), "{o:?}");
}

#[test]
fn timeout_stops_a_guest_that_never_ends() {
    let o = run_guest("spin", &["--timeout", "300ms"]);
    assert!(o.stdout.contains("spinning"), "{o:?}");
    assert_eq!(o.code, Some(10), "{o:?}");
    assert_eq!(
        o.stderr.trim(),
        "ember: the guest was still running after 300 ms (--timeout); the VM was shut down",
        "{o:?}"
    );
    // A guest that ends first is not affected; 0 turns the limit off.
    let o = run_guest("hello64", &["--timeout", "1h"]);
    assert_eq!(o.code, Some(0), "{o:?}");
    let o = run_guest("hello64", &["--timeout", "0"]);
    assert_eq!(o.code, Some(0), "{o:?}");
}

#[test]
fn halted_or_spinning_guest_stops_on_sigterm_and_sigint() {
    // `halt`: HLT with interrupts off; `spin`: a tight loop that never exits to ember.
    for (name, says) in [("halt", "halting"), ("spin", "spinning")] {
        for (sig, code) in [(libc::SIGTERM, 143), (libc::SIGINT, 130)] {
            let mut child = spawn_piped(&[
                "run",
                "--kernel",
                guest(name).to_str().unwrap(),
                "--no-initrd",
            ]);
            // Wait until the guest has said it halts or spins.
            let mut out = child.stdout.take().unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 64];
            while !String::from_utf8_lossy(&seen).contains(says) {
                let n = std::io::Read::read(&mut out, &mut buf).unwrap();
                assert!(n > 0, "{name}: ember ended before the guest got there");
                seen.extend_from_slice(&buf[..n]);
            }
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, sig) };
            let o = wait(child, Duration::from_secs(30));
            assert_eq!(o.code, Some(code), "{name}: {o:?}");
            assert!(o.stderr.contains("stopped by SIG"), "{name}: {o:?}");
            assert_eq!(o.stderr.lines().count(), 1, "{name}: one line: {o:?}");
        }
    }
}

#[test]
fn unknown_ports_and_mmio_are_survived() {
    let o = run_guest("ports", &[]);
    assert!(o.stdout.contains("ports swept"), "{o:?}");
    assert!(o.stdout.contains("unknown ports and MMIO ok"), "{o:?}");
    assert_eq!(o.code, Some(0), "{o:?}");
}

#[test]
fn smp_guest_wakes_every_vcpu() {
    for n in [1u32, 2, 4, 32] {
        // More vCPUs than this host's CPUs on purpose: they share them.
        let o = run_guest("smp", &["--vcpus", &n.to_string(), "--overcommit-vcpus"]);
        assert!(
            o.stdout.contains(&format!("cpus advertised {n}\n")),
            "{o:?}"
        );
        for id in 1..n {
            assert!(
                o.stdout.contains(&format!("cpu {id} up\n")),
                "vCPU {id} of {n}: {o:?}"
            );
        }
        assert!(o.stdout.contains(&format!("smp: all {n} cpus up")), "{o:?}");
        assert_eq!(o.code, Some(0), "{o:?}");
    }
}

#[test]
fn memory_above_4g_is_usable() {
    // 5 GiB crosses the MMIO gap: RAM resumes at 4 GiB and ends at 6 GiB.
    let o = run_guest("highmem", &["--mem-mib", "5120"]);
    assert!(
        o.stdout.contains("top of RAM at 0x0000000180000000"),
        "{o:?}"
    );
    assert!(o.stdout.contains("highmem: pattern ok"), "{o:?}");
    assert_eq!(o.code, Some(0), "{o:?}");
    let o = run_guest("highmem", &["--mem-mib", "64"]);
    assert!(
        o.stdout.contains("top of RAM at 0x0000000004000000"),
        "{o:?}"
    );
    assert!(o.stdout.contains("highmem: pattern ok"), "{o:?}");
}

#[test]
fn large_guest_memory_is_mapped_lazily() {
    // 8 GiB of guest memory must not cost 8 GiB of host memory: the max RSS stays small.
    let child = spawn_piped(&[
        "run",
        "--kernel",
        guest("highmem").to_str().unwrap(),
        "--no-initrd",
        "--mem-mib",
        "8192",
    ]);
    let o = wait(child, Duration::from_secs(60));
    assert!(o.stdout.contains("highmem: pattern ok"), "{o:?}");
    // SAFETY: rusage is plain data, filled by getrusage for our reaped children.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let max_rss_mib = usage.ru_maxrss / 1024;
    assert!(
        max_rss_mib < 512,
        "a child used {max_rss_mib} MiB of host memory"
    );
}

#[test]
fn a_guest_using_all_its_memory_costs_mem_mib_plus_the_overhead() {
    // docs/security.md promises ember's own overhead stays under 16 MiB.
    const OVERHEAD_BOUND: u64 = 16 << 20;
    for mem_mib in [64u64, 256] {
        let mem = mem_mib.to_string();
        let o = run_guest("fill", &["--mem-mib", &mem, "--timings=json"]);
        assert_eq!(o.code, Some(0), "{o:?}");
        assert!(o.stdout.contains("fill: pages touched"), "{o:?}");
        let json = &o.stderr[o.stderr.find('{').expect("timings JSON")..];
        let v: serde_json::Value = serde_json::from_str(json).expect("timings JSON");
        let touched = v["memory"]["guest_touched_bytes"].as_u64().unwrap();
        let peak = v["memory"]["peak_rss_bytes"].as_u64().unwrap();
        let size = mem_mib << 20;
        // The guest really used (almost) all of it: all but the few reserved pages.
        assert!(touched > size - (2 << 20), "touched {touched} of {size}");
        assert!(
            peak <= size + OVERHEAD_BOUND,
            "peak RSS {peak} for a {mem_mib} MiB guest"
        );
    }
}

#[test]
fn host_report_names_the_flavour() {
    let o = run(&["host"], Duration::from_secs(30));
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(o.stdout.contains("KVM API version: 12"), "{o:?}");
    assert!(o.stdout.contains("SplitIrqchip"), "{o:?}");
    let f = HostFlavour::detect();
    let word = match f {
        HostFlavour::Hardware(_) => "hardware-backed",
        HostFlavour::Pvm => "PVM-based",
        HostFlavour::Unknown => "unknown",
    };
    assert!(o.stdout.contains(word), "{o:?}");
}

#[test]
fn terminal_goes_raw_takes_the_escape_and_is_restored() {
    // A real terminal through script(1): in cooked mode "Ctrl-A x" would sit in the line
    // buffer and never reach ember, so the escape working proves raw mode; stty -g before and
    // after proves the terminal came back as it was.
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        skip(
            "terminal_goes_raw_takes_the_escape_and_is_restored",
            "script(1) from util-linux is not installed",
        );
        return;
    }
    let cmd = format!(
        "stty -g; {} run --kernel {} --no-initrd; echo rc=$?; stty -g",
        env!("CARGO_BIN_EXE_ember"),
        guest("halt").display()
    );
    let mut child = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        while let Ok(n) = std::io::Read::read(&mut out, &mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("halting") {
        let chunk = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the guest did not start");
        seen.extend_from_slice(&chunk);
    }
    stdin.write_all(b"\x01x").unwrap();
    stdin.flush().unwrap();
    // Read until script ends (the channel closes), or give up after a quiet minute.
    while let Ok(chunk) = rx.recv_timeout(Duration::from_secs(60)) {
        seen.extend_from_slice(&chunk);
    }
    if child.try_wait().ok().flatten().is_none() {
        let _ = child.kill();
    }
    let _ = child.wait();
    let text = String::from_utf8_lossy(&seen).replace('\r', "");
    assert!(text.contains("rc=130"), "{text}");
    assert!(
        text.contains("stopped from the console (Ctrl-A x)"),
        "{text}"
    );
    let settings: Vec<&str> = text
        .lines()
        .filter(|l| l.matches(':').count() > 10)
        .collect();
    assert_eq!(settings.len(), 2, "{text}");
    assert_eq!(settings[0], settings[1], "terminal not restored: {text}");
}
