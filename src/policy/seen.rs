//! Which policy files changed since the last run. Every run records a digest of each policy
//! file (the system's, the user's and the grants); the next run names the ones that differ. Whoever
//! changed them, you or something that got past the floor, the change is said out loud at the
//! next start instead of passing unnoticed.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The record's file name, kept next to the grants file.
pub const SEEN_FILE: &str = "policy-seen.toml";

#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    /// File path → SHA-256 of its content ("absent" when it did not exist).
    #[serde(default)]
    files: BTreeMap<String, String>,
}

const ABSENT: &str = "absent";

/// One file whose content differs from what the last run saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    pub path: PathBuf,
    pub what: &'static str,
}

impl std::fmt::Display for Changed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} since the last run",
            self.path.display(),
            self.what
        )
    }
}

fn digest(path: &Path) -> io::Result<String> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(format!("{:x}", Sha256::digest(&bytes))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(ABSENT.to_owned()),
        Err(e) => Err(e),
    }
}

/// Compares `files` with the record at `record`, writes the new record, and returns the files
/// that changed. The first run (no record) reports nothing. A record that does not parse is
/// replaced, and every file counts as changed: its history is unknown.
pub fn changed_since_last_run(record: &Path, files: &[PathBuf]) -> io::Result<Vec<Changed>> {
    let previous = match std::fs::read_to_string(record) {
        Ok(text) => Some(toml::from_str::<Record>(&text).unwrap_or_default()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let mut now = Record::default();
    let mut changed = Vec::new();
    for file in files {
        let key = file.to_string_lossy().into_owned();
        let digest = digest(file)?;
        if let Some(previous) = &previous {
            let what = match (
                previous.files.get(&key).map(String::as_str),
                digest.as_str(),
            ) {
                (Some(before), after) if before == after => None,
                (Some(ABSENT) | None, _) => Some("appeared"),
                (Some(_), ABSENT) => Some("was removed"),
                (Some(_), _) => Some("changed"),
            };
            // A file that is absent now and was never seen is no news.
            if let Some(what) =
                what.filter(|_| digest != ABSENT || previous.files.contains_key(&key))
            {
                changed.push(Changed {
                    path: file.clone(),
                    what,
                });
            }
        }
        now.files.insert(key, digest);
    }
    if let Some(dir) = record.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let text = toml::to_string(&now).map_err(io::Error::other)?;
    crate::files::write_bytes_atomically(
        record,
        format!(
            "# What the last deskhand run saw of its policy files; written by deskhand.\n{text}"
        )
        .as_bytes(),
    )?;
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_names_the_policy_files_changed_since_the_last_one() {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("data").join(SEEN_FILE);
        let policy = dir.path().join("policy.toml");
        let grants = dir.path().join("system.toml");
        std::fs::write(&policy, "schema_version = 1\n").unwrap();
        let files = [policy.clone(), grants.clone()];
        assert!(
            changed_since_last_run(&record, &files).unwrap().is_empty(),
            "first run"
        );
        assert!(
            changed_since_last_run(&record, &files).unwrap().is_empty(),
            "nothing changed"
        );

        std::fs::write(&policy, "schema_version = 1\npreset = \"permissive\"\n").unwrap();
        std::fs::write(&grants, "[[grant]]\n").unwrap();
        let changed = changed_since_last_run(&record, &files).unwrap();
        assert_eq!(
            changed,
            vec![
                Changed {
                    path: policy.clone(),
                    what: "changed"
                },
                Changed {
                    path: grants.clone(),
                    what: "appeared"
                },
            ]
        );
        assert_eq!(
            changed[0].to_string(),
            format!("{} changed since the last run", policy.display())
        );
        std::fs::remove_file(&grants).unwrap();
        assert_eq!(
            changed_since_last_run(&record, &files).unwrap(),
            vec![Changed {
                path: grants,
                what: "was removed"
            }]
        );
    }
}
