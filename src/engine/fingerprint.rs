//! Stage fingerprints and the reasons a stage is stale.
//!
//! A stage is fresh when its fingerprint equals the one recorded in `manifest.json` and its
//! outputs are intact. The fingerprint is a short hex hash of a [`FingerprintDetail`], which is
//! stored beside it so that a mismatch can be explained field by field, in a fixed order:
//!
//! | field | what is hashed | why |
//! |---|---|---|
//! | `engine_version` | simat's crate version | a new engine may write different bytes |
//! | `stage_version` | a per-stage integer bumped when its semantics change | code changes that alter outputs |
//! | `config` | the stage's config section, as canonical JSON (sorted keys), paths relative | parameters change outputs |
//! | `inputs` | BLAKE3 of each external source file, keyed by its file name | data changes outputs; moving or re-copying a tree does not |
//! | `upstream` | the output digest of each upstream stage | upstream reruns that change bytes invalidate downstream |
//!
//! Never hashed: modification times and absolute paths, so that a run directory or its inputs can
//! be moved or copied and stay fresh.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Everything a stage's fingerprint covers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FingerprintDetail {
    /// simat's version.
    pub engine_version: String,
    /// The stage's own code version.
    pub stage_version: u32,
    /// The stage's configuration, canonical JSON.
    pub config: serde_json::Value,
    /// Content hash of each external input file, by label.
    pub inputs: BTreeMap<String, String>,
    /// Output digest of each upstream stage, by stage name.
    pub upstream: BTreeMap<String, String>,
}

impl FingerprintDetail {
    /// The short hex hash stored in the manifest.
    pub fn hash(&self) -> String {
        let bytes = serde_json::to_vec(self).expect("fingerprint serialises");
        blake3::hash(&bytes).to_hex()[..16].to_string()
    }

    /// The first difference between `self` (now) and `old` (recorded), in a fixed order.
    pub fn first_difference(&self, old: &FingerprintDetail) -> Option<StaleReason> {
        if self.engine_version != old.engine_version || self.stage_version != old.stage_version {
            return Some(StaleReason::CodeChanged {
                old: format!("{} v{}", old.engine_version, old.stage_version),
                new: format!("{} v{}", self.engine_version, self.stage_version),
            });
        }
        if self.config != old.config {
            let (key, old_v, new_v) = first_json_difference("", &old.config, &self.config)
                .unwrap_or_else(|| {
                    (
                        String::new(),
                        old.config.to_string(),
                        self.config.to_string(),
                    )
                });
            return Some(StaleReason::ConfigChanged {
                key,
                old: old_v,
                new: new_v,
            });
        }
        for (label, hash) in &self.inputs {
            match old.inputs.get(label) {
                Some(h) if h == hash => {}
                other => {
                    return Some(StaleReason::InputChanged {
                        input: label.clone(),
                        old: other.map(|h| short(h)).unwrap_or_else(|| "none".into()),
                        new: short(hash),
                    })
                }
            }
        }
        if let Some(label) = old.inputs.keys().find(|k| !self.inputs.contains_key(*k)) {
            return Some(StaleReason::InputChanged {
                input: label.clone(),
                old: short(&old.inputs[label]),
                new: "none".into(),
            });
        }
        for (stage, digest) in &self.upstream {
            if old.upstream.get(stage) != Some(digest) {
                return Some(StaleReason::UpstreamRerun {
                    stage: stage.clone(),
                });
            }
        }
        None
    }
}

fn short(hash: &str) -> String {
    hash.chars().take(8).collect()
}

fn first_json_difference(
    prefix: &str,
    old: &serde_json::Value,
    new: &serde_json::Value,
) -> Option<(String, String, String)> {
    use serde_json::Value;
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) if x == y => {}
                    (Some(x), Some(y)) => {
                        return first_json_difference(&path, x, y)
                            .or_else(|| Some((path, x.to_string(), y.to_string())))
                    }
                    (x, y) => {
                        let show =
                            |v: Option<&Value>| v.map(|v| v.to_string()).unwrap_or("unset".into());
                        return Some((path, show(x), show(y)));
                    }
                }
            }
            None
        }
        (a, b) if a != b => Some((prefix.to_string(), a.to_string(), b.to_string())),
        _ => None,
    }
}

/// Why a stage must run. Serialised as tagged JSON (`{"reason": "config-changed", ...}`) for
/// machine logs, displayed as one human line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum StaleReason {
    /// The stage has never run in this run directory.
    FirstRun,
    /// `--force` named it or a stage it depends on.
    Forced,
    /// The last attempt failed.
    Failed {
        /// The recorded error.
        error: String,
    },
    /// The last attempt was interrupted (killed or crashed) before it finished.
    Interrupted,
    /// simat or the stage's code changed.
    CodeChanged {
        /// Old engine and stage version.
        old: String,
        /// New engine and stage version.
        new: String,
    },
    /// A configuration value changed.
    ConfigChanged {
        /// Dotted key within the stage's config.
        key: String,
        /// Recorded value (JSON).
        old: String,
        /// Current value (JSON).
        new: String,
    },
    /// An external input file's content changed.
    InputChanged {
        /// The input's label (its file name).
        input: String,
        /// Recorded hash prefix.
        old: String,
        /// Current hash prefix.
        new: String,
    },
    /// An upstream stage produced different outputs since this stage ran.
    UpstreamRerun {
        /// The upstream stage.
        stage: String,
    },
    /// A recorded output file is gone.
    OutputMissing {
        /// File name within the stage directory.
        file: String,
    },
    /// A recorded output file's content differs from what the stage wrote.
    OutputChanged {
        /// File name within the stage directory.
        file: String,
    },
}

impl fmt::Display for StaleReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StaleReason::FirstRun => write!(f, "never run"),
            StaleReason::Forced => write!(f, "forced"),
            StaleReason::Failed { error } => write!(f, "last run failed: {error}"),
            StaleReason::Interrupted => write!(f, "last run was interrupted"),
            StaleReason::CodeChanged { old, new } => write!(f, "code changed ({old} → {new})"),
            StaleReason::ConfigChanged { key, old, new } => {
                write!(f, "config `{key}` changed ({old} → {new})")
            }
            StaleReason::InputChanged { input, old, new } => {
                write!(f, "input {input} changed ({old} → {new})")
            }
            StaleReason::UpstreamRerun { stage } => write!(f, "upstream `{stage}` changed"),
            StaleReason::OutputMissing { file } => write!(f, "output {file} is missing"),
            StaleReason::OutputChanged { file } => write!(f, "output {file} was modified"),
        }
    }
}

/// The digest of a folder a stage wrote (crop PNGs, rendered images): BLAKE3 over every file
/// under it, by relative path in sorted order, with its length and its own BLAKE3; and the total
/// bytes. A file rewritten, added or removed changes it.
pub fn hash_folder(dir: &Path) -> Result<(u64, String)> {
    use rayon::prelude::*;
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(|e| Error::io("failed to list", &d, e))? {
            let entry = entry.map_err(|e| Error::io("failed to list", &d, e))?;
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    let hashed: Vec<(String, u64, blake3::Hash)> = files
        .par_iter()
        .map(|path| {
            let bytes = std::fs::read(path).map_err(|e| Error::io("failed to hash", path, e))?;
            let rel = path
                .strip_prefix(dir)
                .unwrap_or(path)
                .to_string_lossy()
                .into_owned();
            Ok((rel, bytes.len() as u64, blake3::hash(&bytes)))
        })
        .collect::<Result<_>>()?;
    let mut hasher = blake3::Hasher::new();
    let mut total = 0;
    for (rel, len, hash) in &hashed {
        hasher.update(rel.as_bytes());
        hasher.update(&[0]);
        hasher.update(&len.to_le_bytes());
        hasher.update(hash.as_bytes());
        total += len;
    }
    Ok((total, hasher.finalize().to_hex().to_string()))
}

/// Size and digest of an output: a file's BLAKE3, or [`hash_folder`] for a folder (its name
/// ends with `/` in the manifest).
pub fn hash_output(path: &Path, folder: bool) -> Result<(u64, String)> {
    if folder {
        return hash_folder(path);
    }
    let bytes = std::fs::metadata(path)
        .map_err(|e| Error::io("failed to stat output", path, e))?
        .len();
    Ok((bytes, hash_file(path)?))
}

pub use crate::io::hash_file;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_file_hashes_as_its_bytes_at_every_size_around_the_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let mib = 1 << 20;
        let kib = 1 << 10;
        for size in [
            0,
            1,
            64 * kib - 1,
            64 * kib,
            64 * kib + 1,
            3 * mib + 7,
            8 * mib - 1,
            8 * mib,
            8 * mib + 1,
            16 * mib + 5,
        ] {
            let bytes: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
            let path = dir.path().join(format!("f{size}"));
            std::fs::write(&path, &bytes).unwrap();
            assert_eq!(
                hash_file(&path).unwrap(),
                blake3::hash(&bytes).to_hex().to_string(),
                "{size} bytes"
            );
        }
        assert!(hash_file(&dir.path().join("missing")).is_err());
    }

    fn detail(config: serde_json::Value) -> FingerprintDetail {
        FingerprintDetail {
            engine_version: "0.1.0".into(),
            stage_version: 1,
            config,
            inputs: BTreeMap::from([("a.json".into(), "abcdef0123".into())]),
            upstream: BTreeMap::new(),
        }
    }

    #[test]
    fn config_difference_names_the_nested_key() {
        let old = detail(json!({"min_region_side": 32, "captions": {"default": "A"}}));
        let new = detail(json!({"min_region_side": 32, "captions": {"default": "B"}}));
        assert_ne!(old.hash(), new.hash());
        let reason = new.first_difference(&old).unwrap();
        assert_eq!(
            reason.to_string(),
            "config `captions.default` changed (\"A\" → \"B\")"
        );
        let tagged = serde_json::to_value(&reason).unwrap();
        assert_eq!(tagged["reason"], "config-changed");
        assert_eq!(tagged["key"], "captions.default");
    }

    #[test]
    fn identical_details_have_equal_hashes_and_no_difference() {
        let a = detail(json!({"x": 1}));
        let b = detail(json!({"x": 1}));
        assert_eq!(a.hash(), b.hash());
        assert_eq!(a.first_difference(&b), None);
    }

    #[test]
    fn code_change_comes_before_config_change() {
        let old = detail(json!({"x": 1}));
        let mut new = detail(json!({"x": 2}));
        new.stage_version = 2;
        assert!(matches!(
            new.first_difference(&old),
            Some(StaleReason::CodeChanged { .. })
        ));
    }
}
