//! What ember's init in the guest is told to do for a `process`, as a file in the initramfs
//! (`/ember/run`): every value a NUL-terminated string, each record a key and a fixed number of
//! values, so that arguments and environment values need no quoting and may hold anything but
//! NUL. guest/init reads it back (its `run` module); the format is versioned by its first
//! record.

use std::path::Path;

/// Where the spec sits in the initramfs.
pub const SPEC_PATH: &str = "ember/run";
/// The first record: the format and its version.
pub const MAGIC: &str = "ember-run/1";

/// How a shared directory is mounted in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Its virtio-fs tag.
    pub tag: String,
    /// Where the guest sees it.
    pub guest_path: String,
    /// Whether the guest may change the host's files there (a read-only root gets an overlay).
    pub writable: bool,
}

/// Everything the init needs to run the program.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Spec {
    /// argv, argv[0] as the user typed it.
    pub args: Vec<String>,
    /// The program's path in the guest, resolved on the host.
    pub program: String,
    /// Its environment.
    pub env: Vec<String>,
    /// Its working directory in the guest.
    pub cwd: String,
    /// Who it runs as.
    pub uid: u32,
    /// Its group.
    pub gid: u32,
    /// Its supplementary groups.
    pub groups: Vec<u32>,
    /// Whether it gets a terminal.
    pub terminal: bool,
    /// The shares, the root first.
    pub mounts: Vec<Mount>,
    /// Kernel modules to load first, in order: their paths in the initramfs.
    pub modules: Vec<String>,
    /// The host's vsock port for the channel.
    pub port: u32,
}

impl Spec {
    /// The file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut put = |values: &[&str]| {
            for v in values {
                out.extend_from_slice(v.as_bytes());
                out.push(0);
            }
        };
        put(&[MAGIC]);
        put(&["program", &self.program]);
        for a in &self.args {
            put(&["arg", a]);
        }
        for e in &self.env {
            put(&["env", e]);
        }
        put(&["cwd", &self.cwd]);
        put(&["uid", &self.uid.to_string()]);
        put(&["gid", &self.gid.to_string()]);
        for g in &self.groups {
            put(&["group", &g.to_string()]);
        }
        put(&["terminal", if self.terminal { "1" } else { "0" }]);
        for m in &self.mounts {
            put(&[
                "mount",
                &m.tag,
                &m.guest_path,
                if m.writable { "rw" } else { "ro" },
            ]);
        }
        for m in &self.modules {
            put(&["module", m]);
        }
        put(&["port", &self.port.to_string()]);
        out
    }

    /// Reads a spec back (ember's tests; the init has its own reader).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut it = text.split_terminator('\0');
        if it.next()? != MAGIC {
            return None;
        }
        let mut s = Spec::default();
        while let Some(key) = it.next() {
            let mut v = || it.next().map(str::to_string);
            match key {
                "program" => s.program = v()?,
                "arg" => s.args.push(v()?),
                "env" => s.env.push(v()?),
                "cwd" => s.cwd = v()?,
                "uid" => s.uid = v()?.parse().ok()?,
                "gid" => s.gid = v()?.parse().ok()?,
                "group" => s.groups.push(v()?.parse().ok()?),
                "terminal" => s.terminal = v()? == "1",
                "mount" => {
                    let (tag, guest_path, mode) = (v()?, v()?, v()?);
                    s.mounts.push(Mount {
                        tag,
                        guest_path,
                        writable: mode == "rw",
                    })
                }
                "module" => s.modules.push(v()?),
                "port" => s.port = v()?.parse().ok()?,
                _ => return None,
            }
        }
        Some(s)
    }
}

/// A path as the spec holds it (paths ember checked are UTF-8 or refused earlier).
pub fn text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_awkward_values() {
        let s = Spec {
            args: vec![
                "sh".into(),
                "-c".into(),
                "echo 'a\nb'; exit 3".into(),
                String::new(),
            ],
            program: "/bin/sh".into(),
            env: vec!["A=1".into(), "MULTI=line1\nline2".into(), "EMPTY=".into()],
            cwd: "/work dir".into(),
            uid: 1000,
            gid: 1000,
            groups: vec![27, 100],
            terminal: true,
            mounts: vec![
                Mount {
                    tag: "ember-root".into(),
                    guest_path: "/".into(),
                    writable: false,
                },
                Mount {
                    tag: "ember-dir1".into(),
                    guest_path: "/work dir/out".into(),
                    writable: true,
                },
            ],
            modules: vec!["ember/modules/0-virtio.ko".into()],
            port: 17741,
        };
        let bytes = s.encode();
        assert!(bytes.starts_with(b"ember-run/1\0"));
        assert_eq!(Spec::decode(&bytes), Some(s));
        assert_eq!(Spec::decode(b"ember-run/2\0"), None);
        assert_eq!(Spec::decode(b"ember-run/1\0bogus\0x\0"), None);
    }
}
