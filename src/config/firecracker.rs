//! Firecracker's configuration fields that ember reads but does not act on. A Firecracker
//! `--config-file` writes every field of its schema, most of them null or at their defaults;
//! ember accepts each such field at that value, so a Firecracker user can bring their file,
//! and refuses one set to anything else in one line naming the field and saying what ember
//! does instead (never "unknown field" for a field Firecracker defines). docs/config.md lists
//! every field.

use serde_json::Value;

use super::{ConfigError, VmConfig, input::Origin};

/// The value at which a Firecracker field asks for nothing ember lacks.
#[derive(Clone, Copy)]
enum Default {
    /// Only null (or absent).
    Null,
    /// null, or this boolean.
    Bool(bool),
    /// null, or one of these strings.
    Str(&'static [&'static str]),
    /// null, or the number 0.
    Zero,
    /// null, or an empty list.
    EmptyList,
    /// null, or an object whose every value is null (a logger with nothing set).
    AllNull,
    /// null, or a rate limiter that limits nothing (no bucket, or buckets of size or refill
    /// time 0, which Firecracker takes as "no limit").
    NoLimit,
}

impl Default {
    fn allows(self, v: &Value) -> bool {
        if v.is_null() {
            return true;
        }
        match self {
            Default::Null => false,
            Default::Bool(b) => v.as_bool() == Some(b),
            Default::Str(s) => v.as_str().is_some_and(|v| s.contains(&v)),
            Default::Zero => v.as_u64() == Some(0),
            Default::EmptyList => v.as_array().is_some_and(|a| a.is_empty()),
            Default::AllNull => v
                .as_object()
                .is_some_and(|o| o.values().all(Value::is_null)),
            Default::NoLimit => v.as_object().is_some_and(|o| {
                o.iter().all(|(k, b)| {
                    matches!(k.as_str(), "bandwidth" | "ops")
                        && (b.is_null() || ["size", "refill_time"].iter().any(|f| b[f] == 0))
                })
            }),
        }
    }

    /// What the message suggests instead.
    fn suggestion(self) -> String {
        match self {
            Default::Null | Default::NoLimit | Default::AllNull => "set it to null".into(),
            Default::Bool(b) => format!("set it to {b}"),
            Default::Str(s) => format!("set it to {:?}", s[0]),
            Default::Zero => "set it to 0".into(),
            Default::EmptyList => "set it to []".into(),
        }
    }
}

/// One Firecracker field: its name, its value in the file, the value that is accepted, and
/// why ember does not do anything else.
type Field<'a> = (&'static str, &'a Option<Value>, Default, &'static str);

const NO_RATE_LIMIT: &str = "ember has no I/O rate limiter";

fn check_fields(c: &VmConfig, prefix: &str, fields: &[Field]) -> Result<(), ConfigError> {
    for (name, value, accepted, why) in fields {
        let Some(v) = value else { continue };
        if accepted.allows(v) {
            continue;
        }
        let mut shown = v.to_string();
        if shown.len() > 60 {
            shown.truncate(57);
            shown.push_str("...");
        }
        return Err(ConfigError::Invalid {
            input: c.sources.field_at(&format!("{prefix}{name}"), &shown),
            reason: format!(
                "not supported by ember ({why}): remove it, or {}",
                accepted.suggestion()
            ),
        });
    }
    Ok(())
}

/// Checks every Firecracker field ember does not act on: each must be at its default.
pub(super) fn check(c: &VmConfig) -> Result<(), ConfigError> {
    let m = &c.machine_config;
    check_fields(
        c,
        "machine-config.",
        &[
            (
                "smt",
                &m.smt,
                Default::Bool(false),
                "the guest's vCPUs are cores of one socket, without SMT siblings",
            ),
            (
                "cpu_template",
                &m.cpu_template,
                Default::Str(&["None"]),
                "no CPU templates: the guest sees KVM's supported CPUID, normalised",
            ),
            (
                "track_dirty_pages",
                &m.track_dirty_pages,
                Default::Bool(false),
                "ember does not track dirty pages",
            ),
            (
                "huge_pages",
                &m.huge_pages,
                Default::Str(&["None"]),
                "guest memory is anonymous memory as the host's huge-page policy gives it",
            ),
            (
                "gdb_socket_path",
                &m.gdb_socket_path,
                Default::Null,
                "ember has no gdb stub",
            ),
        ],
    )?;
    for (i, d) in c
        .drives
        .iter()
        .filter(|d| d.origin == Origin::Config)
        .enumerate()
    {
        check_fields(
            c,
            &format!("drives[{i}]."),
            &[
                (
                    "partuuid",
                    &d.partuuid,
                    Default::Null,
                    "the root drive is always /dev/vda: root=/dev/vda goes on the command line",
                ),
                (
                    // Firecracker's Writeback offers flushes and honours them, as ember
                    // always does; Unsafe (its default) offers none.
                    "cache_type",
                    &d.cache_type,
                    Default::Str(&["Unsafe", "Writeback"]),
                    "ember offers flushes and makes them durable, which is Firecracker's Writeback",
                ),
                (
                    "io_engine",
                    &d.io_engine,
                    Default::Str(&["Sync"]),
                    "ember's disk I/O is synchronous, Firecracker's Sync engine",
                ),
                (
                    "rate_limiter",
                    &d.rate_limiter,
                    Default::NoLimit,
                    NO_RATE_LIMIT,
                ),
                (
                    "socket",
                    &d.socket,
                    Default::Null,
                    "no vhost-user block devices: give path_on_host, a disk image",
                ),
            ],
        )?;
    }
    for (i, n) in c
        .network_interfaces
        .iter()
        .filter(|n| n.origin == Origin::Config)
        .enumerate()
    {
        check_fields(
            c,
            &format!("network-interfaces[{i}]."),
            &[
                (
                    "mtu",
                    &n.mtu,
                    Default::Null,
                    "the guest sets its interface's MTU itself",
                ),
                (
                    "rx_rate_limiter",
                    &n.rx_rate_limiter,
                    Default::NoLimit,
                    NO_RATE_LIMIT,
                ),
                (
                    "tx_rate_limiter",
                    &n.tx_rate_limiter,
                    Default::NoLimit,
                    NO_RATE_LIMIT,
                ),
            ],
        )?;
    }
    if let Some(b) = &c.balloon {
        check_fields(
            c,
            "balloon.",
            &[
                (
                    "stats_polling_interval_s",
                    &b.stats_polling_interval_s,
                    Default::Zero,
                    "no statistics queue: the guest's memory figures are in its /proc/meminfo",
                ),
                (
                    "free_page_hinting",
                    &b.free_page_hinting,
                    Default::Bool(false),
                    "no free page hinting: free_page_reporting gives freed memory back while the guest runs",
                ),
            ],
        )?;
    }
    let f = c;
    check_fields(
        c,
        "",
        &[
            (
                "cpu-config",
                &f.cpu_config,
                Default::Null,
                "no custom CPU templates: the guest sees KVM's supported CPUID, normalised",
            ),
            (
                "logger",
                &f.logger,
                Default::AllNull,
                "ember logs to stderr: use --log-level",
            ),
            (
                "metrics",
                &f.metrics,
                Default::Null,
                "no metrics file: --timings reports the startup timeline, CPU and memory",
            ),
            (
                "mmds-config",
                &f.mmds_config,
                Default::Null,
                "no microVM metadata service",
            ),
            (
                "entropy",
                &f.entropy,
                Default::Null,
                "no virtio-rng device: the guest kernel seeds itself",
            ),
            (
                "pmem",
                &f.pmem,
                Default::EmptyList,
                "no virtio-pmem devices: use drives",
            ),
            (
                "memory-hotplug",
                &f.memory_hotplug,
                Default::Null,
                "no memory hotplug: set machine-config.mem_size_mib",
            ),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_pass_and_anything_else_is_named() {
        let v = |t: &str| serde_json::from_str::<Value>(t).unwrap();
        assert!(Default::NoLimit.allows(&v(r#"{"bandwidth": null, "ops": null}"#)));
        assert!(Default::NoLimit.allows(&v(r#"{"ops": {"size": 0, "refill_time": 100}}"#)));
        assert!(!Default::NoLimit.allows(&v(r#"{"ops": {"size": 10, "refill_time": 100}}"#)));
        assert!(Default::AllNull.allows(&v(r#"{"level": null}"#)));
        assert!(!Default::AllNull.allows(&v(r#"{"level": "Info"}"#)));
        assert!(Default::Str(&["Unsafe", "Writeback"]).allows(&v(r#""Writeback""#)));
        assert!(!Default::Str(&["Sync"]).allows(&v(r#""Async""#)));
        assert!(Default::EmptyList.allows(&v("[]")));

        let mut c = VmConfig::default();
        c.sources.file = Some("vm.json".into());
        c.machine_config.smt = Some(v("true"));
        let e = check(&c).unwrap_err().to_string();
        assert_eq!(
            e,
            "vm.json: machine-config.smt: true: not supported by ember (the guest's vCPUs are cores of one socket, without SMT siblings): remove it, or set it to false"
        );
    }
}
