//! Running the user's own program in the guest (`ember run -- CMD`, a configuration's
//! `process`): the host's files (or another tree) as the guest's root over virtio-fs, read
//! only under an in-memory overlay, with writable directories where asked; the program found
//! as the guest will find it before anything boots; its stdin, stdout, stderr and exit status
//! over one vsock channel that ember itself serves; the kernel's log kept aside.
//!
//! Here: the plan (what the initramfs carries: ember's init, [`spec`], the kernel modules a
//! distribution kernel needs), and the host side of the channel ([`session`]). The guest side
//! is guest/init's `run` module; docs/host-work.md has the whole picture.

pub mod frames;
pub mod modules;
pub mod program;
pub mod session;
pub mod spec;

use std::path::{Path, PathBuf};

use crate::arch::x86_64::boot::KernelImage;
use crate::config::{ConfigError, Process, SharedDir, VmConfig};
use crate::initramfs::CpioWriter;

/// The host port the guest's init connects the channel to (on CID 2).
pub const VSOCK_PORT: u32 = 0x454d;
/// The guest's vsock CID when the configuration has no vsock device of its own.
pub const DEFAULT_CID: u32 = 3;

/// The virtio-fs tag of share `index` (the root is 0).
pub fn tag(index: usize) -> String {
    if index == 0 {
        "ember-root".into()
    } else {
        format!("ember-dir{index}")
    }
}

/// What a `process` needs in the guest, worked out on the host.
pub struct Plan {
    /// The initramfs: ember's init, the spec, the modules.
    pub initramfs: Vec<u8>,
    /// The program, as the guest finds it.
    pub program: PathBuf,
}

/// Plans `process` (of `config`) for `kernel`: finds the program, picks the modules, writes
/// the initramfs with `init`.
pub fn plan(
    config: &VmConfig,
    process: &Process,
    kernel: &KernelImage,
    init: &[u8],
) -> Result<Plan, ConfigError> {
    let shares = &config.shares;
    let name = process.args.first().map(String::as_str).unwrap_or_default();
    let program = program::find(name, &process.env, &process.cwd, shares)?;
    let modules = match (&config.boot_source.modules, kernel.release()) {
        (Some(tree), _) => select_modules(config, tree)?,
        (None, Some(release)) => {
            let tree = Path::new("/lib/modules").join(&release);
            if tree.is_dir() {
                select_modules(config, &tree)?
            } else {
                Vec::new()
            }
        }
        (None, None) => Vec::new(),
    };
    let mut cpio = CpioWriter::new();
    crate::initramfs::skeleton(&mut cpio, init);
    cpio.dir("ember/modules", 0o755);
    let mut module_paths = Vec::new();
    for (i, (name, bytes)) in modules.iter().enumerate() {
        let path = format!("ember/modules/{i:02}-{name}.ko");
        cpio.file(&path, 0o644, bytes);
        module_paths.push(format!("/{path}"));
    }
    let s = spec::Spec {
        args: process.args.clone(),
        program: spec::text(&program),
        env: process.env.clone(),
        cwd: spec::text(&process.cwd),
        uid: process.user.uid,
        gid: process.user.gid,
        groups: process.user.additional_gids.clone(),
        terminal: process.terminal,
        mounts: shares
            .iter()
            .enumerate()
            .map(|(i, d): (usize, &SharedDir)| spec::Mount {
                tag: tag(i),
                guest_path: spec::text(&d.guest_path),
                writable: d.writable,
            })
            .collect(),
        modules: module_paths,
        port: VSOCK_PORT,
    };
    cpio.file(spec::SPEC_PATH, 0o644, &s.encode());
    Ok(Plan {
        initramfs: cpio.finish(),
        program,
    })
}

fn select_modules(config: &VmConfig, tree: &Path) -> Result<Vec<(String, Vec<u8>)>, ConfigError> {
    modules::select(tree).map_err(|e| ConfigError::Invalid {
        input: config.sources.at(
            "boot-source.modules",
            &crate::config::input::path_value(tree),
        ),
        reason: e.to_string(),
    })
}
