//! A short run of bench/soak.sh (the Linux soak is in tests/linux/soak.rs): sequential and concurrent boots all end well, nothing is
//! left running, the host gets its memory back. (Its own test binary: it counts processes.)

mod common;

use common::*;

/// The soaks count ember processes host-wide: one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn soak_smoke() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/soak.sh");
    let o = std::process::Command::new("bash")
        .args([script, "20", "10"])
        .env("EMBER", env!("CARGO_BIN_EXE_ember"))
        .env("GUEST", guest("hello64"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("sequential: 20/20 ok"), "{stdout}");
    assert!(stdout.contains("parallel: 10/10 ok"), "{stdout}");
    assert!(stdout.contains("ember processes left: 0"), "{stdout}");
}
