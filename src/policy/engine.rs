//! The decision: floor, files, defaults, preset, grants and budgets, combined by one rule —
//! every match counts and the strictest wins.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::detect::has_word;
use super::file::{self, Layer, PolicyFile};
use super::rule::{Facts, FloorItem, Rule};
use super::{
    BudgetLimits, BudgetTracker, DetectorHit, Detectors, Grant, GrantError, GrantScope, GrantStore,
    Intent, NormalizedPoint, PolicyError, PolicyErrors, Preset, Request, Verdict, WindowRef,
    infer_intents_after, password_context,
};
use crate::input::{Action, Chord, ChordKey, NamedKey};

/// One rule (or default, preset entry, floor rule, budget) that applied to a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Match {
    /// The rule's id; built-in entries use reserved prefixes: `floor.`, `defaults.`,
    /// `preset.`, `budget.`.
    pub id: String,
    pub decision: Verdict,
    pub layer: Layer,
    /// `file:line`, or `built-in`.
    pub source: String,
    pub reason: String,
    /// Whether an ask from this entry may be answered "session" or "always".
    pub rememberable: bool,
    /// Whether such an answer lasts only for this run (`remember = "session"`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub session_only: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The policy's answer for one request, with everything needed to explain it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub decision: Verdict,
    /// The deciding rule's id; `None` when a default, the preset, a budget or locked mode
    /// decided.
    pub rule: Option<String>,
    pub layer: Layer,
    /// `file:line` of what decided, or `built-in`.
    pub source: String,
    pub reason: String,
    /// Whether this ask may be answered "session" or "always".
    pub rememberable: bool,
    /// Whether it may be remembered for this run only: "always" is not offered.
    #[serde(default, skip_serializing_if = "is_false")]
    pub session_only: bool,
    /// Every rule and entry that matched, deciding one included.
    pub matched: Vec<Match>,
    /// Detector names and counts; never the text they found.
    pub detector_hits: Vec<DetectorHit>,
    /// Declared and inferred intents together.
    pub intents: Vec<Intent>,
    /// Grants that turned an ask into this allow.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<String>,
    /// The floor entries a rule unlocked for this request, each with the rule and where it is
    /// ("floor.risky_intent (send_email) unlocked by rule 'x' at FILE:LINE").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unlocked: Vec<String>,
}

impl Decision {
    /// The ids a "session" or "always" answer must grant: every entry that asked.
    pub fn asking(&self) -> impl Iterator<Item = &Match> {
        self.matched.iter().filter(|m| m.decision == Verdict::Ask)
    }

    /// What decided, as the terminal says it: "rule 'x'", or the layer ("floor", "preset").
    pub fn decider(&self) -> String {
        match &self.rule {
            Some(rule) => format!("rule '{rule}'"),
            None => super::tune::layer_name(self.layer).to_owned(),
        }
    }

    /// Whether only the person may answer this ask: the floor's and the budgets' asks never
    /// go to `--yes` or to an MCP client, which an agent could be answering.
    pub fn only_the_person_answers(&self) -> bool {
        self.asking()
            .any(|m| matches!(m.layer, Layer::Floor | Layer::Budget))
    }

    /// The text the model is shown in its next prompt when the action was refused.
    pub fn refusal(&self) -> String {
        format!("denied by policy: {}", self.reason)
    }
}

const BUILT_IN: &str = "built-in";

/// Where deskhand keeps its policy and grants unless the environment moves them; protected
/// even when this engine was built from texts rather than loaded from these places.
const DEFAULT_OWN_FILES: &[&str] = &[
    "/etc/deskhand/policy.toml",
    "~/.config/deskhand/policy.toml",
    "~/.local/share/deskhand/grants.toml",
];

/// Chords that kill the X session, lock or leave it, or switch away from it.
const SESSION_CHORDS: &[&str] = &[
    // KDE Plasma: log out, shut down and reboot without confirmation.
    "ctrl+alt+shift+pagedown",
    "ctrl+alt+shift+pageup",
    "ctrl+alt+backspace",
    "ctrl+alt+delete",
    "ctrl+alt+shift+delete",
    "ctrl+alt+escape",
    "ctrl+alt+end",
    "ctrl+alt+l",
    "super+l",
    "super+shift+e",
    "super+shift+q",
    "alt+print",
    "ctrl+alt+f1",
    "ctrl+alt+f2",
    "ctrl+alt+f3",
    "ctrl+alt+f4",
    "ctrl+alt+f5",
    "ctrl+alt+f6",
    "ctrl+alt+f7",
    "ctrl+alt+f8",
    "ctrl+alt+f9",
    "ctrl+alt+f10",
    "ctrl+alt+f11",
    "ctrl+alt+f12",
];

/// Whether `chord` (normalized) ends, locks or leaves the session: the floor denies it.
pub(super) fn is_session_chord(chord: &str) -> bool {
    SESSION_CHORDS.contains(&chord)
}

/// A rule's unlock of floor entries, as `policy check` and the start of a run list it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unlock {
    pub rule: String,
    /// `file:line` of the rule.
    pub source: String,
    /// What it unlocks: "floor.risky_intent (send_email)".
    pub items: Vec<String>,
    pub decision: Verdict,
    /// `file:line` of the system layer's `[floor] locked = true` that refuses this unlock.
    pub refused_by: Option<String>,
}

impl fmt::Display for Unlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.refused_by {
            None => write!(
                f,
                "unlocked: {} (now {}) by rule '{}' at {}",
                self.items.join(", "),
                self.decision,
                self.rule,
                self.source
            ),
            Some(lock) => write!(
                f,
                "refused unlock: {} by rule '{}' at {}: the floor is locked by {lock}, so it stays in force",
                self.items.join(", "),
                self.rule,
                self.source
            ),
        }
    }
}

/// Where the policy's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyPaths {
    /// `/etc/deskhand/policy.toml` unless `DESKHAND_SYSTEM_POLICY` names another file, or says
    /// `none`.
    pub system: Option<PathBuf>,
    /// Whether a missing system file is an error: it was named explicitly.
    pub system_required: bool,
    /// `~/.config/deskhand/policy.toml` or `DESKHAND_POLICY`.
    pub user: PathBuf,
    /// `~/.local/share/deskhand/grants.toml` or `DESKHAND_GRANTS`.
    pub grants: PathBuf,
    /// The system file `DESKHAND_SYSTEM_POLICY` leaves out (by naming another file, or `none`).
    /// If it locks the floor it is loaded anyway: the admin's lock is not the user's to drop.
    pub dropped_system: Option<PathBuf>,
}

#[derive(Debug, Error)]
pub enum PolicyPathsError {
    #[error(
        "no home directory to keep the policy in; set DESKHAND_POLICY and DESKHAND_GRANTS to file paths"
    )]
    NoHomeDir,
    #[error(
        "DESKHAND_SYSTEM_POLICY is set but empty; unset it to use /etc/deskhand/policy.toml, set it to a policy file's path, or to \"none\" to run without a system layer (an empty value would drop it silently)"
    )]
    EmptySystemOverride,
}

impl PolicyPaths {
    pub fn from_env() -> Result<PolicyPaths, PolicyPathsError> {
        use PolicyPathsError::NoHomeDir;
        let var = |key: &str| std::env::var_os(key);
        let dirs = directories::ProjectDirs::from("", "", "deskhand");
        let user = match var("DESKHAND_POLICY").filter(|v| !v.is_empty()) {
            Some(path) => PathBuf::from(path),
            None => dirs
                .as_ref()
                .ok_or(NoHomeDir)?
                .config_dir()
                .join("policy.toml"),
        };
        let grants = match var("DESKHAND_GRANTS").filter(|v| !v.is_empty()) {
            Some(path) => PathBuf::from(path),
            None => dirs
                .as_ref()
                .ok_or(NoHomeDir)?
                .data_dir()
                .join("grants.toml"),
        };
        let default_system = PathBuf::from("/etc/deskhand/policy.toml");
        let (system, system_required, dropped_system) = match var("DESKHAND_SYSTEM_POLICY") {
            Some(path) if path.is_empty() => return Err(PolicyPathsError::EmptySystemOverride),
            Some(path) if path == "none" => (None, false, Some(default_system)),
            Some(path) if Path::new(&path) == default_system => (Some(default_system), true, None),
            Some(path) => (Some(PathBuf::from(path)), true, Some(default_system)),
            None => (Some(default_system), false, None),
        };
        Ok(PolicyPaths {
            system,
            system_required,
            user,
            grants,
            dropped_system,
        })
    }
}

/// The loaded policy: every layer, ready to decide. A broken policy gives a locked engine.
#[derive(Debug, Clone)]
pub struct PolicyEngine {
    files: Vec<PolicyFile>,
    detectors: Detectors,
    budgets: BudgetLimits,
    grants: Vec<Grant>,
    session_grants: Vec<Grant>,
    locked: Option<PolicyErrors>,
    notes: Vec<String>,
    /// deskhand's own policy and grants files: input that would edit them is refused.
    own_files: Vec<PathBuf>,
    /// `file:line` of the system layer's `[floor] locked = true`: user files unlock nothing.
    floor_lock: Option<String>,
}

impl PolicyEngine {
    /// Loads the system file, the user's file and the grants. Never fails: a broken policy
    /// comes back locked, with its errors in `locked()`.
    pub fn load(paths: &PolicyPaths) -> PolicyEngine {
        PolicyEngine::try_load(paths).unwrap_or_else(PolicyEngine::locked)
    }

    /// Like `load`, but a broken policy is an error.
    pub fn try_load(paths: &PolicyPaths) -> Result<PolicyEngine, PolicyErrors> {
        PolicyEngine::try_load_with(paths, None)
    }

    /// Like `try_load`, with `user_addition` appended to the user's file as if it were
    /// written there: how `policy suggest` checks a candidate rule before printing it.
    pub fn try_load_with(
        paths: &PolicyPaths,
        user_addition: Option<&str>,
    ) -> Result<PolicyEngine, PolicyErrors> {
        let mut sources = Vec::new();
        let mut errors = Vec::new();
        let mut notes = Vec::new();
        let mut read = |layer: Layer,
                        path: &Path,
                        missing_ok: bool,
                        missing_note: Option<String>| {
            match std::fs::read_to_string(path) {
                Ok(text) => sources.push((layer, path.to_path_buf(), text)),
                Err(e) if e.kind() == io::ErrorKind::NotFound && missing_ok => {
                    notes.extend(missing_note)
                }
                Err(e) => errors.push(PolicyError {
                    path: path.to_path_buf(),
                    line: 1,
                    column: 1,
                    message: format!(
                        "cannot read the policy file: {e}{}",
                        if layer == Layer::System && !missing_ok {
                            " (DESKHAND_SYSTEM_POLICY names it: fix the path, or unset the variable to use /etc/deskhand/policy.toml)"
                        } else {
                            ""
                        }
                    ),
                }),
            }
        };
        if let Some(system) = &paths.system {
            read(Layer::System, system, !paths.system_required, None);
        }
        read(
            Layer::User,
            &paths.user,
            true,
            Some(format!(
                "no policy file at {}; the built-in strict preset decides. Write one with `deskhand policy init`.",
                paths.user.display()
            )),
        );
        if let Some(dropped) = &paths.dropped_system
            && let Ok(text) = std::fs::read_to_string(dropped)
            && file::parse(dropped, &text, Layer::System).is_ok_and(|f| f.floor_locked.is_some())
        {
            notes.push(format!(
                "DESKHAND_SYSTEM_POLICY does not drop {}: it locks the floor ([floor] locked = true), so it stays in force",
                dropped.display()
            ));
            sources.insert(0, (Layer::System, dropped.clone(), text));
        }
        if !errors.is_empty() {
            return Err(PolicyErrors(errors));
        }
        if let Some(addition) = user_addition {
            match sources
                .iter_mut()
                .find(|(layer, _, _)| *layer == Layer::User)
            {
                Some((_, _, text)) => {
                    text.push('\n');
                    text.push_str(addition);
                }
                None => sources.push((Layer::User, paths.user.clone(), addition.to_owned())),
            }
        }
        let mut engine = PolicyEngine::from_sources(sources)?;
        engine.notes.extend(notes);
        engine.own_files.extend(
            paths
                .system
                .iter()
                .chain([&paths.user, &paths.grants])
                .cloned(),
        );
        match GrantStore::new(&paths.grants).load() {
            Ok(grants) => engine.grants = grants,
            // Ignoring grants only makes decisions stricter, so the run may go on.
            Err(e) => engine
                .notes
                .push(format!("ignoring remembered grants: {e}")),
        }
        Ok(engine)
    }

    /// Builds the policy from file texts, in layer order (system, then user). Runs every
    /// inline example; a failing one is an error like any other.
    pub fn from_sources(
        sources: Vec<(Layer, PathBuf, String)>,
    ) -> Result<PolicyEngine, PolicyErrors> {
        let mut files = Vec::new();
        let mut errors = Vec::new();
        for (layer, path, text) in &sources {
            match file::parse(path, text, *layer) {
                Ok(file) => files.push(file),
                Err(PolicyErrors(mut e)) => errors.append(&mut e),
            }
        }
        let mut seen: Vec<(&str, &PolicyFile)> = Vec::new();
        for file in &files {
            for rule in &file.rules {
                if let Some((_, first)) = seen.iter().find(|(id, _)| *id == rule.id) {
                    if first.path != file.path {
                        errors.push(PolicyError {
                            path: file.path.clone(),
                            line: rule.line,
                            column: 1,
                            message: format!(
                                "duplicate rule id '{}': {} already has it; grants name rules by id, so ids must differ across files",
                                rule.id,
                                first.path.display()
                            ),
                        });
                    }
                } else {
                    seen.push((&rule.id, file));
                }
            }
        }
        if !errors.is_empty() {
            return Err(PolicyErrors(errors));
        }
        let mut detectors = Detectors::builtin();
        for file in &files {
            for (name, regex, secret) in &file.detectors {
                detectors.add_regex(name, regex.clone(), *secret);
            }
        }
        let floor_lock = files
            .iter()
            .filter(|f| f.layer == Layer::System)
            .find_map(|f| f.floor_locked.map(|line| f.source(line)));
        let engine = PolicyEngine {
            budgets: BudgetLimits::combine(files.iter().map(|f| &f.budgets)),
            files,
            floor_lock,
            detectors,
            grants: Vec::new(),
            session_grants: Vec::new(),
            locked: None,
            notes: Vec::new(),
            own_files: DEFAULT_OWN_FILES.iter().map(PathBuf::from).collect(),
        };
        let failures = engine.failing_examples();
        if failures.is_empty() {
            Ok(engine)
        } else {
            Err(PolicyErrors(failures))
        }
    }

    /// A policy that only lets deskhand observe and abort, because `errors` broke the real one.
    pub fn locked(errors: PolicyErrors) -> PolicyEngine {
        PolicyEngine {
            files: Vec::new(),
            detectors: Detectors::builtin(),
            budgets: BudgetLimits::built_in(),
            grants: Vec::new(),
            session_grants: Vec::new(),
            locked: Some(errors),
            notes: Vec::new(),
            own_files: Vec::new(),
            floor_lock: None,
        }
    }

    /// The errors that locked this policy, if it is locked.
    pub fn locked_by(&self) -> Option<&PolicyErrors> {
        self.locked.as_ref()
    }

    /// Things worth telling the user that are not errors (a missing file, ignored grants).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    pub fn detectors(&self) -> &Detectors {
        &self.detectors
    }

    pub fn budgets(&self) -> &BudgetLimits {
        &self.budgets
    }

    pub fn grants(&self) -> &[Grant] {
        &self.grants
    }

    /// Number of rules over all files.
    pub fn rule_count(&self) -> usize {
        self.files.iter().map(|f| f.rules.len()).sum()
    }

    /// Number of inline examples over all files (all of them passed, or loading failed).
    pub fn example_count(&self) -> usize {
        self.files.iter().map(|f| f.examples.len()).sum()
    }

    /// Whether screenshots may go to a remote engine at `host` (`deskhand run --engine`):
    /// loopback always; another host only when a policy file's `[engine] allowed_hosts` names
    /// it and, where the system layer has such a list, that list names it too (the admin's
    /// list binds every user). `Ok` says what allowed it; `Err` says why not and where to
    /// change that.
    pub fn engine_host(&self, host: &str) -> Result<String, String> {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_lowercase();
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if loopback {
            return Ok(format!("{host} is this machine (loopback)"));
        }
        let system = self
            .files
            .iter()
            .filter(|f| f.layer == Layer::System)
            .find_map(|f| {
                f.engine_hosts
                    .as_ref()
                    .map(|(hosts, line)| (hosts, f.source(*line)))
            });
        if let Some((hosts, source)) = &system
            && !hosts.contains(&host)
        {
            return Err(format!(
                "{host} is not in the system policy's [engine] allowed_hosts ({source}), which binds every user of this machine; screenshots go only to the hosts it lists"
            ));
        }
        let listed = self.files.iter().find_map(|f| {
            f.engine_hosts
                .as_ref()
                .filter(|(hosts, _)| hosts.contains(&host))
                .map(|(_, line)| f.source(*line))
        });
        match listed {
            Some(source) => Ok(format!(
                "{host} is listed in [engine] allowed_hosts at {source}"
            )),
            None => {
                let file = self
                    .files
                    .iter()
                    .find(|f| f.layer == Layer::User)
                    .map_or_else(
                        || "your policy file (deskhand policy init)".to_owned(),
                        |f| f.path.display().to_string(),
                    );
                Err(format!(
                    "{host} is another machine, and screenshots would go there; no policy file lists it. If that is what you want, add it to [engine] allowed_hosts = [\"{host}\"] in {file}"
                ))
            }
        }
    }

    /// The files in force and their presets, for `policy check`.
    pub fn files(&self) -> Vec<(PathBuf, Preset)> {
        self.files
            .iter()
            .map(|f| (f.path.clone(), f.preset))
            .collect()
    }

    /// Every rule that unlocks floor entries, and whether the system layer's lock refuses it.
    pub fn unlocks(&self) -> Vec<Unlock> {
        let mut unlocks = Vec::new();
        for file in &self.files {
            for rule in file.rules.iter().filter(|r| !r.unlock.is_empty()) {
                let items = rule
                    .unlock
                    .iter()
                    .map(|(item, names)| format!("{} ({})", item.id(), names.join(", ")))
                    .collect();
                unlocks.push(Unlock {
                    rule: rule.id.clone(),
                    source: file.source(rule.line),
                    items,
                    decision: rule.decision,
                    refused_by: self.refuses_unlocks_of(file.layer).cloned(),
                });
            }
        }
        unlocks
    }

    /// The lock that refuses the unlocks of a file in `layer`: the system layer's lock binds
    /// the user's file only.
    fn refuses_unlocks_of(&self, layer: Layer) -> Option<&String> {
        self.floor_lock.as_ref().filter(|_| layer != Layer::System)
    }

    pub fn with_grants(mut self, grants: Vec<Grant>) -> PolicyEngine {
        self.grants = grants;
        self
    }

    /// Remembers an answer for the rest of this process.
    pub fn add_session_grant(&mut self, grant: Grant) {
        self.session_grants.push(grant);
    }

    pub fn add_grant(&mut self, grant: Grant) {
        self.grants.push(grant);
    }

    pub fn decide(&self, request: &Request) -> Decision {
        self.decide_at(request, SystemTime::now())
    }

    /// Decides `request`; `now` is only used to expire grants.
    pub fn decide_at(&self, request: &Request, now: SystemTime) -> Decision {
        self.decide_typed(&TypedText::default(), request, now)
    }

    /// Decides `request`, given `typed`: the text this run already sent to each window.
    /// Detectors and command inference read it together with what the action types, and
    /// `window_text_matches` reads it whole.
    ///
    /// A pointer action is decided for the active window and for every window under its
    /// points, and the strictest of those decisions stands: a click lands on the window under
    /// the pointer, which need not be the one with the focus.
    fn decide_typed(&self, typed: &TypedText, request: &Request, now: SystemTime) -> Decision {
        let mut decision = self.decide_for_window(typed.before(&request.window()), request, now);
        for window in &request.under_pointer {
            let other =
                self.decide_for_window(typed.before(window), &request.in_window(window), now);
            // Stricter verdict first; between two asks, the one that may not be remembered.
            let strictness = |d: &Decision| (d.decision, !d.rememberable, d.session_only);
            if strictness(&other) > strictness(&decision) {
                let name = window
                    .app
                    .as_deref()
                    .or(window.title.as_deref())
                    .unwrap_or("unknown");
                let mut other = other;
                other.reason = format!("the window under the pointer ({name}): {}", other.reason);
                decision = other;
            }
        }
        decision
    }

    fn decide_for_window(
        &self,
        typed_before: &str,
        request: &Request,
        now: SystemTime,
    ) -> Decision {
        if let Some(errors) = &self.locked {
            return locked_decision(errors, &request.action);
        }
        let facts = self.facts(request, typed_before);
        let matching: Vec<(&PolicyFile, &Rule)> = self
            .files
            .iter()
            .flat_map(|file| file.rules.iter().map(move |rule| (file, rule)))
            .filter(|(_, rule)| rule.matches(&facts))
            .collect();
        let mut unlocks = Unlocks::default();
        for (file, rule) in &matching {
            if self.refuses_unlocks_of(file.layer).is_none() {
                unlocks.add(rule, file.source(rule.line));
            }
        }
        let (mut matched, unlocked) =
            floor_matches(&facts, &self.detectors, &self.own_files, &unlocks);
        for (file, rule) in matching {
            matched.push(Match {
                id: rule.id.clone(),
                decision: rule.decision,
                layer: file.layer,
                source: file.source(rule.line),
                reason: rule.reason.clone(),
                rememberable: rule.remember != super::Remember::Never,
                session_only: rule.remember == super::Remember::Session,
            });
        }
        if matched.is_empty() {
            matched = self.fallbacks(&facts);
        }
        let mut decision = combine(matched, &facts);
        decision.unlocked = unlocked;
        if decision.decision == Verdict::Ask && decision.rememberable {
            self.apply_grants(&mut decision, request, now);
        }
        decision
    }

    fn facts<'a>(&self, request: &'a Request, typed_before: &'a str) -> Facts<'a> {
        let action = &request.action;
        let title = request.title.as_deref().unwrap_or_default();
        let mut intents = request.inferred_intents.clone();
        intents.push(request.declared_intent);
        // What a paste inserts is judged as if it were typed.
        let typed = request.entered_text();
        let pastes = !action.pastes().is_empty();
        intents.extend(infer_intents_after(
            typed_before,
            action,
            typed.as_deref(),
            request.app.as_deref(),
            Some(title),
        ));
        intents.sort();
        intents.dedup();
        if intents.len() > 1 {
            // A specific intent replaces "other": the stricter reading wins.
            intents.retain(|i| *i != Intent::Other);
        }

        let mut hits = Vec::new();
        if let Some(text) = &typed {
            hits = self.detectors.scan_after(typed_before, text);
            if password_context(request.app.as_deref(), request.title.as_deref()) {
                add_hit(&mut hits, "password_context", true);
            }
        }
        for name in &request.detector_hits {
            add_hit(&mut hits, name, self.detectors.is_secret(name));
        }
        hits.sort_by(|a, b| a.name.cmp(&b.name));

        Facts {
            typed_before,
            kind: action.kind(),
            // A drag that never leaves the pressed widget clicks it; a paste types.
            also_kind: if pastes {
                Some("type")
            } else {
                action.is_click_like_drag().then_some("click")
            },
            paste_unread: pastes && request.pasted.is_none(),
            app: request.app.as_ref().map(|a| a.to_lowercase()),
            title,
            chord: action.chord().ok().flatten().map(|c| c.normalized()),
            caps_lock: matches!(
                action.chord(),
                Ok(Some(Chord {
                    key: ChordKey::Named(NamedKey::CapsLock),
                    ..
                }))
            ),
            typed,
            intents,
            hits,
            points: &request.points,
        }
    }

    /// What decides when no rule matched: each file's default for the kind, or its preset.
    /// With no file at all, the strict preset.
    fn fallbacks(&self, facts: &Facts) -> Vec<Match> {
        let mut entries = Vec::new();
        let mut keys = vec![facts.kind];
        keys.extend(facts.also_kind);
        if !facts.hits.is_empty() {
            keys.push("detector_hit");
        }
        for key in keys {
            let preset_says = |preset: Preset| {
                if key == "detector_hit" {
                    preset.detector_fallback()
                } else {
                    preset.fallback(key)
                }
            };
            if self.files.is_empty() {
                let verdict = preset_says(Preset::Strict);
                entries.push(Match {
                    id: format!("preset.strict.{key}"),
                    decision: verdict,
                    layer: Layer::Preset,
                    source: BUILT_IN.into(),
                    reason: format!(
                        "no policy file: the built-in strict preset says {verdict} for {key}"
                    ),
                    rememberable: true,
                    session_only: false,
                });
            }
            for file in &self.files {
                let entry = match file.defaults.get(key) {
                    Some(&(verdict, line)) => Match {
                        id: format!("defaults.{key}"),
                        decision: verdict,
                        layer: Layer::Defaults,
                        source: file.source(line),
                        reason: format!("no rule matched; [defaults] {key} = \"{verdict}\""),
                        rememberable: true,
                        session_only: false,
                    },
                    None => {
                        let verdict = preset_says(file.preset);
                        Match {
                            id: format!("preset.{}.{key}", file.preset),
                            decision: verdict,
                            layer: Layer::Preset,
                            source: file.source(file.preset_line),
                            reason: format!(
                                "no rule matched; the {} preset says {verdict} for {key}",
                                file.preset
                            ),
                            rememberable: true,
                            session_only: false,
                        }
                    }
                };
                entries.push(entry);
            }
        }
        entries
    }

    /// Turns an ask into an allow when live grants cover every entry that asked.
    fn apply_grants(&self, decision: &mut Decision, request: &Request, now: SystemTime) {
        let mut used = Vec::new();
        let mut session_used = false;
        for asking in decision.asking() {
            let scope = grant_scope(asking, request, &decision.intents);
            if let Some(grant) = self.grants.iter().find(|g| g.covers(&scope, now)) {
                used.push(grant.id.clone());
            } else if let Some(grant) = self.session_grants.iter().find(|g| g.covers(&scope, now)) {
                used.push(grant.id.clone());
                session_used = true;
            } else {
                return;
            }
        }
        decision.decision = Verdict::Allow;
        decision.layer = if session_used {
            Layer::Session
        } else {
            Layer::Grants
        };
        decision.reason = format!(
            "you answered \"{}\" before ({}): {}",
            if session_used { "session" } else { "always" },
            used.join(", "),
            decision.reason
        );
        decision.grants = used;
    }

    /// The examples whose decision differs from what they expect, as errors.
    fn failing_examples(&self) -> Vec<PolicyError> {
        let mut failures = Vec::new();
        // A user's examples describe the user's file, unlocks included; the admin's lock is
        // reported as refusing them, and does not break the user's policy.
        let unlocked = self.floor_lock.as_ref().map(|_| PolicyEngine {
            floor_lock: None,
            ..self.clone()
        });
        for file in &self.files {
            let judge = match &unlocked {
                Some(engine) if file.layer != Layer::System => engine,
                _ => self,
            };
            for example in &file.examples {
                let mut request = Request::new(example.action.clone())
                    .with_window(example.app.clone(), example.title.clone())
                    .with_intent(example.intent);
                if let Some((monitor, [x, y])) = example.point {
                    request.points = vec![NormalizedPoint { monitor, x, y }];
                }
                let decision = judge.decide(&request);
                if decision.decision != example.expect {
                    failures.push(PolicyError {
                        path: file.path.clone(),
                        line: example.line,
                        column: example.column,
                        message: format!(
                            "example of rule '{}' expects {}, but the policy decides {}: {} ({}{})",
                            example.rule,
                            example.expect,
                            decision.decision,
                            decision.reason,
                            decision
                                .rule
                                .as_ref()
                                .map(|r| format!("rule '{r}' at "))
                                .unwrap_or_default(),
                            decision.source
                        ),
                    });
                }
            }
        }
        failures
    }
}

/// What a grant for `asking`'s ask on `request` covers: that rule, this app, this action kind,
/// and these intents, all of them.
fn grant_scope(asking: &Match, request: &Request, intents: &[Intent]) -> GrantScope {
    let mut intents = intents.to_vec();
    if intents.is_empty() {
        intents.push(Intent::Other);
    }
    GrantScope {
        rule: asking.id.clone(),
        app: request.app.clone(),
        action: request.action.kind().to_owned(),
        intents,
    }
}

fn add_hit(hits: &mut Vec<DetectorHit>, name: &str, secret: bool) {
    match hits.iter_mut().find(|h| h.name == name) {
        Some(hit) => hit.secret |= secret,
        None => hits.push(DetectorHit {
            name: name.to_owned(),
            secret,
            count: 1,
        }),
    }
}

/// The unlocks of the rules that match one request, by floor entry.
#[derive(Default)]
struct Unlocks<'r> {
    /// (floor entry, what it unlocks, "rule 'ID' at FILE:LINE")
    by: Vec<(FloorItem, &'r [String], String)>,
}

impl<'r> Unlocks<'r> {
    fn add(&mut self, rule: &'r Rule, source: String) {
        for (item, names) in &rule.unlock {
            self.by
                .push((*item, names, format!("rule '{}' at {source}", rule.id)));
        }
    }

    /// The rule that unlocks `name` (an intent, a detector, a chord) of `item`, if any.
    fn of(&self, item: FloorItem, name: &str) -> Option<&str> {
        self.by
            .iter()
            .find(|(i, names, _)| *i == item && names.iter().any(|n| n == name))
            .map(|(_, _, by)| by.as_str())
    }

    /// Splits `names` into those still under the floor and, for those unlocked, the lines a
    /// decision reports.
    fn split<'n>(
        &self,
        item: FloorItem,
        names: Vec<&'n str>,
        unlocked: &mut Vec<String>,
    ) -> Vec<&'n str> {
        let mut locked = Vec::new();
        for name in names {
            match self.of(item, name) {
                Some(by) => unlocked.push(format!("{} ({name}) unlocked by {by}", item.id())),
                None => locked.push(name),
            }
        }
        locked
    }
}

/// The program name deskhand's own windows have (`ActiveWindow::app_name`, from the process).
const OWN_PROGRAM: &str = "deskhand";

/// The built-in rules no file can remove, less what matching rules unlock; and the unlocks
/// that applied.
fn floor_matches(
    facts: &Facts,
    detectors: &Detectors,
    own_files: &[PathBuf],
    unlocks: &Unlocks,
) -> (Vec<Match>, Vec<String>) {
    let floor = |id: &str, decision: Verdict, reason: String| Match {
        id: id.to_owned(),
        decision,
        layer: Layer::Floor,
        source: BUILT_IN.into(),
        reason,
        rememberable: false,
        session_only: false,
    };
    let mut matched = Vec::new();
    let mut unlocked = Vec::new();
    let secrets: Vec<&str> = facts
        .hits
        .iter()
        .filter(|h| h.secret || detectors.is_secret(&h.name))
        .map(|h| h.name.as_str())
        .collect();
    // Key presses that enter characters are typing too.
    if facts.typed.is_some() {
        let secrets = unlocks.split(FloorItem::Secret, secrets, &mut unlocked);
        if !secrets.is_empty() {
            matched.push(floor(
                FloorItem::Secret.id(),
                Verdict::Deny,
                format!(
                    "typing a detected secret ({}) is never allowed",
                    secrets.join(", ")
                ),
            ));
        }
    }
    if facts.paste_unread {
        matched.push(floor(
            "floor.paste_unread",
            Verdict::Ask,
            "this pastes text that could not be read, so no rule could judge it".into(),
        ));
    }
    if facts.caps_lock {
        matched.push(floor(
            "floor.caps_lock",
            Verdict::Deny,
            "Caps Lock changes what every later key types, behind the detectors' back; type capitals as capitals".into(),
        ));
    }
    // Another deskhand process (a second run, `deskhand act` driven by an agent) could answer
    // this one's ask dialog; within one process the executor already refuses its area.
    if facts.app.as_deref() == Some(OWN_PROGRAM)
        && !matches!(facts.kind, "move" | "wait" | "done" | "fail" | "call_user")
    {
        matched.push(floor(
            "floor.own_window",
            Verdict::Deny,
            "this is a window of deskhand's own (its ask dialog): only the person answers it, never an agent".into(),
        ));
    }
    if touches_own_files(facts, own_files) {
        matched.push(floor(
            "floor.own_files",
            Verdict::Deny,
            "deskhand's policy and grants are changed by you, never by the agent: no input into a window or command that names them".into(),
        ));
    }
    if let Some(chord) = &facts.chord
        && is_session_chord(chord)
        && !unlocks
            .split(FloorItem::SessionChord, vec![chord.as_str()], &mut unlocked)
            .is_empty()
    {
        matched.push(floor(
            FloorItem::SessionChord.id(),
            Verdict::Deny,
            format!("{chord} kills, locks or leaves the desktop session"),
        ));
    }
    let risky: Vec<&str> = facts
        .intents
        .iter()
        .filter(|i| i.is_floor())
        .map(|i| i.name())
        .collect();
    let risky = unlocks.split(FloorItem::RiskyIntent, risky, &mut unlocked);
    if !risky.is_empty() {
        matched.push(floor(
            FloorItem::RiskyIntent.id(),
            Verdict::Ask,
            format!(
                "{} always asks, and the answer is never remembered",
                risky.join(", ")
            ),
        ));
    }
    (matched, unlocked)
}

/// Whether input goes to deskhand's own policy or grants: a window whose title names one of
/// the files (an editor shows the file and its folder) or its folder, or typed text that
/// names one (`>> ~/.config/deskhand/policy.toml`, `DESKHAND_POLICY=…`). Only pointer moves,
/// waits and the terminal actions get through.
fn touches_own_files(facts: &Facts, own_files: &[PathBuf]) -> bool {
    if matches!(facts.kind, "move" | "wait" | "done" | "fail" | "call_user") {
        return false;
    }
    let title = facts.title.to_lowercase();
    let typed = facts.typed.as_deref().unwrap_or_default().to_lowercase();
    const OWN_PLACES: &[&str] = &[
        ".config/deskhand",
        ".local/share/deskhand",
        "/etc/deskhand",
        "deskhand_policy",
        "deskhand_grants",
        "deskhand_system_policy",
    ];
    if OWN_PLACES
        .iter()
        .any(|place| title.contains(place) || typed.contains(place))
    {
        return true;
    }
    let has_word = |hay: &str, word: &str| !word.is_empty() && has_word(hay, word, true);
    let home = std::env::var("HOME").unwrap_or_default();
    own_files.iter().any(|path| {
        let full = path.to_string_lossy().to_lowercase();
        let tilde = (!home.is_empty())
            .then(|| path.strip_prefix(&home).ok())
            .flatten()
            .map(|rest| format!("~/{}", rest.to_string_lossy().to_lowercase()));
        let names =
            |hay: &str| hay.contains(&full) || tilde.as_ref().is_some_and(|t| hay.contains(t));
        let file = path.file_name().map(|f| f.to_string_lossy().to_lowercase());
        let folder = path
            .parent()
            .and_then(|p| p.file_name())
            .map(|f| f.to_string_lossy().to_lowercase());
        // Editors title a window with the file's name and its folder's.
        let file_and_folder = |hay: &str| match (&file, &folder) {
            (Some(file), Some(folder)) => has_word(hay, file) && has_word(hay, folder),
            _ => false,
        };
        names(&title) || names(&typed) || file_and_folder(&title)
    })
}

/// The strictest entry decides; among equals, the first in layer and file order.
fn combine(matched: Vec<Match>, facts: &Facts) -> Decision {
    let verdict = matched
        .iter()
        .map(|m| m.decision)
        .max()
        .unwrap_or(Verdict::Deny);
    let deciding = matched.iter().find(|m| m.decision == verdict).cloned();
    let asking = || matched.iter().filter(|m| m.decision == Verdict::Ask);
    let rememberable = verdict == Verdict::Ask && asking().all(|m| m.rememberable);
    let session_only = rememberable && asking().any(|m| m.session_only);
    let (rule, layer, source, reason) = match deciding {
        Some(m) => (
            matches!(m.layer, Layer::Floor | Layer::System | Layer::User).then_some(m.id),
            m.layer,
            m.source,
            m.reason,
        ),
        // Unreachable in practice (the fallbacks always produce an entry); fail closed anyway.
        None => (
            None,
            Layer::Floor,
            BUILT_IN.into(),
            "nothing decided this action".into(),
        ),
    };
    Decision {
        decision: verdict,
        rule,
        layer,
        source,
        reason,
        rememberable,
        session_only,
        matched,
        detector_hits: facts.hits.clone(),
        intents: facts.intents.clone(),
        grants: Vec::new(),
        unlocked: Vec::new(),
    }
}

fn locked_decision(errors: &PolicyErrors, action: &Action) -> Decision {
    let first = errors.0.first();
    let source = first.map_or_else(
        || BUILT_IN.to_owned(),
        |e| format!("{}:{}", e.path.display(), e.line),
    );
    // Locked mode refuses exactly the actions that touch the desktop.
    let (decision, reason) = if action.touches_desktop() {
        (
            Verdict::Deny,
            format!(
                "the policy is broken, so deskhand is locked and may only observe and abort ({}); fix it and run `deskhand policy check`",
                first.map_or_else(String::new, ToString::to_string)
            ),
        )
    } else {
        (
            Verdict::Allow,
            "the policy is broken; observing and stopping are still allowed".to_owned(),
        )
    };
    Decision {
        decision,
        rule: None,
        layer: Layer::Locked,
        source: source.clone(),
        reason: reason.clone(),
        rememberable: false,
        session_only: false,
        matched: vec![Match {
            id: "locked".into(),
            decision,
            layer: Layer::Locked,
            source,
            reason,
            rememberable: false,
            session_only: false,
        }],
        detector_hits: Vec::new(),
        intents: Vec::new(),
        grants: Vec::new(),
        unlocked: Vec::new(),
    }
}

/// How the person answered an ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// Allow this one action.
    Once,
    /// Allow this kind of action for the rest of the run.
    Session,
    /// Allow it from now on: writes a grant.
    Always,
    Deny,
}

#[derive(Debug, Error)]
pub enum AnswerError {
    #[error("this ask cannot be remembered ({0}); answer once or deny")]
    NotRememberable(String),
    #[error("this ask may be remembered for this session only ({0}); answer session, once or deny")]
    SessionOnly(String),
    #[error(transparent)]
    Grant(#[from] GrantError),
}

/// The check stage as the loop sees it: decide, take answers, count what ran.
pub trait Policy {
    fn check(&mut self, request: &Request) -> Decision;
    /// Decides `request` again just before it runs, because the windows it reaches changed
    /// since `check`. The budgets already counted this step, so they do not count it again.
    fn recheck(&mut self, request: &Request) -> Decision;
    /// Applies the person's answer to an ask; returns what to do with the action.
    fn answer(
        &mut self,
        request: &Request,
        decision: &Decision,
        answer: Answer,
    ) -> Result<Verdict, AnswerError>;
    /// Counts an action that ran, for the budgets.
    fn executed(&mut self, request: &Request, decision: &Decision);
    /// `text` with everything a detector flags replaced by `[redacted:NAME]`, for traces.
    fn redact(&self, text: &str) -> String;
}

/// The engine plus the state of one task: budgets, session answers, the grant file and the
/// text typed into each window.
pub struct Checker {
    engine: PolicyEngine,
    budgets: BudgetTracker,
    store: Option<GrantStore>,
    /// The grants file's version when it was last read.
    grants_version: Option<(u64, u64, SystemTime)>,
    typed: TypedText,
}

/// What this run typed into each window, the latest `TypedText::KEEP_CHARS` characters of it,
/// so that text sent in pieces is judged whole. Windows are told apart by their X id where it
/// is known, so a title that changes as the agent types (a composer titled by its subject)
/// keeps its text; by app and title otherwise (requests replayed from old traces).
#[derive(Debug, Default)]
struct TypedText {
    by_window: std::collections::HashMap<WindowKey, String>,
}

#[derive(Debug, PartialEq, Eq, Hash)]
enum WindowKey {
    Id(u32),
    Named(Option<String>, Option<String>),
}

impl TypedText {
    /// Enough for a command line or a card form; older text is forgotten.
    const KEEP_CHARS: usize = 4096;

    fn key(window: &WindowRef) -> WindowKey {
        match window.id {
            Some(id) => WindowKey::Id(id),
            None => WindowKey::Named(
                window.app.as_ref().map(|a| a.to_lowercase()),
                window.title.clone(),
            ),
        }
    }

    fn before(&self, window: &WindowRef) -> &str {
        self.by_window
            .get(&TypedText::key(window))
            .map_or("", String::as_str)
    }

    fn record(&mut self, request: &Request) {
        let action = &request.action;
        let erases = matches!(
            action.chord(),
            Ok(Some(Chord {
                key: ChordKey::Named(NamedKey::Backspace),
                ..
            }))
        );
        let typed = request.entered_text();
        if typed.is_none() && !erases {
            return;
        }
        let text = self
            .by_window
            .entry(TypedText::key(&request.window()))
            .or_default();
        if erases {
            text.pop();
        }
        if let Some(typed) = typed {
            text.push_str(&typed);
        }
        let extra = text.chars().count().saturating_sub(TypedText::KEEP_CHARS);
        if extra > 0 {
            let cut = text
                .char_indices()
                .nth(extra)
                .map_or(text.len(), |(at, _)| at);
            text.drain(..cut);
        }
    }
}

impl Checker {
    /// The policy it decides with.
    pub fn policy(&self) -> &PolicyEngine {
        &self.engine
    }

    pub fn new(engine: PolicyEngine, store: Option<GrantStore>) -> Checker {
        let budgets = BudgetTracker::new(engine.budgets().clone(), Instant::now());
        let grants_version = store.as_ref().and_then(GrantStore::version);
        Checker {
            engine,
            budgets,
            store,
            grants_version,
            typed: TypedText::default(),
        }
    }

    /// Reads the grants file again when it changed, so a grant revoked during a run stops
    /// applying at the next decision. A file that no longer reads drops every grant: that
    /// only makes decisions stricter.
    fn refresh_grants(&mut self) {
        let Some(store) = &self.store else {
            return;
        };
        let version = store.version();
        if version == self.grants_version {
            return;
        }
        self.grants_version = version;
        self.engine.grants = store.load().unwrap_or_default();
    }

    pub fn check_at(&mut self, request: &Request, now: Instant) -> Decision {
        self.refresh_grants();
        let mut decision = self
            .engine
            .decide_typed(&self.typed, request, SystemTime::now());
        if decision.decision == Verdict::Deny || request.action.is_terminal() {
            return decision;
        }
        if let Some(exceeded) = self.budgets.check(&request.action, &decision.intents, now) {
            let budget = Match {
                id: format!("budget.{}", exceeded.budget),
                decision: Verdict::Ask,
                layer: Layer::Budget,
                source: self.budget_source(),
                reason: format!("{}; go on?", exceeded.message),
                rememberable: false,
                session_only: false,
            };
            decision.decision = Verdict::Ask;
            decision.rule = None;
            decision.layer = Layer::Budget;
            decision.source = budget.source.clone();
            decision.reason = budget.reason.clone();
            decision.rememberable = false;
            decision.session_only = false;
            decision.grants.clear();
            decision.matched.push(budget);
        }
        decision
    }

    pub fn answer_at(
        &mut self,
        request: &Request,
        decision: &Decision,
        answer: Answer,
        now: Instant,
    ) -> Result<Verdict, AnswerError> {
        if decision.decision != Verdict::Ask {
            return Ok(decision.decision);
        }
        match answer {
            Answer::Deny => return Ok(Verdict::Deny),
            Answer::Once => {
                for m in decision.asking().filter(|m| m.layer == Layer::Budget) {
                    self.budgets.extend(m.id.trim_start_matches("budget."), now);
                }
                return Ok(Verdict::Allow);
            }
            Answer::Session | Answer::Always => {}
        }
        if !decision.rememberable {
            let blocker = decision.asking().find(|m| !m.rememberable).map_or_else(
                || decision.reason.clone(),
                |m| format!("{}: {}", m.id, m.reason),
            );
            return Err(AnswerError::NotRememberable(blocker));
        }
        if answer == Answer::Always && decision.session_only {
            let blocker = decision.asking().find(|m| m.session_only).map_or_else(
                || decision.reason.clone(),
                |m| format!("{}: {}", m.id, m.reason),
            );
            return Err(AnswerError::SessionOnly(blocker));
        }
        let wall = SystemTime::now();
        for asking in decision.asking() {
            let scope = grant_scope(asking, request, &decision.intents);
            match (answer, &self.store) {
                (Answer::Always, Some(store)) => {
                    let (grant, _) = store.add(scope, None)?;
                    self.engine.add_grant(grant);
                }
                _ => self.engine.add_session_grant(Grant::new(scope, wall, None)),
            }
        }
        Ok(Verdict::Allow)
    }

    fn budget_source(&self) -> String {
        self.engine.files.last().map_or_else(
            || BUILT_IN.to_owned(),
            |f| format!("{} [budgets]", f.path.display()),
        )
    }
}

impl Policy for Checker {
    fn check(&mut self, request: &Request) -> Decision {
        self.check_at(request, Instant::now())
    }

    fn recheck(&mut self, request: &Request) -> Decision {
        self.refresh_grants();
        self.engine
            .decide_typed(&self.typed, request, SystemTime::now())
    }

    fn answer(
        &mut self,
        request: &Request,
        decision: &Decision,
        answer: Answer,
    ) -> Result<Verdict, AnswerError> {
        self.answer_at(request, decision, answer, Instant::now())
    }

    fn executed(&mut self, request: &Request, decision: &Decision) {
        self.budgets
            .record(&request.action, &decision.intents, Instant::now());
        self.typed.record(request);
    }

    fn redact(&self, text: &str) -> String {
        self.engine.detectors().redact(text)
    }
}
