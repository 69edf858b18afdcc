//! Naming a value as the user gave it. A configuration is filled from a file, from flags that
//! override it field by field, or by a library caller; an error about a value names the input
//! it came from: the flag as typed (`--vcpus 0`, `--disk "a.img,ro"`), or the file and the
//! field (`vm.json: machine-config.vcpu_count: 0`), or the field alone for a caller's value.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::path::{Path, PathBuf};

use super::shown;

/// Where one device's configuration came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Origin {
    /// The configuration itself: the file's (or a library caller's) list of devices.
    #[default]
    Config,
    /// A flag, with its value as the user typed it.
    Flag {
        /// The flag (`--disk`, `--rootfs`, `--net`, `--vsock`).
        flag: &'static str,
        /// Its value.
        text: String,
    },
}

/// Where a whole configuration came from: the file, if any, and which fields flags set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources {
    /// The configuration file (`--config`).
    pub file: Option<PathBuf>,
    /// Fields set by a flag: field path (`machine-config.vcpu_count`) to flag (`--vcpus`).
    pub flags: BTreeMap<&'static str, &'static str>,
}

impl Sources {
    /// Records that `flag` set `field`.
    pub fn set_by(&mut self, field: &'static str, flag: &'static str) {
        self.flags.insert(field, flag);
    }

    /// Whether a flag set `field`.
    pub fn is_flag(&self, field: &str) -> bool {
        self.flags.contains_key(field)
    }

    /// `field` with its `value`, as the user gave it: `--vcpus 0` or
    /// `vm.json: machine-config.vcpu_count: 0`.
    pub fn at(&self, field: &str, value: &dyn Display) -> String {
        match self.flags.get(field) {
            Some(flag) => format!("{flag} {value}"),
            None => self.field_at(field, value),
        }
    }

    /// `field`'s name alone: `--vcpus` or `vm.json: machine-config.vcpu_count`.
    pub fn name(&self, field: &str) -> String {
        match self.flags.get(field) {
            Some(flag) => flag.to_string(),
            None => match &self.file {
                Some(f) => format!("{}: {field}", shown(f)),
                None => field.to_string(),
            },
        }
    }

    /// The file's (or caller's) field `path` with `value`.
    pub fn field_at(&self, path: &str, value: &dyn Display) -> String {
        match &self.file {
            Some(f) => format!("{}: {path}: {value}", shown(f)),
            None => format!("{path}: {value}"),
        }
    }

    /// A device's field: the flag that made the device, with its whole value, or the file's
    /// `section[index].field` with `value`.
    pub fn device_at(
        &self,
        origin: &Origin,
        section: &str,
        index: usize,
        field: &str,
        value: &dyn Display,
    ) -> String {
        match origin {
            Origin::Flag { flag, text } => format!("{flag} {}", quoted_if_needed(text)),
            Origin::Config => self.field_at(&format!("{section}[{index}].{field}"), value),
        }
    }
}

/// A path as a message shows a value: `""` when empty, escaped otherwise.
pub fn path_value(path: &Path) -> String {
    if path.as_os_str().is_empty() {
        "\"\"".into()
    } else {
        shown(path)
    }
}

/// `text` as a message shows it: bare when it is one plain word, quoted otherwise.
pub fn quoted_if_needed(text: &str) -> String {
    if !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\')
    {
        text.to_string()
    } else {
        format!("{text:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_fields_are_named_as_given() {
        let mut s = Sources::default();
        assert_eq!(
            s.at("machine-config.vcpu_count", &0),
            "machine-config.vcpu_count: 0"
        );
        s.file = Some("vm.json".into());
        assert_eq!(
            s.at("machine-config.vcpu_count", &0),
            "vm.json: machine-config.vcpu_count: 0"
        );
        s.set_by("machine-config.vcpu_count", "--vcpus");
        assert_eq!(s.at("machine-config.vcpu_count", &0), "--vcpus 0");
        assert_eq!(s.name("machine-config.vcpu_count"), "--vcpus");
        let flag = Origin::Flag {
            flag: "--disk",
            text: "a.img,ro".into(),
        };
        assert_eq!(
            s.device_at(&flag, "drives", 0, "path_on_host", &"a.img"),
            "--disk a.img,ro"
        );
        assert_eq!(
            s.device_at(&Origin::Config, "drives", 1, "path_on_host", &"\"\""),
            "vm.json: drives[1].path_on_host: \"\""
        );
        assert_eq!(quoted_if_needed("a b"), "\"a b\"");
        assert_eq!(path_value(Path::new("")), "\"\"");
    }
}
