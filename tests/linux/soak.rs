//! The Linux soak, short: five sequential and three concurrent boots of the default Linux
//! guest through bench/soak.sh --linux (on a PVM host the script itself says SKIP).

use super::*;

#[test]
fn soak_smoke_linux() {
    let test = "soak_smoke_linux";
    let Some(kernel) = project_kernel("vmlinux") else {
        skip(test, "no project kernel: run kernels/build.sh");
        return;
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/soak.sh");
    let o = std::process::Command::new("bash")
        .args([script, "--linux", "5", "3"])
        .env("EMBER", env!("CARGO_BIN_EXE_ember"))
        .env("GUEST", kernel)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stdout}{stderr}");
    if !hardware(test) {
        assert!(stdout.starts_with("SKIP: soak --linux:"), "{stdout}");
        skip(
            test,
            "the script skips the Linux soak on a PVM-based /dev/kvm",
        );
        return;
    }
    assert!(stdout.contains("sequential: 5/5 ok"), "{stdout}");
    assert!(stdout.contains("parallel: 3/3 ok"), "{stdout}");
    assert!(stdout.contains("ember processes left: 0"), "{stdout}");
}
