//! The project kernel (kernels/build.sh), as ELF with its PVH note and as bzImage.

use super::*;
use ember::config::DEFAULT_CMDLINE;

/// Boots the project kernel in `file` with the built-in initramfs: the greeting on hardware,
/// the banner and a clean early stop on PVM.
fn boot_project_kernel(test: &str, file: &str) {
    let Some(k) = kernel_or_skip(test, file) else {
        return;
    };
    if hardware(test) {
        let o = run(&["run", "--kernel", &k], HW_LIMIT);
        assert_greeting(&o, 1);
        // No PIC, no PIT (ember's split irqchip): the kernel finds no 8259 and keeps time
        // with the local APIC's TSC-deadline timer.
        assert!(o.stdout.contains("Using NULL legacy PIC"), "{o:?}");
        assert!(o.stdout.contains("TSC deadline timer available"), "{o:?}");
    } else {
        let o = run(
            &["run", "--kernel", &k, "--cmdline", DEFAULT_CMDLINE],
            PVM_LIMIT,
        );
        assert_pvm_early_stop(&o);
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
    if hardware(test) {
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
            HW_LIMIT,
        );
        assert_greeting(&o, 4);
        return;
    }
    // The README's first command on a PVM host: the default command line carries the PVM
    // template and the run is bounded by the default PVM timeout. It must end by itself. On
    // AMD hosts the init's first system call faults, init dies, the kernel panics; on Intel
    // hosts the init makes no progress at all and the timeout ends the run.
    // A read-only disk rides along: the kernel's virtio-mmio and virtio-blk drivers probe it
    // and read its first sectors in kernel mode, which this host does run.
    let disk = std::env::temp_dir().join(format!("ember-pvm-disk-{}", std::process::id()));
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let disk_arg = format!("{},ro,id=pvm-disk", disk.display());
    let o = run(&["run", "--kernel", &k, "--disk", &disk_arg], PVM_LIMIT);
    let _ = std::fs::remove_file(&disk);
    assert!(o.stdout.contains("Run /init as init process"), "{o:?}");
    assert!(
        o.stdout
            .contains("virtio_blk virtio0: [vda] 2048 512-byte logical blocks"),
        "{o:?}"
    );
    let error = o.stderr.lines().last().unwrap_or_default();
    match o.code {
        Some(GUEST_PANIC) => assert!(
            error.contains("guest kernel panic: Attempted to kill init!"),
            "{o:?}"
        ),
        Some(TIMEOUT) => assert!(
            error.contains("still running after 300 s") && error.contains("PVM-based"),
            "{o:?}"
        ),
        _ => panic!("neither a guest panic nor the PVM timeout: {o:?}"),
    }
}
