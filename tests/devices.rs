//! virtio-mmio devices on every host: a freestanding guest (tests/guests/virtio_blk.c) drives
//! virtio-blk itself, as a driver would, and checks what it reads, writes and is refused; its
//! hostile mode sends malformed chains the device must survive. The Linux guests' view of the
//! disk, the network and vsock is in tests/linux/devices.rs (hardware tier).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ember-devices-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// A disk image whose sector 0 starts with `label`.
fn image(name: &str, label: &str, size: u64) -> PathBuf {
    let p = scratch(name);
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(size).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, label.as_bytes(), 0).unwrap();
    p
}

#[test]
fn a_guest_driver_reads_writes_flushes_and_a_read_only_disk_refuses_writes() {
    let rw = image("rw.img", "EMBERDISK rw", 1 << 20);
    let ro = image("ro.img", "EMBERDISK ro", 64 << 10);
    let ro_before = std::fs::read(&ro).unwrap();
    let o = run(
        &[
            "run",
            "--kernel",
            guest("virtio_blk").to_str().unwrap(),
            "--no-initrd",
            "--disk",
            &format!("{},id=rw-disk", rw.display()),
            "--disk",
            &format!("{},ro,id=ro-disk", ro.display()),
        ],
        Duration::from_secs(120),
    );
    assert_eq!(o.code, Some(0), "{o:?}");
    for line in [
        "disk 0: at 0x00000000d0000000",
        "disk 0: capacity 2048 sectors, writable",
        "disk 0: sector 0 says EMBERDISK rw",
        "disk 0: id rw-disk",
        "disk 0: write status 0, flush status 0",
        "disk 1: at 0x00000000d0001000",
        "disk 1: capacity 128 sectors, read-only",
        "disk 1: id ro-disk",
        "disk 1: write status 1, flush status 0",
        "virtio-blk: all ok",
    ] {
        assert!(o.stdout.contains(line), "{line:?} missing: {o:?}");
    }
    // What the guest wrote and flushed is in the host file once ember is gone; the read-only
    // disk is untouched.
    let data = std::fs::read(&rw).unwrap();
    assert_eq!(&data[512..532], b"written by the guest");
    assert_eq!(std::fs::read(&ro).unwrap(), ro_before);
}

#[test]
fn malformed_requests_get_errors_not_a_crash_or_a_hang() {
    let rw = image("hostile.img", "EMBERDISK hostile", 1 << 20);
    let o = run(
        &[
            "run",
            "--kernel",
            guest("virtio_blk").to_str().unwrap(),
            "--no-initrd",
            "--disk",
            rw.to_str().unwrap(),
            "--cmdline",
            "hostile",
        ],
        Duration::from_secs(120),
    );
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(o.stdout.contains("hostile: loop -> used len 0"), "{o:?}");
    assert!(
        o.stdout.contains("hostile: outside memory -> used len 0"),
        "{o:?}"
    );
    assert!(o.stdout.contains("hostile: survived"), "{o:?}");
    // And the device still serves good requests afterwards.
    assert!(o.stdout.contains("virtio-blk: all ok"), "{o:?}");
    assert!(!o.stdout.contains("FAIL"), "{o:?}");
}

#[test]
fn a_config_file_boots_and_print_config_shows_the_command_line() {
    let rw = image("cfg.img", "EMBERDISK cfg", 1 << 20);
    let cfg = scratch("vm.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{
  "boot-source": {{"kernel_image_path": "{}", "no_initrd": true}},
  "machine-config": {{"vcpu_count": 1, "mem_size_mib": 64}},
  "drives": [{{"drive_id": "cfg-disk", "path_on_host": "{}", "is_root_device": false, "is_read_only": false}}]
}}"#,
            guest("virtio_blk").display(),
            rw.display()
        ),
    )
    .unwrap();
    let cfg_arg = cfg.to_str().unwrap();
    let o = run(
        &["run", "--config", cfg_arg, "--print-config"],
        Duration::from_secs(30),
    );
    assert_eq!(o.code, Some(0), "{o:?}");
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert!(
        v["boot-source"]["boot_args"]
            .as_str()
            .unwrap()
            .ends_with("virtio_mmio.device=4K@0xd0000000:5"),
        "{v}"
    );
    assert_eq!(v["machine-config"]["mem_size_mib"], 64);
    // Flags override the file.
    let o = run(
        &[
            "run",
            "--config",
            cfg_arg,
            "--mem-mib",
            "96",
            "--print-config",
        ],
        Duration::from_secs(30),
    );
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["machine-config"]["mem_size_mib"], 96);
    // And it boots.
    let o = run(&["run", "--config", cfg_arg], Duration::from_secs(120));
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(o.stdout.contains("disk 0: id cfg-disk"), "{o:?}");
}

/// A guest that resets its vsock device while a host connection is open, as a driver being
/// unloaded or a rebooting kernel does (tests/guests/vsock_reset.c): ember closes that
/// connection (on its event loop: the vCPU thread that wrote the status has no `close` in its
/// filter) and the device serves again once the guest brings it back up, twice over.
#[test]
fn a_vsock_reset_closes_the_host_connections_and_the_device_serves_on() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    let sock = scratch("reset-v.sock");
    let _ = std::fs::remove_file(&sock);
    let kernel = guest("vsock_reset");
    let vsock = format!("cid=3,uds={}", sock.display());
    let mut child = spawn_quiet(&[
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--no-initrd",
        "--timeout",
        "120s",
        "--vsock",
        &vsock,
    ]);
    let mut out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    // Whether `needle` came on the console within a minute.
    let mut came = |needle: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !seen.contains(needle) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(chunk) => seen.push_str(&String::from_utf8_lossy(&chunk)),
                Err(_) => return Err(format!("{needle:?} never came; the console:\n{seen}")),
            }
        }
        Ok(())
    };
    let mut rounds = || -> Result<(), String> {
        for round in 1..=2 {
            came(&format!("vsock-reset: up {round}\n"))?;
            let mut client = UnixStream::connect(&sock).map_err(|e| e.to_string())?;
            client
                .write_all(b"CONNECT 1234\n")
                .map_err(|e| e.to_string())?;
            came(&format!("vsock-reset: reset {round}\n"))?;
            client
                .set_read_timeout(Some(Duration::from_secs(30)))
                .map_err(|e| e.to_string())?;
            let mut buf = [0u8; 64];
            // Nothing was ever sent on it (the guest never answered): end of file, closed.
            match client.read(&mut buf) {
                Ok(0) => {}
                got => {
                    return Err(format!(
                        "round {round}: the host connection was not closed after the guest's reset: {got:?}"
                    ));
                }
            }
        }
        came("vsock-reset: done\n")
    };
    let result = rounds();
    if result.is_err() {
        let _ = child.kill();
    }
    let o = wait(child, Duration::from_secs(60));
    if let Err(e) = result {
        panic!("{e}\n{o:?}");
    }
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(!o.stderr.contains("seccomp"), "{o:?}");
}
