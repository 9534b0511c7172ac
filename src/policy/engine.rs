//! The decision: floor, files, defaults, preset, grants and budgets, combined by one rule —
//! every match counts and the strictest wins.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::file::{self, Layer, PolicyFile};
use super::rule::Facts;
use super::{
    BudgetLimits, BudgetTracker, DetectorHit, Detectors, Grant, GrantError, GrantScope, GrantStore,
    Intent, NormalizedPoint, PolicyError, PolicyErrors, Preset, Request, Verdict, infer_intents,
    password_context,
};
use crate::input::Action;

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
    /// Every rule and entry that matched, deciding one included.
    pub matched: Vec<Match>,
    /// Detector names and counts; never the text they found.
    pub detector_hits: Vec<DetectorHit>,
    /// Declared and inferred intents together.
    pub intents: Vec<Intent>,
    /// Grants that turned an ask into this allow.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<String>,
}

impl Decision {
    /// The ids a "session" or "always" answer must grant: every entry that asked.
    pub fn asking(&self) -> impl Iterator<Item = &Match> {
        self.matched.iter().filter(|m| m.decision == Verdict::Ask)
    }

    /// The text the model is shown in its next prompt when the action was refused.
    pub fn refusal(&self) -> String {
        format!("denied by policy: {}", self.reason)
    }
}

const BUILT_IN: &str = "built-in";

/// Chords that kill the X session, lock or leave it, or switch away from it.
const SESSION_CHORDS: &[&str] = &[
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

/// Where the policy's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyPaths {
    /// `/etc/deskhand/policy.toml` unless `DESKHAND_SYSTEM_POLICY` says otherwise (empty: none).
    pub system: Option<PathBuf>,
    /// `~/.config/deskhand/policy.toml` or `DESKHAND_POLICY`.
    pub user: PathBuf,
    /// `~/.local/share/deskhand/grants.toml` or `DESKHAND_GRANTS`.
    pub grants: PathBuf,
}

#[derive(Debug, Error)]
#[error(
    "no home directory to keep the policy in; set DESKHAND_POLICY and DESKHAND_GRANTS to file paths"
)]
pub struct NoHomeDir;

impl PolicyPaths {
    pub fn from_env() -> Result<PolicyPaths, NoHomeDir> {
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
        let system = match var("DESKHAND_SYSTEM_POLICY") {
            Some(path) if path.is_empty() => None,
            Some(path) => Some(PathBuf::from(path)),
            None => Some(PathBuf::from("/etc/deskhand/policy.toml")),
        };
        Ok(PolicyPaths {
            system,
            user,
            grants,
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
}

impl PolicyEngine {
    /// Loads the system file, the user's file and the grants. Never fails: a broken policy
    /// comes back locked, with its errors in `locked()`.
    pub fn load(paths: &PolicyPaths) -> PolicyEngine {
        PolicyEngine::try_load(paths).unwrap_or_else(PolicyEngine::locked)
    }

    /// Like `load`, but a broken policy is an error.
    pub fn try_load(paths: &PolicyPaths) -> Result<PolicyEngine, PolicyErrors> {
        let mut sources = Vec::new();
        let mut errors = Vec::new();
        let mut notes = Vec::new();
        let mut read = |layer: Layer, path: &Path, missing_note: Option<String>| {
            match std::fs::read_to_string(path) {
                Ok(text) => sources.push((layer, path.to_path_buf(), text)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => notes.extend(missing_note),
                Err(e) => errors.push(PolicyError {
                    path: path.to_path_buf(),
                    line: 1,
                    column: 1,
                    message: format!("cannot read the policy file: {e}"),
                }),
            }
        };
        if let Some(system) = &paths.system {
            read(Layer::System, system, None);
        }
        read(
            Layer::User,
            &paths.user,
            Some(format!(
                "no policy file at {}; the built-in strict preset decides. Write one with `deskhand policy init`.",
                paths.user.display()
            )),
        );
        if !errors.is_empty() {
            return Err(PolicyErrors(errors));
        }
        let mut engine = PolicyEngine::from_sources(sources)?;
        engine.notes.extend(notes);
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
        let engine = PolicyEngine {
            budgets: BudgetLimits::combine(files.iter().map(|f| &f.budgets)),
            files,
            detectors,
            grants: Vec::new(),
            session_grants: Vec::new(),
            locked: None,
            notes: Vec::new(),
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

    /// The files in force and their presets, for `policy check`.
    pub fn files(&self) -> Vec<(PathBuf, Preset)> {
        self.files
            .iter()
            .map(|f| (f.path.clone(), f.preset))
            .collect()
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
        if let Some(errors) = &self.locked {
            return locked_decision(errors, &request.action);
        }
        let facts = self.facts(request);
        let mut matched = floor_matches(&facts, &self.detectors);
        for file in &self.files {
            for rule in file.rules.iter().filter(|r| r.matches(&facts)) {
                matched.push(Match {
                    id: rule.id.clone(),
                    decision: rule.decision,
                    layer: file.layer,
                    source: file.source(rule.line),
                    reason: rule.reason.clone(),
                    rememberable: rule.remember == super::Remember::Always,
                });
            }
        }
        if matched.is_empty() {
            matched = self.fallbacks(&facts);
        }
        let mut decision = combine(matched, &facts);
        if decision.decision == Verdict::Ask && decision.rememberable {
            self.apply_grants(&mut decision, request, now);
        }
        decision
    }

    fn facts<'a>(&self, request: &'a Request) -> Facts<'a> {
        let action = &request.action;
        let title = request.title.as_deref().unwrap_or_default();
        let mut intents = request.inferred_intents.clone();
        intents.push(request.declared_intent);
        intents.extend(infer_intents(action, request.app.as_deref(), Some(title)));
        intents.sort();
        intents.dedup();
        if intents.len() > 1 {
            // A specific intent replaces "other": the stricter reading wins.
            intents.retain(|i| *i != Intent::Other);
        }

        let mut hits = Vec::new();
        if let Action::Type { text } = action {
            hits = self.detectors.scan(text);
            if password_context(request.app.as_deref(), request.title.as_deref()) {
                add_hit(&mut hits, "password_context", true);
            }
        }
        for name in &request.detector_hits {
            add_hit(&mut hits, name, self.detectors.is_secret(name));
        }
        hits.sort_by(|a, b| a.name.cmp(&b.name));

        Facts {
            kind: action.kind(),
            app: request.app.as_ref().map(|a| a.to_lowercase()),
            title,
            chord: action.chord().ok().flatten().map(|c| c.normalized()),
            intents,
            hits,
            points: &request.points,
        }
    }

    /// What decides when no rule matched: each file's default for the kind, or its preset.
    /// With no file at all, the strict preset.
    fn fallbacks(&self, facts: &Facts) -> Vec<Match> {
        let mut entries = Vec::new();
        let keys = if facts.hits.is_empty() {
            vec![facts.kind]
        } else {
            vec![facts.kind, "detector_hit"]
        };
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
        let intent = decision.intents.last().copied().unwrap_or(Intent::Other);
        let mut used = Vec::new();
        let mut session_used = false;
        for asking in decision.asking() {
            let scope = grant_scope(asking, request, intent);
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
        for file in &self.files {
            for example in &file.examples {
                let mut request = Request::new(example.action.clone())
                    .with_window(example.app.clone(), example.title.clone())
                    .with_intent(example.intent);
                if let Some((monitor, [x, y])) = example.point {
                    request.points = vec![NormalizedPoint { monitor, x, y }];
                }
                let decision = self.decide(&request);
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
/// this (riskiest) intent.
fn grant_scope(asking: &Match, request: &Request, intent: Intent) -> GrantScope {
    GrantScope {
        rule: asking.id.clone(),
        app: request.app.clone(),
        action: request.action.kind().to_owned(),
        intent,
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

/// The built-in rules no file can remove.
fn floor_matches(facts: &Facts, detectors: &Detectors) -> Vec<Match> {
    let floor = |id: &str, decision: Verdict, reason: String| Match {
        id: id.to_owned(),
        decision,
        layer: Layer::Floor,
        source: BUILT_IN.into(),
        reason,
        rememberable: false,
    };
    let mut matched = Vec::new();
    let secrets: Vec<&str> = facts
        .hits
        .iter()
        .filter(|h| h.secret || detectors.is_secret(&h.name))
        .map(|h| h.name.as_str())
        .collect();
    if facts.kind == "type" && !secrets.is_empty() {
        matched.push(floor(
            "floor.secret_text",
            Verdict::Deny,
            format!(
                "typing a detected secret ({}) is never allowed",
                secrets.join(", ")
            ),
        ));
    }
    if let Some(chord) = &facts.chord
        && SESSION_CHORDS.contains(&chord.as_str())
    {
        matched.push(floor(
            "floor.session_chord",
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
    if !risky.is_empty() {
        matched.push(floor(
            "floor.risky_intent",
            Verdict::Ask,
            format!(
                "{} always asks, and the answer is never remembered",
                risky.join(", ")
            ),
        ));
    }
    matched
}

/// The strictest entry decides; among equals, the first in layer and file order.
fn combine(matched: Vec<Match>, facts: &Facts) -> Decision {
    let verdict = matched
        .iter()
        .map(|m| m.decision)
        .max()
        .unwrap_or(Verdict::Deny);
    let deciding = matched.iter().find(|m| m.decision == verdict).cloned();
    let rememberable = verdict == Verdict::Ask
        && matched
            .iter()
            .filter(|m| m.decision == Verdict::Ask)
            .all(|m| m.rememberable);
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
        matched,
        detector_hits: facts.hits.clone(),
        intents: facts.intents.clone(),
        grants: Vec::new(),
    }
}

/// Whether an action would touch the desktop; locked mode refuses exactly those.
fn touches_desktop(action: &Action) -> bool {
    !matches!(action, Action::Wait { .. }) && !action.is_terminal()
}

fn locked_decision(errors: &PolicyErrors, action: &Action) -> Decision {
    let first = errors.0.first();
    let source = first.map_or_else(
        || BUILT_IN.to_owned(),
        |e| format!("{}:{}", e.path.display(), e.line),
    );
    let (decision, reason) = if touches_desktop(action) {
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
        matched: vec![Match {
            id: "locked".into(),
            decision,
            layer: Layer::Locked,
            source,
            reason,
            rememberable: false,
        }],
        detector_hits: Vec::new(),
        intents: Vec::new(),
        grants: Vec::new(),
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
    #[error(transparent)]
    Grant(#[from] GrantError),
}

/// The check stage as the loop sees it: decide, take answers, count what ran.
pub trait Policy {
    fn check(&mut self, request: &Request) -> Decision;
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

/// The engine plus the state of one task: budgets, session answers and the grant file.
pub struct Checker {
    engine: PolicyEngine,
    budgets: BudgetTracker,
    store: Option<GrantStore>,
}

impl Checker {
    pub fn new(engine: PolicyEngine, store: Option<GrantStore>) -> Checker {
        let budgets = BudgetTracker::new(engine.budgets().clone(), Instant::now());
        Checker {
            engine,
            budgets,
            store,
        }
    }

    pub fn check_at(&mut self, request: &Request, now: Instant) -> Decision {
        let mut decision = self.engine.decide(request);
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
            };
            decision.decision = Verdict::Ask;
            decision.rule = None;
            decision.layer = Layer::Budget;
            decision.source = budget.source.clone();
            decision.reason = budget.reason.clone();
            decision.rememberable = false;
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
        let intent = decision.intents.last().copied().unwrap_or(Intent::Other);
        let wall = SystemTime::now();
        for asking in decision.asking() {
            let scope = grant_scope(asking, request, intent);
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
    }

    fn redact(&self, text: &str) -> String {
        self.engine.detectors().redact(text)
    }
}
