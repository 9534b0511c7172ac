//! Remembered "always" answers, kept in their own file that only deskhand writes.
//!
//! Grants live apart from the policy file so that answering a prompt never rewrites what the
//! user wrote by hand. Every change happens under an exclusive lock and replaces the file
//! atomically, because two deskhand processes (an agent run and `deskhand policy grants
//! revoke`) may touch it at once, and a torn or lost write would silently drop or revive a
//! permission.

use std::collections::hash_map::DefaultHasher;
use std::fs::{self, File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::Intent;

const HEADER: &str = "# Remembered answers, written by deskhand. Do not edit by hand: use `deskhand policy grants list | revoke ID`.\n";

/// One remembered answer, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub id: String,
    pub created: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    pub rule: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    pub action: String,
    /// The riskiest intent granted, for people reading the file.
    pub intent: Intent,
    /// Every intent granted. Files written before this field grant `intent` alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub intents: Vec<Intent>,
}

/// What a grant answers for: the rule that asked, the app, the action kind and every intent
/// of the request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GrantScope {
    pub rule: String,
    pub app: Option<String>,
    pub action: String,
    /// Sorted, without repeats.
    pub intents: Vec<Intent>,
}

impl Grant {
    pub fn scope(&self) -> GrantScope {
        GrantScope {
            rule: self.rule.clone(),
            app: self.app.clone(),
            action: self.action.clone(),
            intents: self.granted_intents().to_vec(),
        }
    }

    /// The intents this grant answers for.
    pub fn granted_intents(&self) -> &[Intent] {
        if self.intents.is_empty() {
            std::slice::from_ref(&self.intent)
        } else {
            &self.intents
        }
    }

    /// A new grant for `scope`. Times outside what RFC 3339 can write (before 1970, after
    /// 9999) are clamped rather than refused: a broken clock must not crash the prompt.
    pub fn new(scope: GrantScope, now: SystemTime, expires: Option<SystemTime>) -> Grant {
        Grant {
            id: grant_id(&scope, now, 0),
            created: timestamp(now),
            expires: expires.map(timestamp),
            rule: scope.rule,
            app: scope.app,
            action: scope.action,
            intent: scope.intents.iter().max().copied().unwrap_or(Intent::Other),
            intents: scope.intents,
        }
    }

    /// Whether the grant still applies. An `expires` that does not parse counts as expired:
    /// a damaged date must not turn a time-limited grant into a permanent one.
    pub fn is_live(&self, now: SystemTime) -> bool {
        match &self.expires {
            None => true,
            Some(expires) => humantime::parse_rfc3339_weak(expires).is_ok_and(|t| t > now),
        }
    }

    /// Whether this grant answers a request with `scope` at `now`: only when every intent of
    /// the request was granted, so an answer about `ls` never covers a command that deletes.
    /// App names compare without case because window systems report the same program as
    /// "xterm" or "XTerm"; a grant for no app covers only requests with no app, never every
    /// app.
    pub fn covers(&self, scope: &GrantScope, now: SystemTime) -> bool {
        self.is_live(now)
            && self.rule == scope.rule
            && self.action == scope.action
            && scope
                .intents
                .iter()
                .all(|i| self.granted_intents().contains(i))
            && match (&self.app, &scope.app) {
                (None, None) => true,
                (Some(a), Some(b)) => a
                    .chars()
                    .flat_map(char::to_lowercase)
                    .eq(b.chars().flat_map(char::to_lowercase)),
                _ => false,
            }
    }
}

/// Ids only need to be unique within one file and short enough to type after `revoke`; a
/// clash within the file is resolved by the store with another salt.
fn grant_id(scope: &GrantScope, now: SystemTime, salt: u32) -> String {
    let mut hasher = DefaultHasher::new();
    scope.hash(&mut hasher);
    now.hash(&mut hasher);
    salt.hash(&mut hasher);
    let h = hasher.finish();
    format!("g-{:08x}", (h ^ (h >> 32)) as u32)
}

fn timestamp(t: SystemTime) -> String {
    // humantime panics before the epoch and fails after year 9999.
    const LAST_SECOND_OF_9999: u64 = 253_402_300_799;
    let latest = UNIX_EPOCH
        .checked_add(Duration::from_secs(LAST_SECOND_OF_9999))
        .unwrap_or(UNIX_EPOCH);
    let t = t.clamp(UNIX_EPOCH, latest);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error(
        "cannot {action} {path}: {source}\n  (check that the directory exists and that you may write to it, then try again)"
    )]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path}:{line}:{column}: {message}\n  (this file is written by deskhand, which will not change it while it does not parse: fix that line, or move the file aside to start again with no grants)"
    )]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error(
        "no grant with id {id:?} in {path}; `deskhand policy grants list` shows the ids there are"
    )]
    NotFound { id: String, path: PathBuf },
    #[error(
        "cannot write the grants to {path}: {message}\n  (this is a bug in deskhand; the file was left as it was)"
    )]
    Encode { path: PathBuf, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantFile {
    #[serde(default)]
    grant: Vec<Grant>,
}

#[derive(Serialize)]
struct GrantFileRef<'a> {
    grant: &'a [Grant],
}

/// The grants file at one path.
#[derive(Debug, Clone)]
pub struct GrantStore {
    path: PathBuf,
}

impl GrantStore {
    pub fn new(path: impl Into<PathBuf>) -> GrantStore {
        GrantStore { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All grants in the file, expired ones included (the caller decides with `covers`). A
    /// missing file holds no grants.
    pub fn load(&self) -> Result<Vec<Grant>, GrantError> {
        let bytes = match fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io("read", e)),
        };
        parse(&self.path, &bytes)
    }

    /// Remembers `scope`, unless a live grant already covers it: then that grant comes back
    /// with `false`.
    pub fn add(
        &self,
        scope: GrantScope,
        expires: Option<SystemTime>,
    ) -> Result<(Grant, bool), GrantError> {
        let _lock = self.lock()?;
        // Read under the lock: another process may have written since our caller last looked.
        let mut grants = self.load()?;
        let now = SystemTime::now();
        if let Some(existing) = grants.iter().find(|g| g.covers(&scope, now)) {
            return Ok((existing.clone(), false));
        }
        let mut grant = Grant::new(scope, now, expires);
        let mut salt = 0;
        while grants.iter().any(|g| g.id == grant.id) {
            salt += 1;
            grant.id = grant_id(&grant.scope(), now, salt);
        }
        grants.push(grant.clone());
        self.write(&grants)?;
        Ok((grant, true))
    }

    /// What tells one version of the file from the next: every write replaces the file, so
    /// its inode changes. `None` when there is no file.
    pub fn version(&self) -> Option<(u64, u64, SystemTime)> {
        use std::os::unix::fs::MetadataExt;
        let meta = fs::metadata(&self.path).ok()?;
        Some((meta.ino(), meta.len(), meta.modified().ok()?))
    }

    /// Removes the grant with `id` and returns it.
    pub fn revoke(&self, id: &str) -> Result<Grant, GrantError> {
        let not_found = || GrantError::NotFound {
            id: id.to_string(),
            path: self.path.clone(),
        };
        // Revoking from a file that does not exist must not create its directory or lock.
        match fs::symlink_metadata(&self.path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(not_found()),
            Err(e) => return Err(self.io("read", e)),
            Ok(_) => {}
        }
        let _lock = self.lock()?;
        let mut grants = self.load()?;
        let Some(found) = grants.iter().position(|g| g.id == id) else {
            return Err(not_found());
        };
        let removed = grants.remove(found);
        // Only a hand edit makes ids repeat; revoking one then revokes them all, since the
        // user cannot tell them apart in `list` either.
        grants.retain(|g| g.id != id);
        self.write(&grants)?;
        Ok(removed)
    }

    fn io(&self, action: &'static str, source: io::Error) -> GrantError {
        GrantError::Io {
            path: self.path.clone(),
            action,
            source,
        }
    }

    fn dir(&self) -> &Path {
        match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        }
    }

    /// Takes the store's exclusive lock, held until the returned file is dropped. The lock is
    /// on a sidecar file because the grants file itself is replaced by rename, and a lock on
    /// a replaced file no longer excludes anyone.
    fn lock(&self) -> Result<File, GrantError> {
        let dir = self.dir();
        fs::create_dir_all(dir).map_err(|source| GrantError::Io {
            path: dir.to_path_buf(),
            action: "create the directory",
            source,
        })?;
        let lock_path = sibling(&self.path, ".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| GrantError::Io {
                path: lock_path.clone(),
                action: "open the lock file",
                source,
            })?;
        file.lock().map_err(|source| GrantError::Io {
            path: lock_path,
            action: "lock",
            source,
        })?;
        Ok(file)
    }

    /// Replaces the file atomically: a reader sees the old grants or the new ones, never a
    /// half-written file, and a crash leaves one or the other.
    fn write(&self, grants: &[Grant]) -> Result<(), GrantError> {
        let body = if grants.is_empty() {
            String::new()
        } else {
            toml::to_string(&GrantFileRef { grant: grants }).map_err(|e| GrantError::Encode {
                path: self.path.clone(),
                message: e.to_string(),
            })?
        };
        let text = format!("{HEADER}\n{body}");
        crate::files::write_bytes_atomically(&self.path, text.as_bytes()).map_err(|source| {
            GrantError::Io {
                path: self.path.clone(),
                action: "replace",
                source,
            }
        })
    }
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

fn parse(path: &Path, bytes: &[u8]) -> Result<Vec<Grant>, GrantError> {
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            let valid = String::from_utf8_lossy(&bytes[..e.valid_up_to()]);
            let (line, column) = line_column(&valid, valid.len());
            return Err(GrantError::Parse {
                path: path.to_path_buf(),
                line,
                column,
                message: "the file is not valid UTF-8".to_string(),
            });
        }
    };
    match toml::from_str::<GrantFile>(text) {
        Ok(file) => Ok(file.grant),
        Err(e) => {
            let offset = e.span().map_or(0, |span| span.start);
            let (line, column) = line_column(text, offset);
            Err(GrantError::Parse {
                path: path.to_path_buf(),
                line,
                column,
                message: e.message().trim().to_string(),
            })
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn scope(rule: &str, app: Option<&str>) -> GrantScope {
        GrantScope {
            rule: rule.to_string(),
            app: app.map(str::to_string),
            action: "type".to_string(),
            intents: vec![Intent::Other],
        }
    }

    fn store() -> (tempfile::TempDir, GrantStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = GrantStore::new(dir.path().join("nested/deeper/grants.toml"));
        (dir, store)
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn add_then_load_round_trips() {
        let (_dir, store) = store();
        assert_eq!(store.load().unwrap(), Vec::new());
        let (g1, new1) = store
            .add(scope("ask-terminal-typing", Some("xterm")), None)
            .unwrap();
        let in_a_day = SystemTime::now() + Duration::from_secs(86_400);
        let (g2, new2) = store
            .add(scope("defaults.type", None), Some(in_a_day))
            .unwrap();
        assert!(new1 && new2);
        assert_eq!(store.load().unwrap(), vec![g1.clone(), g2.clone()]);
        assert_eq!(g1.scope(), scope("ask-terminal-typing", Some("xterm")));
        assert!(g2.expires.is_some() && g1.expires.is_none());

        let text = fs::read_to_string(store.path()).unwrap();
        assert!(text.starts_with(HEADER), "{text}");
        assert!(text.contains("[[grant]]"));
        assert!(text.contains("intent = \"other\""));
        // No `app` key at all for a request without an app.
        assert_eq!(text.matches("app = ").count(), 1, "{text}");
    }

    #[test]
    fn duplicate_is_skipped() {
        let (_dir, store) = store();
        let (first, new) = store.add(scope("r", Some("xterm")), None).unwrap();
        assert!(new);
        let (again, new) = store.add(scope("r", Some("XTerm")), None).unwrap();
        assert!(!new);
        assert_eq!(again, first);
        assert_eq!(store.load().unwrap().len(), 1);
    }

    #[test]
    fn expired_grant_is_not_live_and_is_replaced() {
        let (_dir, store) = store();
        let past = SystemTime::now() - Duration::from_secs(60);
        let (old, new) = store.add(scope("r", Some("xterm")), Some(past)).unwrap();
        assert!(new);
        assert!(!old.is_live(SystemTime::now()));
        assert!(!old.covers(&scope("r", Some("xterm")), SystemTime::now()));
        let (fresh, new) = store.add(scope("r", Some("xterm")), None).unwrap();
        assert!(new);
        assert_ne!(fresh.id, old.id);
        assert_eq!(store.load().unwrap(), vec![old, fresh]);
    }

    #[test]
    fn revoke_removes_and_unknown_is_not_found() {
        let (_dir, store) = store();
        let (a, _) = store.add(scope("a", None), None).unwrap();
        let (b, _) = store.add(scope("b", None), None).unwrap();
        assert_eq!(store.revoke(&a.id).unwrap(), a);
        assert_eq!(store.load().unwrap(), vec![b.clone()]);
        assert!(
            fs::read_to_string(store.path())
                .unwrap()
                .starts_with(HEADER)
        );

        let err = store.revoke("g-deadbeef").unwrap_err();
        assert!(matches!(&err, GrantError::NotFound { id, .. } if id == "g-deadbeef"));
        let msg = err.to_string();
        assert!(
            msg.contains("g-deadbeef") && msg.contains("grants.toml"),
            "{msg}"
        );

        assert_eq!(store.revoke(&b.id).unwrap(), b);
        assert_eq!(store.load().unwrap(), Vec::new());
    }

    #[test]
    fn revoke_from_missing_file_creates_nothing() {
        let (dir, store) = store();
        let err = store.revoke("g-00000000").unwrap_err();
        assert!(matches!(err, GrantError::NotFound { .. }));
        assert!(!dir.path().join("nested").exists());
    }

    #[test]
    fn broken_file_is_a_parse_error_and_is_never_rewritten() {
        let (_dir, store) = store();
        fs::create_dir_all(store.path().parent().unwrap()).unwrap();
        let broken = "# hand edited\n[[grant]]\nid = \"g-1\"\ncreated = 5\n";
        fs::write(store.path(), broken).unwrap();

        let err = store.load().unwrap_err();
        let GrantError::Parse { line, column, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!((*line, *column), (4, 11));
        let msg = err.to_string();
        assert!(msg.contains("grants.toml:4:11:"), "{msg}");

        assert!(matches!(
            store.add(scope("r", None), None),
            Err(GrantError::Parse { .. })
        ));
        assert!(matches!(store.revoke("g-1"), Err(GrantError::Parse { .. })));
        assert_eq!(fs::read_to_string(store.path()).unwrap(), broken);
    }

    #[test]
    fn unknown_fields_and_bad_intents_are_refused() {
        let (_dir, store) = store();
        fs::create_dir_all(store.path().parent().unwrap()).unwrap();
        let base = "[[grant]]\nid = \"g-1\"\ncreated = \"2026-11-27T23:40:00Z\"\nrule = \"r\"\naction = \"type\"\n";
        fs::write(
            store.path(),
            format!("{base}intent = \"other\"\nscope = \"all\"\n"),
        )
        .unwrap();
        assert!(matches!(store.load(), Err(GrantError::Parse { .. })));
        fs::write(store.path(), format!("{base}intent = \"everything\"\n")).unwrap();
        let err = store.load().unwrap_err();
        assert!(matches!(err, GrantError::Parse { line: 6, .. }), "{err}");
        fs::write(store.path(), b"[[grant]]\nid = \"\xff\"\n").unwrap();
        assert!(matches!(
            store.load(),
            Err(GrantError::Parse {
                line: 2,
                column: 7,
                ..
            })
        ));
    }

    #[test]
    fn concurrent_adds_lose_nothing() {
        let (_dir, store) = store();
        let store = Arc::new(store);
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || store.add(scope(&format!("rule-{i}"), None), None))
            })
            .collect();
        for t in threads {
            assert!(t.join().unwrap().unwrap().1);
        }
        let mut rules: Vec<String> = store.load().unwrap().into_iter().map(|g| g.rule).collect();
        rules.sort();
        let expected: Vec<String> = (0..8).map(|i| format!("rule-{i}")).collect();
        assert_eq!(rules, expected);
    }

    #[test]
    fn covers_compares_scope() {
        let now = at(1_800_000_000);
        let g = Grant::new(scope("r", Some("XTerm")), now, None);
        assert!(g.covers(&scope("r", Some("xterm")), now));
        assert!(g.covers(&scope("r", Some("XTERM")), now));
        assert!(!g.covers(&scope("r", None), now));
        assert!(!g.covers(&scope("r", Some("uxterm")), now));
        assert!(!g.covers(&scope("other", Some("xterm")), now));
        let mut s = scope("r", Some("xterm"));
        s.action = "key".into();
        assert!(!g.covers(&s, now));
        let mut s = scope("r", Some("xterm"));
        s.intents = vec![Intent::Login];
        assert!(!g.covers(&s, now));
        // Every intent of the request must have been granted.
        let mut both = scope("r", Some("xterm"));
        both.intents = vec![Intent::Install, Intent::Publish];
        let publish = Grant::new(
            GrantScope {
                intents: vec![Intent::Publish],
                ..both.clone()
            },
            now,
            None,
        );
        assert!(!publish.covers(&both, now));
        let granted_both = Grant::new(both.clone(), now, None);
        assert!(granted_both.covers(&both, now));
        assert!(granted_both.covers(
            &GrantScope {
                intents: vec![Intent::Install],
                ..both.clone()
            },
            now
        ));

        let none = Grant::new(scope("r", None), now, None);
        assert!(none.covers(&scope("r", None), now));
        assert!(!none.covers(&scope("r", Some("xterm")), now));
    }

    #[test]
    fn liveness_and_times() {
        let now = at(1_800_000_000);
        let g = Grant::new(scope("r", None), now, Some(now + Duration::from_secs(60)));
        assert!(g.id.starts_with("g-") && g.id.len() == 10);
        assert!(g.id[2..].bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(g.created, "2027-01-15T08:00:00Z");
        assert_eq!(g.expires.as_deref(), Some("2027-01-15T08:01:00Z"));
        assert!(g.is_live(now));
        assert!(g.is_live(now + Duration::from_secs(59)));
        assert!(!g.is_live(now + Duration::from_secs(60)));

        let mut broken = g.clone();
        broken.expires = Some("next tuesday".into());
        assert!(!broken.is_live(now));
        assert!(!broken.covers(&scope("r", None), now));

        // Different times give different ids for the same scope.
        assert_ne!(
            g.id,
            Grant::new(scope("r", None), at(1_800_000_001), None).id
        );

        // Clocks outside RFC 3339's range clamp instead of panicking.
        let early = Grant::new(scope("r", None), UNIX_EPOCH - Duration::from_secs(5), None);
        assert_eq!(early.created, "1970-01-01T00:00:00Z");
        let far = Grant::new(
            scope("r", None),
            now,
            Some(now + Duration::from_secs(400 * 365 * 86_400 * 25)),
        );
        assert_eq!(far.expires.as_deref(), Some("9999-12-31T23:59:59Z"));
        assert!(far.is_live(now));
    }

    #[test]
    fn line_column_counts_characters() {
        assert_eq!(line_column("abc", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_column("é\néé x", 7), (2, 3));
        assert_eq!(line_column("ab", 99), (1, 3));
    }
}
