//! Kernel modules for a guest kernel whose drivers for `process` are modules (Debian's stock
//! cloud kernel: virtio, virtio-mmio, virtio-fs, FUSE, overlayfs and vsock are all `=m`): the
//! ones needed, with what they depend on (from each module's own `.modinfo`, as `modinfo`
//! reads it: a modules tree straight from a package has no `modules.dep`), in load order, for
//! the initramfs; the init loads them before it mounts anything.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The drivers a `process` needs, by module name. A module the tree does not have is left
/// to the kernel (built in, or missing: the init then names the option).
pub const WANTED: &[&str] = &[
    "virtio_mmio",
    "virtiofs",
    "overlay",
    "vmw_vsock_virtio_transport",
];

/// Errors reading a modules tree.
#[derive(Debug, thiserror::Error)]
pub enum ModulesError {
    /// The tree cannot be read.
    #[error("cannot read the modules tree {path} ({source})")]
    Read {
        /// The tree or file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A module is compressed, which ember does not unpack.
    #[error(
        "{path} is compressed: ember loads plain .ko files; unpack the tree first (xz -d or zstd -d)"
    )]
    Compressed {
        /// The module.
        path: String,
    },
}

/// The module files under `tree`, by name (`-` read as `_`, as the kernel does).
fn index(tree: &Path) -> Result<HashMap<String, PathBuf>, ModulesError> {
    let mut found = HashMap::new();
    let mut dirs = vec![tree.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let entries = std::fs::read_dir(&d).map_err(|source| ModulesError::Read {
            path: d.display().to_string(),
            source,
        })?;
        for e in entries.flatten() {
            let p = e.path();
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                dirs.push(p);
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            let module = name
                .strip_suffix(".ko")
                .or_else(|| name.strip_suffix(".ko.xz"))
                .or_else(|| name.strip_suffix(".ko.zst"))
                .or_else(|| name.strip_suffix(".ko.gz"));
            if let Some(m) = module {
                found.insert(m.replace('-', "_"), p);
            }
        }
    }
    Ok(found)
}

/// The `depends=` list of a module's `.modinfo` section (ELF64, little-endian).
pub fn depends(ko: &[u8]) -> Vec<String> {
    let u16_at = |o: usize| {
        ko.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u32_at = |o: usize| {
        ko.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let u64_at = |o: usize| {
        ko.get(o..o + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(|b| u64::from_le_bytes(b) as usize)
    };
    let section = || -> Option<&[u8]> {
        if ko.get(..4)? != b"\x7fELF" {
            return None;
        }
        let (shoff, shentsize, shnum, shstrndx) =
            (u64_at(0x28)?, u16_at(0x3a)?, u16_at(0x3c)?, u16_at(0x3e)?);
        let header = |i: usize| shoff.checked_add(i.checked_mul(shentsize)?);
        let strtab = u64_at(header(shstrndx)? + 0x18)?;
        for i in 0..shnum {
            let h = header(i)?;
            let name_at = strtab.checked_add(u32_at(h)?)?;
            let name = ko.get(name_at..)?.split(|&b| b == 0).next()?;
            if name == b".modinfo" {
                let (off, size) = (u64_at(h + 0x18)?, u64_at(h + 0x20)?);
                return ko.get(off..off.checked_add(size)?);
            }
        }
        None
    };
    let Some(info) = section() else {
        return Vec::new();
    };
    info.split(|&b| b == 0)
        .filter_map(|kv| kv.strip_prefix(b"depends="))
        .flat_map(|v| {
            String::from_utf8_lossy(v)
                .split(',')
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|d| !d.is_empty())
        .map(|d| d.replace('-', "_"))
        .collect()
}

/// The modules of `tree` that [`WANTED`] needs, each after what it depends on: (name, bytes).
pub fn select(tree: &Path) -> Result<Vec<(String, Vec<u8>)>, ModulesError> {
    let found = index(tree)?;
    let mut order: Vec<(String, Vec<u8>)> = Vec::new();
    fn visit(
        name: &str,
        found: &HashMap<String, PathBuf>,
        order: &mut Vec<(String, Vec<u8>)>,
        seen: &mut Vec<String>,
    ) -> Result<(), ModulesError> {
        if seen.iter().any(|s| s == name) {
            return Ok(());
        }
        seen.push(name.to_string());
        let Some(path) = found.get(name) else {
            return Ok(());
        };
        if path.extension().is_some_and(|e| e != "ko") {
            return Err(ModulesError::Compressed {
                path: path.display().to_string(),
            });
        }
        let bytes = std::fs::read(path).map_err(|source| ModulesError::Read {
            path: path.display().to_string(),
            source,
        })?;
        for d in depends(&bytes) {
            visit(&d, found, order, seen)?;
        }
        order.push((name.to_string(), bytes));
        Ok(())
    }
    let mut seen = Vec::new();
    for w in WANTED {
        visit(w, &found, &mut order, &mut seen)?;
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 with a .modinfo section holding `info`.
    fn module(info: &[u8]) -> Vec<u8> {
        let shstrtab = b"\0.shstrtab\0.modinfo\0";
        let mut f = vec![0u8; 0x40];
        f[..4].copy_from_slice(b"\x7fELF");
        let info_off = f.len();
        f.extend_from_slice(info);
        let str_off = f.len();
        f.extend_from_slice(shstrtab);
        let shoff = f.len();
        // Section 0 (null), 1 (.shstrtab), 2 (.modinfo).
        let mut sh = vec![0u8; 64 * 3];
        let set = |sh: &mut Vec<u8>, i: usize, name: u32, off: usize, size: usize| {
            sh[i * 64..i * 64 + 4].copy_from_slice(&name.to_le_bytes());
            sh[i * 64 + 0x18..i * 64 + 0x20].copy_from_slice(&(off as u64).to_le_bytes());
            sh[i * 64 + 0x20..i * 64 + 0x28].copy_from_slice(&(size as u64).to_le_bytes());
        };
        set(&mut sh, 1, 1, str_off, shstrtab.len());
        set(&mut sh, 2, 11, info_off, info.len());
        f.extend_from_slice(&sh);
        f[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        f[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        f[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        f[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        f
    }

    #[test]
    fn dependencies_come_first_once() {
        assert_eq!(
            depends(&module(
                b"license=GPL\0depends=fuse,virtio-ring\0name=virtiofs\0"
            )),
            ["fuse", "virtio_ring"]
        );
        assert!(depends(&module(b"depends=\0")).is_empty());
        assert!(depends(b"not an elf").is_empty());
        let dir = std::env::temp_dir().join(format!("ember-modules-{}", std::process::id()));
        let k = dir.join("kernel/fs");
        std::fs::create_dir_all(&k).unwrap();
        std::fs::write(k.join("virtiofs.ko"), module(b"depends=fuse,virtio\0")).unwrap();
        std::fs::write(k.join("fuse.ko"), module(b"depends=\0")).unwrap();
        std::fs::write(k.join("virtio.ko"), module(b"depends=\0")).unwrap();
        std::fs::write(
            k.join("virtio_mmio.ko"),
            module(b"depends=virtio,virtio_ring\0"),
        )
        .unwrap();
        std::fs::write(k.join("virtio_ring.ko"), module(b"depends=\0")).unwrap();
        let names: Vec<String> = select(&dir).unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            ["virtio", "virtio_ring", "virtio_mmio", "fuse", "virtiofs"]
        );
        std::fs::write(k.join("overlay.ko.xz"), b"xz").unwrap();
        assert!(matches!(select(&dir), Err(ModulesError::Compressed { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
