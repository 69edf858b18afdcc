//! A newc ("070701") cpio writer, and the initramfs ember generates in memory: the guest init
//! and, for `--exec`, the program and its arguments.

/// Builds a newc cpio archive in memory.
#[derive(Debug, Default)]
pub struct CpioWriter {
    buf: Vec<u8>,
    next_ino: u32,
}

/// File-type bits of a cpio mode.
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

impl CpioWriter {
    /// An empty archive.
    pub fn new() -> Self {
        Self {
            buf: Vec::new(),
            next_ino: 1,
        }
    }

    fn pad4(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        let ino = self.next_ino;
        self.next_ino += 1;
        let name_size = name.len() + 1;
        let fields = [
            ino,
            mode,
            0, // uid
            0, // gid
            if mode & S_IFDIR != 0 { 2 } else { 1 },
            0, // mtime
            data.len() as u32,
            0, // dev major
            0, // dev minor
            rdev.0,
            rdev.1,
            name_size as u32,
            0, // check
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad4();
        self.buf.extend_from_slice(data);
        self.pad4();
    }

    /// Adds a directory.
    pub fn dir(&mut self, name: &str, perm: u32) -> &mut Self {
        self.entry(name, S_IFDIR | (perm & 0o7777), (0, 0), &[]);
        self
    }

    /// Adds a regular file.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> &mut Self {
        self.entry(name, S_IFREG | (perm & 0o7777), (0, 0), data);
        self
    }

    /// Adds a character device node.
    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> &mut Self {
        self.entry(name, S_IFCHR | (perm & 0o7777), (major, minor), &[]);
        self
    }

    /// Appends the trailer and returns the archive.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.buf
    }
}

/// Where the `--exec` program sits in the guest.
pub const EXEC_PATH: &str = "ember/exec";
/// Its arguments, NUL-separated, argv[0] first.
pub const ARGS_PATH: &str = "ember/args";

/// What every initramfs of ember's holds: the folders the init expects, the console node
/// and the init itself.
pub fn skeleton(cpio: &mut CpioWriter, init: &[u8]) {
    for dir in ["dev", "proc", "sys", "tmp", "ember"] {
        cpio.dir(dir, 0o755);
    }
    // The kernel opens /dev/console for init's stdio before devtmpfs is mounted.
    cpio.char_dev("dev/console", 0o600, 5, 1);
    cpio.file("init", 0o755, init);
}

/// The initramfs for a boot: the skeleton the init expects, the init itself, and optionally
/// the program to run with its arguments.
pub fn build(init: &[u8], exec: Option<(&[u8], &[String])>) -> Vec<u8> {
    let mut cpio = CpioWriter::new();
    skeleton(&mut cpio, init);
    if let Some((program, args)) = exec {
        cpio.file(EXEC_PATH, 0o755, program);
        let mut joined = Vec::new();
        for a in args {
            joined.extend_from_slice(a.as_bytes());
            joined.push(0);
        }
        cpio.file(ARGS_PATH, 0o644, &joined);
    }
    cpio.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses a newc archive back into (name, mode, rdevmajor, rdevminor, data).
    fn parse(mut a: &[u8]) -> Vec<(String, u32, u32, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let total = a.len();
        loop {
            assert_eq!(&a[..6], b"070701");
            let field = |i: usize| {
                u32::from_str_radix(std::str::from_utf8(&a[6 + i * 8..14 + i * 8]).unwrap(), 16)
                    .unwrap()
            };
            let (mode, size, maj, min, namesize) = (
                field(1),
                field(6) as usize,
                field(9),
                field(10),
                field(11) as usize,
            );
            let name = std::str::from_utf8(&a[110..110 + namesize - 1])
                .unwrap()
                .to_string();
            assert_eq!(a[110 + namesize - 1], 0);
            let data_start = (110 + namesize).div_ceil(4) * 4;
            let data = a[data_start..data_start + size].to_vec();
            let next = (data_start + size).div_ceil(4) * 4;
            // Offsets are relative to the archive start; every header starts 4-aligned.
            assert_eq!((total - a.len()) % 4, 0);
            a = &a[next..];
            if name == "TRAILER!!!" {
                assert!(a.is_empty());
                return out;
            }
            out.push((name, mode, maj, min, data));
        }
    }

    #[test]
    fn round_trip() {
        let mut w = CpioWriter::new();
        w.dir("d", 0o755)
            .file("d/f", 0o644, b"hello")
            .char_dev("c", 0o600, 5, 1);
        let entries = parse(&w.finish());
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].0, "d");
        assert_eq!(entries[0].1, 0o040755);
        assert_eq!(
            entries[1],
            ("d/f".to_string(), 0o100644, 0, 0, b"hello".to_vec())
        );
        assert_eq!(entries[2].1, 0o020600);
        assert_eq!((entries[2].2, entries[2].3), (5, 1));
    }

    #[test]
    fn odd_sizes_are_padded() {
        for len in 0..9 {
            let mut w = CpioWriter::new();
            let data = vec![0xab; len];
            w.file("x", 0o644, &data).file("yy", 0o644, &data);
            let out = w.finish();
            assert_eq!(out.len() % 4, 0);
            let e = parse(&out);
            assert_eq!(e[1].4, data);
        }
    }

    #[test]
    fn exec_initramfs_carries_program_and_args() {
        let args = vec!["prog".to_string(), "a b".to_string(), "".to_string()];
        let e = parse(&build(b"INIT", Some((b"PROG", &args))));
        let find = |n: &str| e.iter().find(|x| x.0 == n).unwrap().4.clone();
        assert_eq!(find("init"), b"INIT");
        assert_eq!(find(EXEC_PATH), b"PROG");
        assert_eq!(find(ARGS_PATH), b"prog\0a b\0\0");
        assert!(e.iter().any(|x| x.0 == "dev/console"));
    }
}
