//! The small languages of ember's flags: durations (`--timeout 5m`), disks
//! (`--disk PATH[,ro][,id=NAME]`), network interfaces (`--net tap=NAME[,mac=MAC]`) and vsock
//! (`--vsock cid=N,uds=PATH`). Each error says what was expected.

use std::path::PathBuf;
use std::time::Duration;

use super::{ConfigError, Drive, NetworkInterface, Vsock, shown};

/// Parses a duration: seconds (`90`), or a number with `ms`, `s`, `m` or `h` (`500ms`, `5m`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || {
        format!(
            "{text:?} is not a duration: use seconds (90), or a number with ms, s, m or h (500ms, 90s, 5m)"
        )
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let ms = match unit {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => None,
    };
    ms.map(Duration::from_millis).ok_or_else(bad)
}

/// A duration as messages show it: `300 s`, `1.5 s`, `250 ms`.
pub fn show_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else if d.as_secs() == 0 {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// Serde for `Option<Duration>` as the text `--timeout` takes (`"90s"`).
pub(super) mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&format!("{}ms", d.as_millis())),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| super::parse_duration(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

fn value_err(flag: &'static str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Value {
        flag,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Splits `a=1,b=2,c` into pieces, each `(key, Some(value))` or `(word, None)`.
fn pieces(text: &str) -> impl Iterator<Item = (&str, Option<&str>)> {
    text.split(',').map(|p| match p.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (p, None),
    })
}

/// `--disk PATH[,ro][,id=NAME]`; `index` names it `diskN` when no id is given.
pub fn parse_disk(text: &str, index: usize) -> Result<Drive, ConfigError> {
    const FLAG: &str = "--disk";
    let usage = "use --disk PATH[,ro][,id=NAME]";
    let mut it = pieces(text);
    let path = match it.next() {
        Some((p, None)) if !p.is_empty() => PathBuf::from(p),
        _ => return Err(value_err(FLAG, text, format!("no path first: {usage}"))),
    };
    let mut drive = Drive {
        drive_id: format!("disk{index}"),
        path_on_host: path,
        is_root_device: false,
        is_read_only: false,
    };
    for (key, value) in it {
        match (key, value) {
            ("ro", None) => drive.is_read_only = true,
            ("id", Some(id)) if !id.is_empty() => drive.drive_id = id.to_string(),
            _ => {
                return Err(value_err(
                    FLAG,
                    text,
                    format!("unknown option {key:?}: {usage}"),
                ));
            }
        }
    }
    Ok(drive)
}

/// `--net tap=NAME[,mac=MAC]`; `index` names it `ethN`.
pub fn parse_net(text: &str, index: usize) -> Result<NetworkInterface, ConfigError> {
    const FLAG: &str = "--net";
    let usage = "use --net tap=NAME[,mac=aa:bb:cc:dd:ee:ff]";
    let mut iface = NetworkInterface {
        iface_id: format!("eth{index}"),
        host_dev_name: String::new(),
        guest_mac: None,
    };
    for (key, value) in pieces(text) {
        match (key, value) {
            ("tap", Some(name)) => iface.host_dev_name = name.to_string(),
            ("mac", Some(mac)) => {
                parse_mac(mac).map_err(|r| value_err(FLAG, text, r))?;
                iface.guest_mac = Some(mac.to_string());
            }
            _ => {
                return Err(value_err(
                    FLAG,
                    text,
                    format!("unknown option {key:?}: {usage}"),
                ));
            }
        }
    }
    // IFNAMSIZ is 16 with the NUL.
    if iface.host_dev_name.is_empty() || iface.host_dev_name.len() > 15 {
        return Err(value_err(
            FLAG,
            text,
            format!("tap= needs a device name of 1 to 15 characters: {usage}"),
        ));
    }
    Ok(iface)
}

/// `--vsock cid=N,uds=PATH`.
pub fn parse_vsock(text: &str) -> Result<Vsock, ConfigError> {
    const FLAG: &str = "--vsock";
    let usage = "use --vsock cid=N,uds=PATH (N from 3)";
    let (mut cid, mut uds) = (None, None);
    for (key, value) in pieces(text) {
        match (key, value) {
            ("cid", Some(n)) => {
                cid = Some(n.parse::<u32>().map_err(|_| {
                    value_err(FLAG, text, format!("cid={n} is not a number: {usage}"))
                })?)
            }
            ("uds", Some(p)) if !p.is_empty() => uds = Some(PathBuf::from(p)),
            _ => {
                return Err(value_err(
                    FLAG,
                    text,
                    format!("unknown option {key:?}: {usage}"),
                ));
            }
        }
    }
    match (cid, uds) {
        (Some(guest_cid), Some(uds_path)) => Ok(Vsock {
            vsock_id: None,
            guest_cid,
            uds_path,
        }),
        _ => Err(value_err(
            FLAG,
            text,
            format!("cid= and uds= are both needed: {usage}"),
        )),
    }
}

/// Checks a vsock device: a guest CID of 3 or more (0-2 are reserved), and a socket path that
/// does not exist yet in a folder that does.
pub fn check_vsock(v: &Vsock) -> Result<(), ConfigError> {
    if v.guest_cid < 3 {
        return Err(value_err(
            "--vsock cid=",
            &v.guest_cid.to_string(),
            "CIDs 0, 1 and 2 are reserved (2 is the host): use 3 or more",
        ));
    }
    let err = |reason: &str| ConfigError::File {
        what: "--vsock uds=",
        path: v.uds_path.clone(),
        reason: reason.into(),
    };
    if v.uds_path.as_os_str().len() >= 100 {
        return Err(err(
            "longer than a Unix socket path may be: use a shorter path",
        ));
    }
    if std::fs::symlink_metadata(&v.uds_path).is_ok() {
        return Err(err(
            "already exists: remove it, or pick a path ember can create its socket at",
        ));
    }
    let parent = match v.uds_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        return Err(err(&format!(
            "its folder {} does not exist: create it first",
            shown(&parent)
        )));
    }
    Ok(())
}

/// Parses `aa:bb:cc:dd:ee:ff`; refuses multicast addresses, which no interface may have.
pub fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let bad = || format!("{text:?} is not a MAC address: use six hex bytes, aa:bb:cc:dd:ee:ff");
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let p = parts.next().ok_or_else(bad)?;
        if p.len() != 2 {
            return Err(bad());
        }
        *byte = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    if mac[0] & 1 != 0 {
        return Err(format!(
            "{text} is a multicast address: the first byte must be even (02:... is a local one)"
        ));
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "s", "-1", "1.5s", "5x", "99999999999999999999h"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains("not a duration"), "{bad}: {e}");
        }
        assert_eq!(show_duration(Duration::from_secs(300)), "300 s");
        assert_eq!(show_duration(Duration::from_millis(250)), "250 ms");
        assert_eq!(show_duration(Duration::from_millis(1500)), "1.5 s");
    }

    #[test]
    fn disks() {
        let d = parse_disk("/a.img", 0).unwrap();
        assert_eq!(
            (d.drive_id.as_str(), d.is_read_only, d.is_root_device),
            ("disk0", false, false)
        );
        let d = parse_disk("/a.img,ro,id=data", 3).unwrap();
        assert_eq!((d.drive_id.as_str(), d.is_read_only), ("data", true));
        for bad in ["", ",ro", "/a,rw", "/a,id=", "/a,size=3"] {
            let e = parse_disk(bad, 0).unwrap_err().to_string();
            assert!(e.contains("--disk PATH[,ro][,id=NAME]"), "{bad}: {e}");
        }
    }

    #[test]
    fn nets() {
        let n = parse_net("tap=tap0", 1).unwrap();
        assert_eq!(
            (n.iface_id.as_str(), n.host_dev_name.as_str()),
            ("eth1", "tap0")
        );
        let n = parse_net("tap=t,mac=02:00:00:00:00:01", 0).unwrap();
        assert_eq!(n.guest_mac.as_deref(), Some("02:00:00:00:00:01"));
        for bad in [
            "",
            "tap=",
            "tap=a-very-long-tap-name",
            "tap=t,mac=zz",
            "tap=t,mac=01:00:00:00:00:00",
            "mac=02:00:00:00:00:01",
        ] {
            assert!(parse_net(bad, 0).is_err(), "{bad}");
        }
        assert_eq!(parse_mac("02:ab:CD:00:00:ff").unwrap()[1], 0xab);
        assert!(parse_mac("02:00:00:00:00").is_err());
        assert!(parse_mac("02:00:00:00:00:00:00").is_err());
    }

    #[test]
    fn vsocks() {
        let v = parse_vsock("cid=3,uds=/tmp/x").unwrap();
        assert_eq!((v.guest_cid, v.uds_path.to_str()), (3, Some("/tmp/x")));
        for bad in ["cid=3", "uds=/x", "cid=x,uds=/x", "cid=3,uds=/x,port=1"] {
            assert!(parse_vsock(bad).is_err(), "{bad}");
        }
        let mut v = parse_vsock("cid=2,uds=/tmp/ember-vsock-test").unwrap();
        assert!(
            check_vsock(&v)
                .unwrap_err()
                .to_string()
                .contains("reserved")
        );
        v.guest_cid = 3;
        v.uds_path = "/proc".into();
        assert!(
            check_vsock(&v)
                .unwrap_err()
                .to_string()
                .contains("already exists")
        );
        v.uds_path = "/nonexistent-ember-dir/v.sock".into();
        assert!(
            check_vsock(&v)
                .unwrap_err()
                .to_string()
                .contains("does not exist")
        );
    }
}
