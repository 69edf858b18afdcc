//! Snapshots: a paused VM saved into a directory of two files, and those files checked before
//! a restore in a new process.
//!
//! - `state`: the header (the magic `EMBERSNP`, the format version, the payload's length and
//!   checksum), then the payload, JSON: the ember version that wrote it, the memory file's size
//!   and checksum, and the VM's state (the vCPUs as KVM gives them, the VM's clock, the IOAPIC
//!   and the serial port).
//! - `memory`: the guest's RAM, sparse (`memory::write`), mapped back copy-on-write.
//!
//! Every check a restore makes is here or in [`memory::check`]: a file that is not a snapshot,
//! another format or ember version, a truncated or damaged file, a memory file that is not the
//! one the state names. Each failure is one [`SnapshotError`] naming the file.

pub mod checksum;
pub mod memory;

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use kvm_bindings::kvm_clock_data;
use serde::{Deserialize, Serialize};

use crate::devices::ioapic::IoapicState;
use crate::devices::manager::DeviceState;
use crate::devices::serial::SerialState;
use crate::vcpu::VcpuState;
pub use memory::MemoryFacts;

/// The state file's name in a snapshot directory.
pub const STATE_FILE: &str = "state";
/// The memory file's name in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";
/// The state file's first bytes.
const MAGIC: &[u8; 8] = b"EMBERSNP";
/// The layout of the state file this ember writes and reads; any change to what is saved
/// changes it.
pub const FORMAT: u32 = 2;
/// Magic, format, reserved, payload length, payload checksum.
const HEADER_LEN: usize = 8 + 4 + 4 + 8 + 8;
/// A state file is a few KiB per vCPU; anything this large is not one.
const MAX_PAYLOAD: u64 = 64 << 20;

/// What a snapshot holds besides guest memory.
#[derive(Serialize, Deserialize)]
pub struct VmState {
    /// Guest RAM in bytes.
    pub mem_size: u64,
    /// Every vCPU, in id order.
    pub vcpus: Vec<VcpuState>,
    /// The VM's kvmclock.
    pub clock: kvm_clock_data,
    /// The IOAPIC (ember's: the irqchip is split).
    pub ioapic: IoapicState,
    /// COM1.
    pub serial: SerialState,
    /// The virtio devices, in the guest's order: each with its host side (reopened by id on
    /// a restore), its place, its transport and queues.
    pub devices: Vec<DeviceState>,
    /// The `--exec` program the guest runs, whose status (I/O port 0x3f1) becomes ember's
    /// exit code after a restore too.
    #[serde(default)]
    pub exec: Option<std::path::PathBuf>,
}

impl VmState {
    /// Moves the device with id `id` to another host side, `path`: a disk's file, a network
    /// interface's TAP, vsock's socket. Returns the device; the error says what ids there are,
    /// or why that one cannot move.
    pub fn reattach(
        &mut self,
        id: &str,
        path: &str,
    ) -> Result<&mut crate::devices::manager::PlacedDevice, String> {
        let ids: Vec<String> = self
            .devices
            .iter()
            .map(|d| d.place.spec.id().to_string())
            .collect();
        let Some(d) = self.devices.iter_mut().find(|d| d.place.spec.id() == id) else {
            return Err(if ids.is_empty() {
                format!("the snapshot has no device with id {id} (it has no devices)")
            } else {
                format!(
                    "the snapshot has no device with id {id} (it has {})",
                    ids.join(", ")
                )
            });
        };
        match d.place.spec.reattached(path) {
            Some(spec) => {
                d.place.spec = spec;
                Ok(&mut d.place)
            }
            None => Err(format!(
                "{} has no host side that can move",
                d.place.spec.name()
            )),
        }
    }
}

/// The state file's payload, as read.
#[derive(Deserialize)]
struct Payload {
    // Its `ember` field is read first, as a [`Writer`].
    /// The memory file it goes with.
    memory: MemoryFacts,
    /// Where that is: a name beside the state file, or a path.
    #[serde(default = "memory_file_name")]
    memory_file: PathBuf,
    /// The VM.
    vm: VmState,
}

fn memory_file_name() -> PathBuf {
    PathBuf::from(MEMORY_FILE)
}

/// The state file's payload, as written: [`Payload`], borrowed.
#[derive(Serialize)]
struct PayloadOut<'a> {
    ember: &'a str,
    memory: MemoryFacts,
    memory_file: PathBuf,
    vm: &'a VmState,
}

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file could not be created, read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The directory does not hold a snapshot.
    #[error(
        "{} is not an ember snapshot (no state file starting with EMBERSNP): give the directory `--snapshot-on-ready` wrote, or the snapshot_path of a `PUT /snapshot/create`",
        path.display()
    )]
    NotASnapshot {
        /// The state file.
        path: PathBuf,
    },
    /// Another state-file format.
    #[error(
        "{} is snapshot format {found}; this ember reads format {FORMAT}: take the snapshot again with this ember",
        path.display()
    )]
    Format {
        /// The state file.
        path: PathBuf,
        /// Its format.
        found: u32,
    },
    /// Another ember version wrote it.
    #[error(
        "{} was written by ember {found}; this is ember {}: restore it with the ember that took it, or take it again",
        path.display(),
        env!("CARGO_PKG_VERSION")
    )]
    Version {
        /// The state file.
        path: PathBuf,
        /// The version that wrote it.
        found: String,
    },
    /// The state file is shorter than its header says, or damaged.
    #[error("{} is damaged ({what}): take the snapshot again", path.display())]
    Damaged {
        /// The file.
        path: PathBuf,
        /// How.
        what: String,
    },
    /// The memory file is not the one the state file was written with.
    #[error(
        "{} does not belong to this snapshot: {what}; take the snapshot again",
        path.display()
    )]
    Memory {
        /// The memory file.
        path: PathBuf,
        /// How it differs.
        what: String,
    },
    /// This host cannot run the saved guest as it was.
    #[error("cannot restore {} on this host: {what}", path.display())]
    Host {
        /// The snapshot directory.
        path: PathBuf,
        /// Why.
        what: String,
    },
    /// The snapshot's directory or its memory file is missing.
    #[error("{} is missing: a snapshot is the directory `--snapshot-on-ready` wrote, its state and memory files together", .0.display())]
    Missing(PathBuf),
    /// The snapshot's path is there but is not a directory.
    #[error("{} is not a directory: a snapshot is a directory of two files", .0.display())]
    NotADirectory(PathBuf),
    /// The VM has something a snapshot cannot hold yet.
    #[error("cannot snapshot this VM: {0}")]
    Unsupported(String),
}

/// The two files a snapshot is written into, created before the VM runs (the VMM thread's
/// seccomp filter allows writing files, not opening them).
pub struct SnapshotFiles {
    /// The directory, for messages.
    pub dir: PathBuf,
    /// The state file's path (`DIR/state`).
    pub state_path: PathBuf,
    /// The memory file's path (`DIR/memory`, or anywhere).
    pub memory_path: PathBuf,
    /// The state file.
    pub state: File,
    /// The memory file.
    pub memory: File,
    /// Whether `create` made the directory (so a run that writes no snapshot removes it).
    pub made_dir: bool,
}

impl SnapshotFiles {
    /// Creates `dir` if needed and the two files in it, empty. An existing snapshot there is
    /// replaced.
    pub fn create(dir: &Path) -> Result<Self, SnapshotError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SnapshotError::Io { path, source }
        };
        let made_dir = match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => false,
            Ok(_) => return Err(SnapshotError::NotADirectory(dir.to_path_buf())),
            Err(_) => {
                std::fs::create_dir_all(dir).map_err(io(dir))?;
                true
            }
        };
        let open = |name: &str| {
            let path = dir.join(name);
            File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .map_err(io(&path))
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            state_path: dir.join(STATE_FILE),
            memory_path: dir.join(MEMORY_FILE),
            state: open(STATE_FILE)?,
            memory: open(MEMORY_FILE)?,
            made_dir,
        })
    }

    /// Creates the state file at `state` and the memory file at `memory`, empty, wherever
    /// they are (Firecracker's `snapshot_path` and `mem_file_path`); their folders must exist.
    /// A restore names the state file; it finds the memory file from what the state says.
    pub fn create_at(state: &Path, memory: &Path) -> Result<Self, SnapshotError> {
        let open = |path: &Path| {
            File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(path)
                .map_err(|source| SnapshotError::Io {
                    path: path.to_path_buf(),
                    source,
                })
        };
        let dir = match state.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Ok(Self {
            dir,
            state_path: state.to_path_buf(),
            memory_path: memory.to_path_buf(),
            state: open(state)?,
            memory: open(memory)?,
            made_dir: false,
        })
    }

    /// How the state file names the memory file: its name when both are in one folder (so
    /// the pair can move together), its path otherwise.
    fn memory_name(&self) -> PathBuf {
        let together = self.memory_path.parent() == self.state_path.parent();
        match self.memory_path.file_name() {
            Some(name) if together => PathBuf::from(name),
            _ => std::path::absolute(&self.memory_path).unwrap_or(self.memory_path.clone()),
        }
    }

    /// Writes the state file for `vm`, whose memory is already in the memory file as `memory`
    /// says.
    pub fn write_state(&self, vm: &VmState, memory: MemoryFacts) -> Result<(), SnapshotError> {
        let payload = PayloadOut {
            ember: env!("CARGO_PKG_VERSION"),
            memory,
            memory_file: self.memory_name(),
            vm,
        };
        let path = self.state_path.clone();
        let body = serde_json::to_vec(&payload).map_err(|e| SnapshotError::Io {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        let out = encode(&body);
        let io = |source| SnapshotError::Io {
            path: path.clone(),
            source,
        };
        self.state.write_all_at(&out, 0).map_err(io)?;
        self.state.sync_data().map_err(io)
    }
}

/// A state file's bytes: the header, then `body`.
fn encode(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&checksum::of(body).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// The one field read before the rest: another ember's payload may not parse as this one's.
#[derive(Deserialize)]
struct Writer {
    ember: String,
}

/// A snapshot read back and checked, ready to restore.
pub struct Loaded {
    /// The directory.
    pub dir: PathBuf,
    /// The VM's state.
    pub vm: VmState,
    /// The memory file, opened read-only and checked against the state file.
    pub memory: File,
}

/// Reads the snapshot at `path` (the directory `--snapshot-on-ready` wrote, or a state file
/// anywhere, whose memory file is where it says): its state file, checked (magic, format, length, checksum,
/// ember version), and its memory file, checked against what the state file says of it.
pub fn load(path: &Path) -> Result<Loaded, SnapshotError> {
    let (dir, state_path) = match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => (path.to_path_buf(), path.join(STATE_FILE)),
        Ok(_) => {
            let dir = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            (dir, path.to_path_buf())
        }
        Err(_) => return Err(SnapshotError::Missing(path.to_path_buf())),
    };
    let dir = dir.as_path();
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SnapshotError::Io { path, source }
    };
    let mut f = match File::open(&state_path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SnapshotError::NotASnapshot { path: state_path });
        }
        Err(e) => return Err(io(&state_path)(e)),
    };
    let payload = read_state(&mut f, &state_path)?;
    let memory_path = dir.join(&payload.memory_file);
    let memory = match File::open(&memory_path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SnapshotError::Missing(memory_path));
        }
        Err(e) => return Err(io(&memory_path)(e)),
    };
    let verified =
        memory::check(&memory, &payload.memory).map_err(|what| SnapshotError::Memory {
            path: memory_path.clone(),
            what,
        })?;
    let how = match verified {
        memory::Verified::Unchanged => "unwritten since the snapshot (by its stamp), not read",
        memory::Verified::Contents => "read and summed: it is the snapshot's",
    };
    log::debug!("{}: {how}", memory_path.display());
    if payload.memory.size != payload.vm.mem_size {
        return Err(SnapshotError::Damaged {
            path: state_path,
            what: "its memory size and its memory file's disagree".into(),
        });
    }
    Ok(Loaded {
        dir: dir.to_path_buf(),
        vm: payload.vm,
        memory,
    })
}

/// Reads and checks a state file's header and payload.
fn read_state(f: &mut File, path: &Path) -> Result<Payload, SnapshotError> {
    let body = read_body(f, path)?;
    let damaged = |e: serde_json::Error| SnapshotError::Damaged {
        path: path.to_path_buf(),
        what: format!("its state does not parse: {e}"),
    };
    let writer: Writer = serde_json::from_slice(&body).map_err(damaged)?;
    if writer.ember != env!("CARGO_PKG_VERSION") {
        return Err(SnapshotError::Version {
            path: path.to_path_buf(),
            found: writer.ember,
        });
    }
    serde_json::from_slice(&body).map_err(damaged)
}

/// The state file's payload, its header checked.
fn read_body(f: &mut File, path: &Path) -> Result<Vec<u8>, SnapshotError> {
    let damaged = |what: &str| SnapshotError::Damaged {
        path: path.to_path_buf(),
        what: what.into(),
    };
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match f.read(&mut header[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(SnapshotError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
    }
    if got < MAGIC.len() || &header[..MAGIC.len()] != MAGIC {
        return Err(SnapshotError::NotASnapshot {
            path: path.to_path_buf(),
        });
    }
    if got < HEADER_LEN {
        return Err(damaged("it ends inside its header"));
    }
    let word4 = |at: usize| {
        u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let word8 = |at: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&header[at..at + 8]);
        u64::from_le_bytes(a)
    };
    let format = word4(8);
    if format != FORMAT {
        return Err(SnapshotError::Format {
            path: path.to_path_buf(),
            found: format,
        });
    }
    let len = word8(16);
    let sum = word8(24);
    if len > MAX_PAYLOAD {
        return Err(damaged("its header gives an impossible length"));
    }
    let mut body = Vec::with_capacity(len as usize);
    f.take(len + 1)
        .read_to_end(&mut body)
        .map_err(|source| SnapshotError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    if (body.len() as u64) < len {
        return Err(damaged(&format!(
            "it is truncated: {} of its {len} bytes of state",
            body.len()
        )));
    }
    if body.len() as u64 > len {
        return Err(damaged("it has bytes after its state"));
    }
    if checksum::of(&body) != sum {
        return Err(damaged("its checksum does not match"));
    }
    Ok(body)
}

/// Writes a whole snapshot of `vm` and `mem` into `files`: the memory first, then the state
/// file that vouches for it, so a snapshot cut short leaves no state file naming it.
pub fn write(
    files: &SnapshotFiles,
    vm: &VmState,
    mem: &vm_memory::GuestMemoryMmap,
) -> Result<(), SnapshotError> {
    let facts = memory::write(&files.memory, mem).map_err(|source| SnapshotError::Io {
        path: files.memory_path.clone(),
        source,
    })?;
    files.write_state(vm, facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot directory whose state file holds `body` (a valid header and checksum) and an
    /// empty memory file.
    fn snapshot_with(name: &str, body: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ember-snap-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(STATE_FILE), encode(body)).unwrap();
        std::fs::write(dir.join(MEMORY_FILE), b"").unwrap();
        dir
    }

    #[test]
    fn another_embers_snapshot_is_refused_by_its_version_before_its_contents() {
        let dir = snapshot_with("version", br#"{"ember":"0.0.1","something":"else"}"#);
        let e = load(&dir).err().expect("refused");
        assert!(matches!(e, SnapshotError::Version { ref found, .. } if found == "0.0.1"));
        assert!(e.to_string().contains("written by ember 0.0.1"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_payload_that_does_not_parse_is_damaged() {
        let dir = snapshot_with("garbage", b"{not json");
        let e = load(&dir).err().expect("refused");
        assert!(e.to_string().contains("does not parse"), "{e}");
        let version = format!(r#"{{"ember":"{}"}}"#, env!("CARGO_PKG_VERSION"));
        let dir = snapshot_with("no-vm", version.as_bytes());
        let e = load(&dir).err().expect("refused");
        assert!(e.to_string().contains("does not parse"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
