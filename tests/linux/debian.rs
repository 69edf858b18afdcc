//! Debian 12's stock cloud kernel (kernels/fetch-debian-kernel.sh), as its bzImage and as the
//! ELF vmlinux inside it (entered through its PVH note). It has ACPI and no MP-table support:
//! it finds its vCPUs through ember's MADT, or not at all.

use std::path::PathBuf;

use super::*;
use ember::config::DEFAULT_CMDLINE;

fn boot_debian(test: &str, kernel: Option<PathBuf>) {
    let Some(k) = kernel else {
        skip(
            test,
            "Debian's cloud kernel is not fetched: run kernels/fetch-debian-kernel.sh",
        );
        return;
    };
    let k = k.display().to_string();
    if hardware(test) {
        // Every vCPU asked for must come online (the hardware tier's L1 has one CPU).
        let o = run(
            &["run", "--kernel", &k, "--vcpus", "2", "--overcommit-vcpus"],
            HW_LIMIT * 2,
        );
        assert!(o.stdout.contains("Debian"), "{o:?}");
        assert_greeting(&o, 2);
        return;
    }
    // On PVM it runs under emulation for minutes (the bzImage unpacks itself first); once its
    // banner and command line are on the console the boot protocol has done its part: stop it.
    let o = run_until_then_stop(
        &["run", "--kernel", &k, "--cmdline", DEFAULT_CMDLINE],
        "Command line:",
        PVM_LIMIT,
    );
    assert!(o.stdout.contains("Linux version 6.1"), "{o:?}");
    assert!(o.stdout.contains("Debian"), "{o:?}");
    assert_eq!(o.code, Some(SIGTERM_EXIT), "{o:?}");
}

#[test]
fn debian_stock_kernel_bzimage() {
    boot_debian("debian_stock_kernel_bzimage", debian_kernel());
}

#[test]
fn debian_stock_kernel_elf() {
    boot_debian("debian_stock_kernel_elf", debian_kernel_elf());
}
