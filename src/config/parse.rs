//! The small languages of ember's flags: durations (`--timeout 5m`), disks
//! (`--disk PATH[,ro][,id=NAME]`), network interfaces (`--net tap=NAME[,mac=MAC]`) and vsock
//! (`--vsock cid=N,uds=PATH`). Each error says what was expected.

use std::path::PathBuf;
use std::time::Duration;

use super::input::{Origin, quoted_if_needed};
use super::{Balloon, ConfigError, Drive, MAX_VCPUS, MIN_MEM_MIB, NetworkInterface, Vsock};

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
    ConfigError::Invalid {
        input: format!("{flag} {}", quoted_if_needed(value)),
        reason: reason.into(),
    }
}

/// Splits `a=1,b=2,c` into pieces, each `(key, Some(value))` or `(word, None)`; a key given
/// twice is an error (the last one would win silently).
fn pieces<'a>(
    flag: &'static str,
    text: &'a str,
    usage: &str,
) -> Result<Vec<(&'a str, Option<&'a str>)>, ConfigError> {
    let mut seen: Vec<(&str, Option<&str>)> = Vec::new();
    for p in text.split(',') {
        let piece = match p.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (p, None),
        };
        if seen.iter().any(|(k, _)| *k == piece.0) {
            return Err(value_err(
                flag,
                text,
                format!(
                    "{:?} is given twice: give each option once ({usage})",
                    piece.0
                ),
            ));
        }
        seen.push(piece);
    }
    Ok(seen)
}

fn origin(flag: &'static str, text: &str) -> Origin {
    Origin::Flag {
        flag,
        text: text.to_string(),
    }
}

/// `--disk PATH[,ro][,id=NAME]`; `index` names it `diskN` when no id is given.
pub fn parse_disk(text: &str, index: usize) -> Result<Drive, ConfigError> {
    const FLAG: &str = "--disk";
    let usage = "use --disk PATH[,ro][,id=NAME]";
    let mut it = pieces(FLAG, text, usage)?.into_iter();
    let path = match it.next() {
        Some((p, None)) if !p.is_empty() => PathBuf::from(p),
        _ => return Err(value_err(FLAG, text, format!("no path first: {usage}"))),
    };
    let mut drive = Drive {
        drive_id: format!("disk{index}"),
        path_on_host: path,
        origin: origin(FLAG, text),
        ..Default::default()
    };
    for (key, value) in it {
        match (key, value) {
            ("ro", None) => drive.is_read_only = true,
            ("id", Some(id)) if !id.is_empty() => drive.drive_id = id.to_string(),
            ("id", _) => {
                return Err(value_err(FLAG, text, format!("id= needs a name: {usage}")));
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
    Ok(drive)
}

/// `--rootfs PATH`: the root drive.
pub fn parse_rootfs(path: &std::path::Path) -> Drive {
    Drive {
        drive_id: "rootfs".into(),
        path_on_host: path.to_path_buf(),
        is_root_device: true,
        origin: origin("--rootfs", &path.display().to_string()),
        ..Default::default()
    }
}

/// `--net tap=NAME[,mac=MAC]`; `index` names it `ethN`. The name and address are checked
/// with the rest of the configuration.
pub fn parse_net(text: &str, index: usize) -> Result<NetworkInterface, ConfigError> {
    const FLAG: &str = "--net";
    let usage = "use --net tap=NAME[,mac=aa:bb:cc:dd:ee:ff]";
    let mut iface = NetworkInterface {
        iface_id: format!("eth{index}"),
        origin: origin(FLAG, text),
        ..Default::default()
    };
    let mut tap = false;
    for (key, value) in pieces(FLAG, text, usage)? {
        match (key, value) {
            ("tap", Some(name)) => {
                iface.host_dev_name = name.to_string();
                tap = true;
            }
            ("mac", Some(mac)) => iface.guest_mac = Some(mac.to_string()),
            _ => {
                return Err(value_err(
                    FLAG,
                    text,
                    format!("unknown option {key:?}: {usage}"),
                ));
            }
        }
    }
    if !tap {
        return Err(value_err(FLAG, text, format!("tap= is needed: {usage}")));
    }
    Ok(iface)
}

/// `--vsock cid=N,uds=PATH`. The values are checked with the rest of the configuration.
pub fn parse_vsock(text: &str) -> Result<Vsock, ConfigError> {
    const FLAG: &str = "--vsock";
    let usage = "use --vsock cid=N,uds=PATH (N from 3 to 4294967294)";
    let (mut cid, mut uds) = (None, None);
    for (key, value) in pieces(FLAG, text, usage)? {
        match (key, value) {
            ("cid", Some(n)) => {
                if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(value_err(
                        FLAG,
                        text,
                        format!("cid={n} is not a number: {usage}"),
                    ));
                }
                cid = Some(n.parse::<u32>().map_err(|_| {
                    value_err(FLAG, text, format!("cid={n} is out of range: {usage}"))
                })?)
            }
            ("uds", Some(p)) if !p.is_empty() => uds = Some(PathBuf::from(p)),
            ("uds", _) => {
                return Err(value_err(FLAG, text, format!("uds= needs a path: {usage}")));
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
    match (cid, uds) {
        (Some(guest_cid), Some(uds_path)) => Ok(Vsock {
            vsock_id: None,
            guest_cid,
            uds_path,
            origin: origin(FLAG, text),
        }),
        _ => Err(value_err(
            FLAG,
            text,
            format!("cid= and uds= are both needed: {usage}"),
        )),
    }
}

/// `--balloon[=amount_mib=N,deflate_on_oom=on|off,free_page_reporting=on|off]`: every option
/// may be left out; alone, the flag gives a balloon of 0 MiB that deflates on OOM and reports
/// freed memory (what a user adding a balloon for density wants; a Firecracker file's
/// `balloon` section, by contrast, says each field itself).
pub fn parse_balloon(text: &str) -> Result<Balloon, ConfigError> {
    const FLAG: &str = "--balloon";
    let usage =
        "use --balloon or --balloon=amount_mib=N,deflate_on_oom=on|off,free_page_reporting=on|off";
    let mut b = Balloon {
        amount_mib: 0,
        deflate_on_oom: true,
        free_page_reporting: true,
        origin: origin(FLAG, text),
        ..Balloon::default()
    };
    if text.is_empty() {
        return Ok(b);
    }
    let switch = |key: &str, v: Option<&str>| match v {
        Some("on") => Ok(true),
        Some("off") => Ok(false),
        _ => Err(value_err(
            FLAG,
            text,
            format!("{key}= takes on or off: {usage}"),
        )),
    };
    for (key, value) in pieces(FLAG, text, usage)? {
        match key {
            "amount_mib" => {
                b.amount_mib = value
                    .filter(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()))
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| {
                        value_err(
                            FLAG,
                            text,
                            format!("amount_mib= takes a whole number of MiB: {usage}"),
                        )
                    })?
            }
            "deflate_on_oom" => b.deflate_on_oom = switch(key, value)?,
            "free_page_reporting" => b.free_page_reporting = switch(key, value)?,
            _ => {
                return Err(value_err(
                    FLAG,
                    text,
                    format!("unknown option {key:?}: {usage}"),
                ));
            }
        }
    }
    Ok(b)
}

/// `--vcpus N`: a whole number (its range is checked with the configuration).
pub fn parse_vcpus(text: &str) -> Result<u32, String> {
    text.parse::<u32>().map_err(|_| {
        format!("{text:?} is not a vCPU count: use a whole number from 1 to {MAX_VCPUS}")
    })
}

/// `--mem-mib M`: a whole number of MiB (its range is checked with the configuration).
pub fn parse_mem_mib(text: &str) -> Result<u64, String> {
    text.parse::<u64>().map_err(|_| {
        format!("{text:?} is not a memory size: use a whole number of MiB, {MIN_MEM_MIB} or more")
    })
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
    if mac == [0; 6] {
        return Err(format!(
            "{text} is the null address, which no interface may have: use another (02:... is a local one)"
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
        // A key twice is refused, not last-wins.
        for twice in ["/a,ro,ro", "/a,id=x,id=y"] {
            let e = parse_disk(twice, 0).unwrap_err().to_string();
            assert!(e.contains("is given twice"), "{twice}: {e}");
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
        for bad in ["", "mac=02:00:00:00:00:01", "tap=a,tap=b", "tap=t,speed=1"] {
            assert!(parse_net(bad, 0).is_err(), "{bad}");
        }
        assert_eq!(parse_mac("02:ab:CD:00:00:ff").unwrap()[1], 0xab);
        for bad in [
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "zz:00:00:00:00:00",
            "01:00:00:00:00:00",
            "00:00:00:00:00:00",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn vsocks() {
        let v = parse_vsock("cid=3,uds=/tmp/x").unwrap();
        assert_eq!((v.guest_cid, v.uds_path.to_str()), (3, Some("/tmp/x")));
        for bad in [
            "cid=3",
            "uds=/x",
            "cid=3,uds=/x,port=1",
            "cid=3,cid=4,uds=/x",
        ] {
            assert!(parse_vsock(bad).is_err(), "{bad}");
        }
        let e = parse_vsock("cid=x,uds=/x").unwrap_err().to_string();
        assert!(e.contains("not a number"), "{e}");
        let e = parse_vsock("cid=4294967296,uds=/x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("out of range"), "{e}");
    }

    #[test]
    fn counts() {
        assert_eq!(parse_vcpus("4"), Ok(4));
        let e = parse_vcpus("99999999999").unwrap_err();
        assert!(e.contains("from 1 to 254"), "{e}");
        assert!(
            parse_mem_mib("-1")
                .unwrap_err()
                .contains("whole number of MiB")
        );
    }
}
