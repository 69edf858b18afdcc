//! Builds what runs inside guests: the guest init (a static Rust program, embedded into ember)
//! and the tiny test guests (assembly, linked at 1 MiB), whose directory is exported to the
//! tests as EMBER_TEST_GUESTS.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    build_guest_init(&out);
    build_test_guests(&out);
}

/// `cargo build` of guest/init for the gnu target with crt-static: a static-pie ELF.
fn build_guest_init(out: &Path) {
    println!("cargo:rerun-if-changed=guest/init/src");
    println!("cargo:rerun-if-changed=guest/init/Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = out.join("guest-init");
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--quiet",
            "--target",
            "x86_64-unknown-linux-gnu",
        ])
        .arg("--manifest-path")
        .arg("guest/init/Cargo.toml")
        .arg("--target-dir")
        .arg(&target_dir)
        // The outer build's flags and wrappers (clippy, coverage) are not for the guest.
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+crt-static")
        .status()
        .expect("run cargo for guest/init");
    assert!(status.success(), "building guest/init failed");
    let bin = target_dir.join("x86_64-unknown-linux-gnu/release/ember-init");
    std::fs::copy(&bin, out.join("ember-init")).expect("copy ember-init");
    // The device tests put it in a guest's root filesystem (as its vsock tool).
    println!(
        "cargo:rustc-env=EMBER_GUEST_INIT={}",
        out.join("ember-init").display()
    );
}

/// Assembles (or, for the C ones, compiles freestanding) and links each tests/guests/*.S and
/// *.c, except the shared common.S.
fn build_test_guests(out: &Path) {
    println!("cargo:rerun-if-changed=tests/guests");
    let dir = out.join("guests");
    std::fs::create_dir_all(&dir).expect("create guests dir");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let mut sources: Vec<PathBuf> = std::fs::read_dir("tests/guests")
        .expect("read tests/guests")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "S" || x == "c") && !p.ends_with("common.S"))
        .collect();
    sources.sort();
    for src in sources {
        let name = src
            .file_stem()
            .expect("file name")
            .to_string_lossy()
            .into_owned();
        let mut cmd = Command::new(&cc);
        if src.extension().is_some_and(|x| x == "c") {
            // No libc, no stack protector, no red zone and no SSE (CR4.OSFXSR is off at the
            // 64-bit entry): plain integer code that runs from ember's boot state.
            cmd.args([
                "-O2",
                "-ffreestanding",
                "-fno-stack-protector",
                "-fno-pic",
                "-mno-red-zone",
                "-mgeneral-regs-only",
                "-fno-asynchronous-unwind-tables",
                "-fcf-protection=none",
            ]);
        }
        let status = cmd
            .args([
                "-nostdlib",
                "-static",
                "-no-pie",
                "-Wl,--build-id=none",
                "-Wl,-n",
                "-Wl,--no-warn-rwx-segments",
            ])
            .arg("-Wl,-T,tests/guests/guest.ld")
            .arg("-Itests/guests")
            .arg("-o")
            .arg(dir.join(&name))
            .arg(&src)
            .status()
            .expect("run cc for a test guest");
        assert!(status.success(), "assembling {} failed", src.display());
    }
    println!("cargo:rustc-env=EMBER_TEST_GUESTS={}", dir.display());
}
