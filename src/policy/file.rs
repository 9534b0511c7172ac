//! The policy file: TOML read with positions, so that every error names `file:line:column`,
//! and compiled into rules. Anything unexpected is an error, never ignored: a typo in a deny
//! rule must not quietly turn it off.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::{Regex, RegexBuilder};
use serde::Deserialize;
use toml::Spanned;

use super::rule::{AppGroup, AppMatcher, FloorItem, Region, Rule};
use super::{ACTION_KINDS, BudgetLimits, Intent, Preset, Remember, Verdict};
use crate::input::{Action, Chord};

/// The only schema this build understands.
pub const SCHEMA_VERSION: i64 = 1;

/// A user regex may not compile to more than this; it keeps a pasted monster from stalling
/// every decision.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// One problem in a policy file, at a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub path: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.path.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// Every problem found in the policy; any one of them locks deskhand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

/// Which file a rule came from. The order is the layer order.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    /// Built into deskhand; nothing removes it.
    Floor,
    /// `/etc/deskhand/policy.toml`.
    System,
    /// The user's own policy file.
    User,
    /// A `[defaults]` entry: no rule matched.
    Defaults,
    /// The preset: no rule matched and no default was set.
    Preset,
    /// A remembered "always" answer.
    Grants,
    /// An answer for this session only.
    Session,
    /// A budget ran out.
    Budget,
    /// The policy is broken, so only observing and aborting are allowed.
    Locked,
}

/// A `[[rule.example]]`: a request and the decision the whole policy must reach.
#[derive(Debug, Clone)]
pub(super) struct Example {
    pub rule: String,
    pub line: usize,
    pub column: usize,
    pub action: Action,
    pub app: Option<String>,
    pub title: Option<String>,
    pub intent: Intent,
    pub point: Option<(usize, [f64; 2])>,
    pub expect: Verdict,
}

/// One compiled policy file.
#[derive(Debug, Clone)]
pub(super) struct PolicyFile {
    pub path: PathBuf,
    pub layer: Layer,
    pub preset: Preset,
    pub preset_line: usize,
    /// Action kind (or `detector_hit`) → decision, with its line.
    pub defaults: BTreeMap<String, (Verdict, usize)>,
    pub budgets: BudgetLimits,
    /// User detectors: name, pattern, secret.
    pub detectors: Vec<(String, Regex, bool)>,
    pub rules: Vec<Rule>,
    pub examples: Vec<Example>,
    /// The line of `[floor] locked = true`, which only the system layer may write.
    pub floor_locked: Option<usize>,
    /// `[engine] allowed_hosts`: the remote engines (`deskhand run --engine URL`) screenshots
    /// may go to besides loopback, lower-cased, with the line of the list.
    pub engine_hosts: Option<(Vec<String>, usize)>,
}

impl PolicyFile {
    pub fn source(&self, line: usize) -> String {
        format!("{}:{line}", self.path.display())
    }
}

// The file's shape. Every table denies unknown keys.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    schema_version: Spanned<i64>,
    preset: Spanned<Preset>,
    #[serde(default)]
    defaults: BTreeMap<String, Spanned<Verdict>>,
    #[serde(default)]
    budgets: RawBudgets,
    #[serde(default)]
    apps: BTreeMap<String, RawApp>,
    #[serde(default)]
    detectors: BTreeMap<String, RawDetector>,
    #[serde(default)]
    rule: Vec<RawRule>,
    floor: Option<Spanned<RawFloor>>,
    engine: Option<Spanned<RawEngine>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEngine {
    allowed_hosts: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFloor {
    locked: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBudgets {
    steps_per_task: Option<Spanned<u32>>,
    actions_per_minute: Option<Spanned<u32>>,
    identical_actions: Option<Spanned<u32>>,
    task_timeout_s: Option<Spanned<u64>>,
    #[serde(default)]
    per_intent_per_hour: BTreeMap<String, Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    names: Vec<String>,
    title: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDetector {
    pattern: Spanned<String>,
    #[serde(default)]
    secret: bool,
    #[allow(dead_code)] // documentation for the reader of the file
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: Spanned<String>,
    decision: Verdict,
    reason: String,
    remember: Option<Remember>,
    action: Option<Vec<Spanned<String>>>,
    app: Option<Vec<Spanned<String>>>,
    title: Option<Spanned<String>>,
    intent: Option<Vec<Intent>>,
    text_matches: Option<Vec<Spanned<String>>>,
    keys: Option<Vec<Spanned<String>>>,
    region: Option<Spanned<RawRegion>>,
    window_text_matches: Option<Spanned<String>>,
    unlock: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    example: Vec<Spanned<RawExample>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegion {
    monitor: usize,
    rect: [f64; 4],
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExample {
    action: Action,
    app: Option<String>,
    title: Option<String>,
    intent: Option<Intent>,
    monitor: Option<usize>,
    point: Option<[f64; 2]>,
    expect: Verdict,
}

/// Turns byte offsets into 1-based lines and columns (in characters).
struct Positions<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Positions<'_> {
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    fn line(&self, span: &Range<usize>) -> usize {
        self.line_col(span.start).0
    }

    fn error(&self, span: &Range<usize>, message: impl Into<String>) -> PolicyError {
        let (line, column) = self.line_col(span.start);
        PolicyError {
            path: self.path.to_path_buf(),
            line,
            column,
            message: message.into(),
        }
    }
}

/// Reads one policy file. Returns every error found, not just the first, except that a file
/// that is not valid TOML (or has an unknown key) stops at that one.
pub(super) fn parse(path: &Path, text: &str, layer: Layer) -> Result<PolicyFile, PolicyErrors> {
    let at = Positions { path, text };
    let raw: RawPolicy = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        PolicyErrors(vec![at.error(&span, e.message().trim().to_owned())])
    })?;
    let mut errors = Vec::new();

    if *raw.schema_version.get_ref() != SCHEMA_VERSION {
        errors.push(at.error(
            &raw.schema_version.span(),
            format!(
                "unknown schema_version {}; this deskhand reads schema_version = {SCHEMA_VERSION}",
                raw.schema_version.get_ref()
            ),
        ));
    }

    let mut defaults = BTreeMap::new();
    for (key, verdict) in &raw.defaults {
        if key != "detector_hit" && !ACTION_KINDS.contains(&key.as_str()) {
            errors.push(at.error(
                &verdict.span(),
                format!(
                    "[defaults] has unknown key '{key}'; use an action kind ({}) or detector_hit",
                    ACTION_KINDS.join(", ")
                ),
            ));
        } else if *verdict.get_ref() == Verdict::Deny {
            errors.push(at.error(
                &verdict.span(),
                format!(
                    "[defaults] {key} = \"deny\": defaults may only allow or ask. Write a [[rule]] with decision = \"deny\" and a reason, so the model is told why"
                ),
            ));
        } else {
            defaults.insert(key.clone(), (*verdict.get_ref(), at.line(&verdict.span())));
        }
    }

    let budgets = compile_budgets(&raw.budgets, &at, &mut errors);

    let floor_locked = match &raw.floor {
        Some(floor) if layer != Layer::System => {
            errors.push(at.error(
                &floor.span(),
                "[floor] belongs in the system policy (/etc/deskhand/policy.toml), where the workstation's admin locks the floor; a user's own file cannot lock or unlock it this way (unlock floor entries with a rule's `unlock`)",
            ));
            None
        }
        Some(floor) if floor.get_ref().locked => Some(at.line(&floor.span())),
        _ => None,
    };

    let engine_hosts = raw.engine.as_ref().map(|engine| {
        let mut hosts = Vec::new();
        for host in &engine.get_ref().allowed_hosts {
            let name = host.get_ref().trim().to_lowercase();
            // An IP address (v4 or v6), or a host name: no scheme, port or path.
            let plain = name.parse::<std::net::IpAddr>().is_ok()
                || (!name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')));
            if plain {
                hosts.push(name);
            } else {
                errors.push(at.error(
                    &host.span(),
                    format!(
                        "[engine] allowed_hosts: \"{}\" is not a host name; write the host alone, without scheme, port or path, e.g. \"gpu-box.lan\" or \"10.0.0.5\"",
                        host.get_ref()
                    ),
                ));
            }
        }
        (hosts, at.line(&engine.span()))
    });

    let mut apps = BTreeMap::new();
    for (name, app) in &raw.apps {
        let title = app
            .title
            .as_ref()
            .and_then(|t| compile_regex(t, true, &at, &format!("apps.{name}.title"), &mut errors));
        apps.insert(
            name.clone(),
            AppGroup {
                names: app.names.iter().map(|n| n.to_lowercase()).collect(),
                title,
            },
        );
    }

    let builtin = super::Detectors::builtin();
    let mut detectors = Vec::new();
    for (name, detector) in &raw.detectors {
        if builtin.contains(name) {
            errors.push(at.error(
                &detector.pattern.span(),
                format!(
                    "[detectors.{name}] has the name of a built-in detector; choose another name"
                ),
            ));
            continue;
        }
        if let Some(regex) = compile_regex(
            &detector.pattern,
            false,
            &at,
            &format!("detectors.{name}.pattern"),
            &mut errors,
        ) {
            detectors.push((name.clone(), regex, detector.secret));
        }
    }
    let known_detectors: HashSet<String> = builtin
        .names()
        .into_iter()
        .chain(raw.detectors.keys().cloned())
        .collect();

    let mut rules = Vec::new();
    let mut examples = Vec::new();
    let mut ids = HashSet::new();
    for raw_rule in &raw.rule {
        let id = raw_rule.id.get_ref().clone();
        if id.trim().is_empty() {
            errors.push(at.error(&raw_rule.id.span(), "a rule id may not be empty"));
        } else if id.starts_with("floor.")
            || id.starts_with("defaults.")
            || id.starts_with("preset.")
            || id.starts_with("budget.")
        {
            errors.push(at.error(
                &raw_rule.id.span(),
                format!("rule id '{id}' uses a prefix deskhand reserves (floor., defaults., preset., budget.)"),
            ));
        } else if !ids.insert(id.clone()) {
            errors.push(at.error(
                &raw_rule.id.span(),
                format!("duplicate rule id '{id}'; every rule needs its own id"),
            ));
        }
        let rule = compile_rule(raw_rule, &apps, &known_detectors, &at, &mut errors);
        for example in &raw_rule.example {
            let (line, column) = at.line_col(example.span().start);
            let e = example.get_ref();
            if let Err(problem) = e.action.validate() {
                errors.push(at.error(
                    &example.span(),
                    format!("example of rule '{id}' has an invalid action: {problem}"),
                ));
                continue;
            }
            examples.push(Example {
                rule: id.clone(),
                line,
                column,
                action: e.action.clone(),
                app: e.app.clone(),
                title: e.title.clone(),
                intent: e.intent.unwrap_or(Intent::Other),
                point: e.point.map(|p| (e.monitor.unwrap_or(0), p)),
                expect: e.expect,
            });
        }
        rules.push(rule);
    }

    errors.sort_by_key(|e| (e.line, e.column));
    if errors.is_empty() {
        Ok(PolicyFile {
            path: path.to_path_buf(),
            layer,
            preset: *raw.preset.get_ref(),
            preset_line: at.line(&raw.preset.span()),
            defaults,
            budgets,
            detectors,
            rules,
            examples,
            floor_locked,
            engine_hosts,
        })
    } else {
        Err(PolicyErrors(errors))
    }
}

fn compile_budgets(
    raw: &RawBudgets,
    at: &Positions,
    errors: &mut Vec<PolicyError>,
) -> BudgetLimits {
    let positive = |value: &Option<Spanned<u32>>, key: &str, errors: &mut Vec<PolicyError>| {
        let value = value.as_ref()?;
        if *value.get_ref() == 0 {
            errors.push(at.error(
                &value.span(),
                format!("[budgets] {key} = 0 would stop every run; remove the line for the default, or give a positive number"),
            ));
            return None;
        }
        Some(*value.get_ref())
    };
    let mut per_intent_per_hour = BTreeMap::new();
    for (name, cap) in &raw.per_intent_per_hour {
        match name.parse::<Intent>() {
            Ok(intent) => {
                per_intent_per_hour.insert(intent, *cap.get_ref());
            }
            Err(problem) => errors.push(at.error(
                &cap.span(),
                format!("[budgets.per_intent_per_hour]: {problem}"),
            )),
        }
    }
    let task_timeout = match &raw.task_timeout_s {
        Some(t) if *t.get_ref() == 0 => {
            errors.push(at.error(
                &t.span(),
                "[budgets] task_timeout_s = 0 would stop every run; give a positive number of seconds",
            ));
            None
        }
        Some(t) => Some(Duration::from_secs(*t.get_ref())),
        None => None,
    };
    BudgetLimits {
        steps_per_task: positive(&raw.steps_per_task, "steps_per_task", errors),
        actions_per_minute: positive(&raw.actions_per_minute, "actions_per_minute", errors),
        identical_actions: positive(&raw.identical_actions, "identical_actions", errors),
        task_timeout,
        per_intent_per_hour,
    }
}

fn compile_regex(
    pattern: &Spanned<String>,
    case_insensitive: bool,
    at: &Positions,
    what: &str,
    errors: &mut Vec<PolicyError>,
) -> Option<Regex> {
    match RegexBuilder::new(pattern.get_ref())
        .case_insensitive(case_insensitive)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
    {
        Ok(regex) => Some(regex),
        Err(e) => {
            errors.push(at.error(
                &pattern.span(),
                format!("{what} is not a valid regex: {}", one_line(&e.to_string())),
            ));
            None
        }
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Reads one `app` entry: `@NAME` is always a group, a bare name is a group when this file
/// defines one by that name and a program otherwise. A bare name that is no group but looks
/// like one (close to a defined group's name, or a word such as "terminals") is an error:
/// as a program name it would silently match nothing.
fn app_matcher(
    id: &str,
    name: &Spanned<String>,
    apps: &BTreeMap<String, AppGroup>,
    at: &Positions,
    errors: &mut Vec<PolicyError>,
) -> Option<AppMatcher> {
    let raw = name.get_ref();
    let defined = || {
        if apps.is_empty() {
            "this file defines no [apps.NAME] group".to_owned()
        } else {
            format!(
                "groups defined here: {}",
                apps.keys()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    };
    if let Some(group) = raw.strip_prefix('@') {
        return match apps.get(group) {
            Some(found) => Some(AppMatcher::Group(found.clone())),
            None => {
                errors.push(at.error(
                    &name.span(),
                    format!(
                        "rule '{id}': app '{raw}' names no group [apps.{group}]; {}",
                        defined()
                    ),
                ));
                None
            }
        };
    }
    if let Some(group) = apps.get(raw) {
        return Some(AppMatcher::Group(group.clone()));
    }
    let lower = raw.to_lowercase();
    if super::infer::is_known_program(&lower) {
        return Some(AppMatcher::Program(lower));
    }
    let near = apps
        .keys()
        .find(|group| edit_distance(&lower, &group.to_lowercase()) <= 2);
    let generic = GROUP_LIKE_WORDS.contains(&lower.as_str());
    if near.is_some() || generic {
        errors.push(at.error(
            &name.span(),
            format!(
                "rule '{id}': app '{raw}' is no group of this file but looks like one{}; {}. Write a group as '@NAME', or give the program's exact executable name (see `deskhand window`)",
                near.map(|g| format!(" (did you mean '{g}'?)")).unwrap_or_default(),
                defined()
            ),
        ));
        return None;
    }
    Some(AppMatcher::Program(lower))
}

/// Words people use for kinds of programs; no program on a desktop is called this.
const GROUP_LIKE_WORDS: &[&str] = &[
    "terminal",
    "terminals",
    "editor",
    "editors",
    "browser",
    "browsers",
    "mail",
    "email",
    "chat",
    "chats",
    "office",
    "shell",
    "shells",
    "ide",
    "ides",
    "games",
    "messengers",
    "file-managers",
    "file_managers",
];

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

fn compile_rule(
    raw: &RawRule,
    apps: &BTreeMap<String, AppGroup>,
    detectors: &HashSet<String>,
    at: &Positions,
    errors: &mut Vec<PolicyError>,
) -> Rule {
    let id = raw.id.get_ref();
    let actions = raw.action.as_ref().map(|kinds| {
        kinds
            .iter()
            .filter_map(|kind| {
                if ACTION_KINDS.contains(&kind.get_ref().as_str()) {
                    Some(kind.get_ref().clone())
                } else {
                    errors.push(at.error(
                        &kind.span(),
                        format!(
                            "rule '{id}': unknown action kind '{}'; expected one of {}",
                            kind.get_ref(),
                            ACTION_KINDS.join(", ")
                        ),
                    ));
                    None
                }
            })
            .collect()
    });
    for (field, empty) in [
        ("action", raw.action.as_ref().is_some_and(Vec::is_empty)),
        ("app", raw.app.as_ref().is_some_and(Vec::is_empty)),
        ("intent", raw.intent.as_ref().is_some_and(Vec::is_empty)),
        (
            "text_matches",
            raw.text_matches.as_ref().is_some_and(Vec::is_empty),
        ),
        ("keys", raw.keys.as_ref().is_some_and(Vec::is_empty)),
    ] {
        if empty {
            errors.push(at.error(
                &raw.id.span(),
                format!(
                    "rule '{id}': {field} = [] can never match, so this rule would never apply; remove the field to match every {field}, or list what it should match"
                ),
            ));
        }
    }
    let app_matchers = raw.app.as_ref().map(|names| {
        names
            .iter()
            .filter_map(|name| app_matcher(id, name, apps, at, errors))
            .collect()
    });
    let title = raw
        .title
        .as_ref()
        .and_then(|t| compile_regex(t, true, at, &format!("rule '{id}': title"), errors));
    let text_matches = raw.text_matches.as_ref().map(|names| {
        names
            .iter()
            .filter_map(|name| {
                if detectors.contains(name.get_ref()) {
                    Some(name.get_ref().clone())
                } else {
                    let mut known: Vec<&String> = detectors.iter().collect();
                    known.sort();
                    errors.push(at.error(
                        &name.span(),
                        format!(
                            "rule '{id}': unknown detector '{}'; known detectors: {}",
                            name.get_ref(),
                            known.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                        ),
                    ));
                    None
                }
            })
            .collect()
    });
    let keys = raw.keys.as_ref().map(|chords| {
        chords
            .iter()
            .filter_map(|chord| match Chord::parse(chord.get_ref()) {
                Ok(parsed) => Some(parsed.normalized()),
                Err(e) => {
                    errors.push(at.error(&chord.span(), format!("rule '{id}': {e}")));
                    None
                }
            })
            .collect()
    });
    let region = raw.region.as_ref().and_then(|region| {
        let [left, top, right, bottom] = region.get_ref().rect;
        let fraction = |v: f64| (0.0..=1.0).contains(&v);
        if [left, top, right, bottom].into_iter().all(fraction) && left < right && top < bottom {
            Some(Region {
                monitor: region.get_ref().monitor,
                rect: region.get_ref().rect,
            })
        } else {
            errors.push(at.error(
                &region.span(),
                format!(
                    "rule '{id}': region rect [{left}, {top}, {right}, {bottom}] must be [left, top, right, bottom] fractions of the monitor, 0 to 1, with left < right and top < bottom"
                ),
            ));
            None
        }
    });
    let window_text = raw.window_text_matches.as_ref().and_then(|t| {
        compile_regex(
            t,
            true,
            at,
            &format!("rule '{id}': window_text_matches"),
            errors,
        )
    });
    let unlock = compile_unlock(raw, at, errors);
    let mut rule = Rule {
        id: id.clone(),
        decision: raw.decision,
        reason: raw.reason.clone(),
        remember: raw.remember.unwrap_or_default(),
        line: at.line(&raw.id.span()),
        actions,
        apps: app_matchers,
        title,
        intents: raw.intent.clone(),
        text_matches,
        keys,
        region,
        window_text,
        unlock: Vec::new(),
    };
    rule.unlock = unlock
        .into_iter()
        .map(|item| (item, rule.unlockable(item)))
        .collect();
    rule
}

/// Reads a rule's `unlock`: known floor entries only, each with the field that says what it
/// unlocks, in a rule that allows or asks and has a scope. An unscoped unlock would switch
/// that part of the floor off everywhere.
fn compile_unlock(raw: &RawRule, at: &Positions, errors: &mut Vec<PolicyError>) -> Vec<FloorItem> {
    let id = raw.id.get_ref();
    let Some(names) = &raw.unlock else {
        return Vec::new();
    };
    let mut items = Vec::new();
    for name in names {
        match FloorItem::parse(name.get_ref()) {
            Some(item) if !items.contains(&item) => items.push(item),
            Some(_) => {}
            None => errors.push(at.error(
                &name.span(),
                format!(
                    "rule '{id}': cannot unlock '{}'; a rule may unlock {} (deskhand's own files, Caps Lock and unreadable pastes stay locked)",
                    name.get_ref(),
                    FloorItem::ALL.map(FloorItem::id).join(", ")
                ),
            )),
        }
    }
    let Some(first) = names.first() else {
        errors.push(at.error(
            &raw.id.span(),
            format!(
                "rule '{id}': unlock = [] unlocks nothing; remove it, or name what to unlock ({})",
                FloorItem::ALL.map(FloorItem::id).join(", ")
            ),
        ));
        return items;
    };
    let mut problem = |message: String| errors.push(at.error(&first.span(), message));
    if raw.decision == Verdict::Deny {
        problem(format!(
            "rule '{id}': a deny rule has nothing to unlock; unlock with decision = \"allow\" or \"ask\""
        ));
    }
    for item in &items {
        let named = match item {
            FloorItem::RiskyIntent => raw.intent.iter().flatten().any(|i| i.is_floor()),
            FloorItem::Secret => raw.text_matches.as_ref().is_some_and(|t| !t.is_empty()),
            FloorItem::SessionChord => raw.keys.iter().flatten().any(|k| {
                Chord::parse(k.get_ref())
                    .is_ok_and(|c| super::engine::is_session_chord(&c.normalized()))
            }),
        };
        if !named {
            let field = match item {
                FloorItem::RiskyIntent => {
                    "intent = [...] naming the floor intents it unlocks (send_email, send_message, purchase, payment, delete)"
                }
                FloorItem::Secret => "text_matches = [...] naming the detectors it unlocks",
                FloorItem::SessionChord => {
                    "keys = [...] naming the session chords it unlocks (ctrl+alt+l, super+l, ...)"
                }
            };
            problem(format!("rule '{id}': unlock {} needs {field}", item.id()));
        }
    }
    // The detectors a secret unlock names are what it unlocks, not where.
    let scoped = raw.app.is_some()
        || raw.title.is_some()
        || raw.region.is_some()
        || raw.window_text_matches.is_some()
        || (raw.text_matches.is_some() && !items.contains(&FloorItem::Secret));
    if !scoped {
        problem(format!(
            "rule '{id}': an unlock needs a scope (app, title, region, window_text_matches{}), or it would switch the floor off everywhere",
            if items.contains(&FloorItem::Secret) {
                ""
            } else {
                " or text_matches"
            }
        ));
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<PolicyFile, PolicyErrors> {
        parse(Path::new("policy.toml"), text, Layer::User)
    }

    fn errors_of(text: &str) -> Vec<String> {
        match parse_text(text) {
            Ok(_) => panic!("expected errors in:\n{text}"),
            Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
        }
    }

    const HEAD: &str = "schema_version = 1\npreset = \"balanced\"\n";

    #[test]
    fn a_minimal_file_parses() {
        let file = parse_text(HEAD).unwrap();
        assert_eq!(file.preset, Preset::Balanced);
        assert_eq!(file.preset_line, 2);
        assert!(file.rules.is_empty());
    }

    #[test]
    fn syntax_errors_name_line_and_column() {
        let errors = errors_of(&format!("{HEAD}[[rule]]\nid = \"x\nreason = 1\n"));
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("policy.toml:4:"), "{errors:?}");
    }

    #[test]
    fn unknown_keys_are_errors_at_their_position() {
        let errors = errors_of(&format!(
            "{HEAD}[[rule]]\nid = \"x\"\ndecision = \"deny\"\nreason = \"r\"\ntitel = \"Gmail\"\n"
        ));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("policy.toml:7:1: "), "{errors:?}");
        assert!(errors[0].contains("unknown field `titel`"), "{errors:?}");
    }

    #[test]
    fn every_semantic_error_is_reported_with_its_position() {
        let text = format!(
            "{HEAD}\
[defaults]
type = \"deny\"

[[rule]]
id = \"a\"
decision = \"deny\"
reason = \"r\"
title = \"(unclosed\"

[[rule]]
id = \"a\"
decision = \"ask\"
reason = \"r\"
action = [\"clik\"]
keys = [\"ctlr+c\"]
text_matches = [\"ssn\"]
region = {{ monitor = 0, rect = [0.5, 0.0, 0.2, 1.0] }}
"
        );
        let errors = errors_of(&text);
        let expect = [
            ("policy.toml:4:8:", "defaults may only allow or ask"),
            ("policy.toml:10:9:", "not a valid regex"),
            ("policy.toml:13:6:", "duplicate rule id 'a'"),
            ("policy.toml:16:11:", "unknown action kind 'clik'"),
            ("policy.toml:17:9:", "unknown key 'ctlr'"),
            ("policy.toml:18:17:", "unknown detector 'ssn'"),
            ("policy.toml:19:10:", "region rect"),
        ];
        assert_eq!(errors.len(), expect.len(), "{errors:#?}");
        for (position, words) in expect {
            assert!(
                errors
                    .iter()
                    .any(|e| e.starts_with(position) && e.contains(words)),
                "no error at {position} containing {words:?} in {errors:#?}"
            );
        }
    }

    #[test]
    fn an_unknown_schema_version_is_an_error() {
        let errors = errors_of("schema_version = 2\npreset = \"strict\"\n");
        assert!(errors[0].starts_with("policy.toml:1:18: unknown schema_version 2"));
    }

    #[test]
    fn an_unknown_preset_is_an_error() {
        let errors = errors_of("schema_version = 1\npreset = \"lax\"\n");
        assert!(errors[0].starts_with("policy.toml:2:10:"), "{errors:?}");
        assert!(errors[0].contains("strict"), "{errors:?}");
    }

    #[test]
    fn rules_compile_their_match_fields() {
        let file = parse_text(&format!(
            "{HEAD}\
[apps.mail]
names = [\"Thunderbird\"]
title = \"gmail\"

[detectors.ticket]
pattern = 'T-\\d+'

[[rule]]
id = \"r\"
decision = \"ask\"
reason = \"because\"
remember = \"never\"
action = [\"key\"]
app = [\"mail\", \"XTerm\"]
keys = [\"Control+Shift+T\"]
text_matches = [\"ticket\", \"iban\"]
intent = [\"send_email\"]
"
        ))
        .unwrap();
        let rule = &file.rules[0];
        assert_eq!(rule.line, 11);
        assert_eq!(rule.remember, Remember::Never);
        assert_eq!(rule.keys.as_deref(), Some(&["ctrl+shift+t".to_owned()][..]));
        assert_eq!(rule.intents.as_deref(), Some(&[Intent::SendEmail][..]));
        let apps = rule.apps.as_ref().unwrap();
        assert!(matches!(&apps[0], AppMatcher::Group(g) if g.names == ["thunderbird"]));
        assert!(matches!(&apps[1], AppMatcher::Program(p) if p == "xterm"));
        assert_eq!(file.detectors.len(), 1);
    }

    #[test]
    fn unlocks_need_what_they_unlock_a_scope_and_an_allow_or_ask() {
        let rule = |id: &str, body: &str| {
            format!("[[rule]]\nid = \"{id}\"\ndecision = \"allow\"\nreason = \"r\"\n{body}\n")
        };
        let text = format!(
            "{HEAD}{}{}{}{}{}{}{}{}",
            rule(
                "no-scope",
                "intent = [\"send_email\"]\nunlock = [\"floor.risky_intent\"]"
            ),
            rule(
                "own-files",
                "app = [\"vim\"]\nunlock = [\"floor.own_files\"]"
            ),
            rule(
                "no-floor-intent",
                "app = [\"vim\"]\nintent = [\"login\"]\nunlock = [\"floor.risky_intent\"]"
            ),
            rule(
                "no-detector",
                "app = [\"vim\"]\nunlock = [\"floor.secret\"]"
            ),
            rule(
                "secret-unscoped",
                "text_matches = [\"card_number\"]\nunlock = [\"floor.secret\"]"
            ),
            rule(
                "no-session-chord",
                "app = [\"vim\"]\nkeys = [\"ctrl+s\"]\nunlock = [\"floor.session_chord\"]"
            ),
            rule("empty", "app = [\"vim\"]\nunlock = []"),
            "[[rule]]\nid = \"deny\"\ndecision = \"deny\"\nreason = \"r\"\napp = [\"vim\"]\nintent = [\"delete\"]\nunlock = [\"floor.risky_intent\"]\n",
        );
        let errors = errors_of(&text);
        for (rule, words) in [
            ("no-scope", "an unlock needs a scope"),
            ("own-files", "cannot unlock 'floor.own_files'"),
            ("no-floor-intent", "needs intent = [...]"),
            ("no-detector", "needs text_matches = [...]"),
            ("secret-unscoped", "an unlock needs a scope"),
            ("no-session-chord", "needs keys = [...]"),
            ("empty", "unlock = [] unlocks nothing"),
            ("deny", "a deny rule has nothing to unlock"),
        ] {
            assert!(
                errors
                    .iter()
                    .any(|e| e.contains(&format!("rule '{rule}'")) && e.contains(words)),
                "no error for rule {rule} containing {words:?} in {errors:#?}"
            );
        }
        // Each names its file and line.
        assert!(
            errors.iter().all(|e| e.starts_with("policy.toml:")),
            "{errors:#?}"
        );

        // Scoped by a detector that is not what it unlocks, by a window's text or a region.
        for body in [
            "intent = [\"send_email\"]\ntext_matches = [\"iban\"]\nunlock = [\"floor.risky_intent\"]",
            "intent = [\"send_email\"]\nwindow_text_matches = '@example\\.com'\nunlock = [\"floor.risky_intent\"]",
            "keys = [\"super+l\"]\nregion = { monitor = 0, rect = [0.0, 0.0, 0.5, 0.5] }\nunlock = [\"floor.session_chord\"]",
        ] {
            let file = parse_text(&format!("{HEAD}{}", rule("ok", body)))
                .unwrap_or_else(|e| panic!("{body}: {e}"));
            assert_eq!(file.rules[0].unlock.len(), 1);
            assert!(
                !file.rules[0].unlock[0].1.is_empty(),
                "{body}: names what it unlocks"
            );
        }
    }

    #[test]
    fn only_the_system_layer_locks_the_floor() {
        let text = format!("{HEAD}[floor]\nlocked = true\n");
        let system = parse(Path::new("system.toml"), &text, Layer::System).unwrap();
        assert_eq!(system.floor_locked, Some(3));
        let errors = errors_of(&text);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("[floor] belongs in the system policy"),
            "{errors:?}"
        );
        let unlocked = format!("{HEAD}[floor]\nlocked = false\n");
        assert_eq!(
            parse(Path::new("s.toml"), &unlocked, Layer::System)
                .unwrap()
                .floor_locked,
            None
        );
    }

    #[test]
    fn bad_budgets_and_intents_are_errors() {
        let errors = errors_of(&format!(
            "{HEAD}[budgets]\nsteps_per_task = 0\n[budgets.per_intent_per_hour]\nsend_mail = 3\n"
        ));
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("steps_per_task = 0"));
        assert!(errors[1].contains("unknown intent 'send_mail'"));
    }
}
