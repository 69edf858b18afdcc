//! What `ember bench` measures: ember itself, the container baselines running the same
//! workload binary, and peer VMMs booting the same guest. Each subject is a command line; one
//! that cannot be prepared or fails its first run is skipped with the reason.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Every baseline `--baselines` accepts, in report order.
pub const BASELINES: &[&str] = &[
    "process",
    "kvm-floor",
    "namespaces",
    "crun",
    "runc",
    "podman",
    "docker",
    "qemu",
];

/// One thing to time.
#[derive(Debug, Clone)]
pub struct Subject {
    /// Name in reports.
    pub name: String,
    /// Program and arguments; `{run}` in any argument becomes the run number.
    pub argv: Vec<String>,
    /// Whether this is ember (its time-to-workload comes from its own timeline).
    pub is_ember: bool,
    /// How it is configured, where that is a choice the report should name (a peer given
    /// its own project's fast-boot configuration); empty when the command says it all.
    pub configuration: String,
}

impl Subject {
    fn new(name: &str, argv: Vec<String>) -> Self {
        Subject {
            name: name.to_string(),
            argv,
            is_ember: false,
            configuration: String::new(),
        }
    }

    /// The command for run number `run`.
    pub fn command(&self, run: usize) -> Command {
        let argv: Vec<String> = self
            .argv
            .iter()
            .map(|a| a.replace("{run}", &run.to_string()))
            .collect();
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..]);
        c
    }
}

/// What the guests and containers run, laid out under the output directory.
pub struct Workload {
    /// A root filesystem holding just `/init` (ember's init, run as `/init --workload`) and
    /// empty `proc dev sys tmp etc`.
    pub rootfs: PathBuf,
    /// The kernel the VMMs boot.
    pub kernel: PathBuf,
    /// The initrd the VMMs boot, if any.
    pub initrd: Option<PathBuf>,
}

/// Writes the workload root filesystem under `dir`.
pub fn make_rootfs(dir: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let rootfs = dir.join("rootfs");
    for d in ["proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }
    let init = rootfs.join("init");
    std::fs::write(&init, crate::GUEST_INIT)?;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755))?;
    std::fs::canonicalize(rootfs)
}

fn on_path(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// Writes the OCI bundle for crun and runc: the workload, `/init --workload`.
fn make_bundle(dir: &Path, rootfs: &Path) -> Result<PathBuf, String> {
    oci_bundle(&dir.join("bundle"), rootfs, &["/init", "--workload"])
}

/// Writes the OCI bundle `bundle` (config.json from `crun spec`, edited): its process `args`,
/// no terminal, its root `rootfs` read-only.
pub fn oci_bundle(bundle: &Path, rootfs: &Path, args: &[&str]) -> Result<PathBuf, String> {
    let bundle = bundle.to_path_buf();
    std::fs::create_dir_all(&bundle)
        .map_err(|e| format!("cannot create {}: {e}", bundle.display()))?;
    let _ = std::fs::remove_file(bundle.join("config.json"));
    let out = Command::new("crun")
        .args(["spec"])
        .current_dir(&bundle)
        .output()
        .map_err(|e| format!("crun spec: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "crun spec failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = std::fs::read_to_string(bundle.join("config.json")).map_err(|e| e.to_string())?;
    let mut spec: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    spec["process"]["args"] = serde_json::json!(args);
    spec["process"]["terminal"] = serde_json::json!(false);
    spec["root"]["path"] = serde_json::json!(rootfs.display().to_string());
    spec["root"]["readonly"] = serde_json::json!(true);
    std::fs::write(bundle.join("config.json"), spec.to_string()).map_err(|e| e.to_string())?;
    Ok(bundle)
}

/// The hard limit on open files, which podman must be told explicitly on these hosts.
fn nofile_hard() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the live rlimit.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    r.rlim_max
}

/// The docker socket `bench/setup-baselines.sh` starts dockerd on.
pub const DOCKER_SOCK: &str = "/run/ember-bench/docker/docker.sock";
/// The image the docker baseline runs.
pub const DOCKER_IMAGE: &str = "ember-bench-workload:latest";

/// Imports the rootfs as a docker image (no registry needed).
fn docker_image(rootfs: &Path) -> Result<(), String> {
    let host = format!("unix://{DOCKER_SOCK}");
    let ping = Command::new("docker")
        .args(["-H", &host, "version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !matches!(ping, Ok(s) if s.success()) {
        return Err(format!(
            "no dockerd answers on {DOCKER_SOCK}: run bench/setup-baselines.sh"
        ));
    }
    let script = format!(
        "tar -C {} -c . | docker -H {host} import - {DOCKER_IMAGE}",
        rootfs.display()
    );
    let out = Command::new("sh")
        .args(["-c", &script])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "docker import failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Builds the baseline `name`, or says why it cannot run here.
pub fn baseline(name: &str, dir: &Path, w: &Workload) -> Result<Subject, String> {
    let rootfs = w.rootfs.display().to_string();
    let init = w.rootfs.join("init").display().to_string();
    match name {
        "process" => Ok(Subject::new(name, vec![init, "--workload".into()])),
        "kvm-floor" => {
            // Built beside ember by `cargo build --release --example kvm_floor` (and by
            // `cargo test`, which builds the examples).
            let floor = std::env::current_exe()
                .ok()
                .and_then(|e| Some(e.parent()?.join("examples/kvm_floor")))
                .filter(|p| p.exists())
                .ok_or("examples/kvm_floor is not built: run cargo build --release --example kvm_floor")?;
            Ok(Subject::new(name, vec![floor.display().to_string()]))
        }
        "namespaces" => {
            if !on_path("unshare") {
                return Err("unshare is not installed (util-linux)".into());
            }
            let mut argv = s(&[
                "unshare",
                "--fork",
                "--pid",
                "--mount",
                "--uts",
                "--ipc",
                "--net",
                "--mount-proc",
                "chroot",
            ]);
            argv.extend([rootfs, "/init".into(), "--workload".into()]);
            Ok(Subject::new(name, argv))
        }
        "crun" | "runc" => {
            if !on_path(name) {
                return Err(format!("{name} is not installed (apt-get install {name})"));
            }
            if !on_path("crun") {
                return Err("its bundle is made with `crun spec`: install crun".into());
            }
            let bundle = make_bundle(dir, &w.rootfs)?.display().to_string();
            let id = format!("ember-bench-{}-{name}-{{run}}", std::process::id());
            Ok(Subject::new(
                name,
                vec![name.into(), "run".into(), "--bundle".into(), bundle, id],
            ))
        }
        "podman" => {
            if !on_path("podman") {
                return Err("podman is not installed (apt-get install podman)".into());
            }
            let h = nofile_hard();
            let mut argv = s(&[
                "podman",
                "--cgroup-manager=cgroupfs",
                "--events-backend=file",
                "run",
                "--rm",
                "--network",
                "none",
            ]);
            argv.extend([
                "--ulimit".into(),
                format!("nofile={h}:{h}"),
                "--ulimit".into(),
                "nproc=32768:32768".into(),
                "--rootfs".into(),
                rootfs,
                "/init".into(),
                "--workload".into(),
            ]);
            Ok(Subject::new(name, argv))
        }
        "docker" => {
            if !on_path("docker") {
                return Err("docker is not installed (apt-get install docker.io)".into());
            }
            docker_image(&w.rootfs)?;
            let mut argv = s(&["docker", "-H"]);
            argv.extend([
                format!("unix://{DOCKER_SOCK}"),
                "run".into(),
                "--rm".into(),
                "--network".into(),
                "none".into(),
            ]);
            argv.extend([
                DOCKER_IMAGE.to_string(),
                "/init".into(),
                "--workload".into(),
            ]);
            Ok(Subject::new(name, argv))
        }
        "qemu" => {
            if !on_path("qemu-system-x86_64") {
                return Err(
                    "qemu-system-x86_64 is not installed (tier/install-qemu.sh installs QEMU 10)"
                        .into(),
                );
            }
            // QEMU's own fast-boot configuration for microvm (its docs/system/i386/microvm):
            // no option ROMs, no legacy PIT, PIC or RTC, and qboot, the minimal firmware
            // microvm was made with. Debian's QEMU 10 gives microvm SeaBIOS by default, whose
            // real-mode code runs emulated on a PVM host: 1.5 s a boot instead of 0.05.
            let qboot = Path::new(QBOOT);
            let mut argv = s(&[
                "qemu-system-x86_64",
                "-M",
                "microvm,x-option-roms=off,pit=off,pic=off,rtc=off",
                "-enable-kvm",
            ]);
            if qboot.exists() {
                argv.extend(s(&["-bios", QBOOT]));
            }
            // arch-capabilities: QEMU cannot set that MSR on every host (PVM).
            argv.extend(s(&[
                "-cpu",
                "host,-arch-capabilities",
                "-m",
                "128",
                "-smp",
                "1",
            ]));
            argv.extend(s(&[
                "-nodefaults",
                "-no-user-config",
                "-nographic",
                "-serial",
                "stdio",
                "-no-reboot",
            ]));
            argv.extend(s(&["-device", "i8042", "-kernel"]));
            argv.push(w.kernel.display().to_string());
            if let Some(rd) = &w.initrd {
                argv.push("-initrd".into());
                argv.push(rd.display().to_string());
                argv.push("-append".into());
                argv.push(crate::config::DEFAULT_CMDLINE.to_string());
            }
            let firmware = if qboot.exists() {
                "qboot (-bios qboot.rom)"
            } else {
                "the default firmware: qboot.rom is not installed, so expect SeaBIOS's slow start"
            };
            Ok(Subject::new(name, argv).with_configuration(format!(
                "QEMU's fast-boot microvm: {firmware}, x-option-roms=off, pit=off, pic=off, rtc=off, -nodefaults"
            )))
        }
        other => Err(format!("unknown baseline {other}")),
    }
}

/// qboot, microvm's own minimal firmware, as QEMU's packages install it.
const QBOOT: &str = "/usr/share/qemu/qboot.rom";

impl Subject {
    /// Names how this subject is configured, for the report.
    /// A peer's command with `{snapshot}` (the benchmark snapshot's directory) filled in.
    pub fn with_snapshot(mut self, dir: &Path) -> Self {
        for a in &mut self.argv {
            *a = a.replace("{snapshot}", &dir.display().to_string());
        }
        self.configuration = self
            .configuration
            .replace("{snapshot}", &dir.display().to_string());
        self
    }

    fn with_configuration(mut self, text: String) -> Self {
        self.configuration = text;
        self
    }
}

/// A user's peer VMM: `NAME=CMD` with `{kernel}` (and optionally `{initrd}`) in CMD, run
/// through `sh -c`.
pub fn peer(name: &str, template: &str, w: &Workload) -> Subject {
    let initrd = w
        .initrd
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let cmd = template
        .replace("{kernel}", &w.kernel.display().to_string())
        .replace("{initrd}", &initrd);
    Subject::new(name, vec!["sh".into(), "-c".into(), cmd.clone()])
        .with_configuration(format!("as given with --peer: {cmd}"))
}

/// Snapshots the benchmark guest once into `dir`, where it says ready.
pub fn take_snapshot(exe: &Path, run_args: &[String], dir: &Path) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(dir);
    let o = Command::new(exe)
        .arg("run")
        .args(run_args)
        .arg("--snapshot-on-ready")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("--restore: cannot run ember to take the snapshot: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "--restore: the guest could not be snapshotted at ready: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(())
}

/// ember continuing the benchmark snapshot in `dir`, with a per-run timings file: its time to
/// the workload is from exec to the guest's workload mark after the restore.
pub fn ember_restore(exe: &Path, dir: &Path, timings_dir: &Path) -> Subject {
    Subject {
        name: "ember restore".into(),
        argv: vec![
            exe.display().to_string(),
            "run".into(),
            "--restore".into(),
            dir.display().to_string(),
            format!("--timings={}/ember-{{run}}.json", timings_dir.display()),
        ],
        is_ember: true,
        configuration: format!(
            "ember run --restore {} (snapshot at the guest's ready)",
            dir.display()
        ),
    }
}

/// ember itself: `ember run` with the given run options and a per-run timings file.
pub fn ember(exe: &Path, run_args: &[String], timings_dir: &Path) -> Subject {
    let mut argv = vec![exe.display().to_string(), "run".into()];
    argv.extend(run_args.iter().cloned());
    argv.push(format!(
        "--timings={}/ember-{{run}}.json",
        timings_dir.display()
    ));
    Subject {
        name: "ember".into(),
        argv,
        is_ember: true,
        configuration: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload() -> Workload {
        Workload {
            rootfs: PathBuf::from("/r"),
            kernel: PathBuf::from("/k"),
            initrd: Some(PathBuf::from("/i")),
        }
    }

    #[test]
    fn peer_templates_are_filled() {
        let p = peer("fc", "fc --kernel {kernel} --initrd {initrd}", &workload());
        assert_eq!(p.argv, ["sh", "-c", "fc --kernel /k --initrd /i"]);
    }

    #[test]
    fn run_numbers_are_substituted() {
        let s = Subject::new("x", vec!["echo".into(), "id-{run}".into()]);
        let c = s.command(7);
        assert_eq!(c.get_args().next().unwrap(), "id-7");
    }

    #[test]
    fn unknown_baseline_is_refused() {
        assert!(baseline("lxc", Path::new("/tmp"), &workload()).is_err());
    }
}
