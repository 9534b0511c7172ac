//! Tuning the policy from experience. `policy suggest` turns what the person answered in
//! recorded runs into candidate rules; `policy test` and `policy diff` replay recorded
//! decisions against the current files and show what a change makes stricter or looser.
//!
//! Both read traces, whose requests were redacted when they were recorded. Suggestions are
//! redacted again with today's detectors, so no secret the detectors know reaches one.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use super::{Answer, Decision, Intent, Layer, PolicyEngine, Request, Verdict};
use crate::input::Action;
use crate::trace::{AnsweredBy, TraceError, read_jsonl};

/// One decided step of a recorded run: what the policy saw, what it said then, and how the
/// ask was answered.
#[derive(Debug, Clone)]
pub struct RecordedStep {
    /// The run folder's name.
    pub run: String,
    /// `step N`, or `line N` for a line without a step number.
    pub label: String,
    pub request: Request,
    pub verdict: Verdict,
    /// The deciding rule; `None` when a default, the preset or a budget decided.
    pub rule: Option<String>,
    /// The deciding layer, where the trace says it.
    pub layer: Option<Layer>,
    /// The intents the decision worked with (declared and inferred).
    pub intents: Vec<Intent>,
    pub answer: Option<Answer>,
    pub answered_by: Option<AnsweredBy>,
}

impl RecordedStep {
    /// What decided: the rule's id, or the layer's name.
    pub fn decided_by(&self) -> String {
        self.rule
            .clone()
            .unwrap_or_else(|| self.layer.map_or("no rule", layer_name).to_owned())
    }
}

/// The name of a layer as the terminal shows it.
pub fn layer_name(layer: Layer) -> &'static str {
    match layer {
        Layer::Floor => "floor",
        Layer::System => "system",
        Layer::User => "user",
        Layer::Defaults => "defaults",
        Layer::Preset => "preset",
        Layer::Grants => "grant",
        Layer::Session => "session",
        Layer::Budget => "budget",
        Layer::Locked => "locked",
    }
}

/// What decided `decision`: its rule's id, or its layer's name.
pub fn decided_by(decision: &Decision) -> String {
    decision
        .rule
        .clone()
        .unwrap_or_else(|| layer_name(decision.layer).to_owned())
}

/// The decided steps of one trace, and warnings about lines that were skipped. Lines without
/// a request and a decision (the run's start and end, aborts) are not steps to replay. Only
/// the fields a replay needs are read, so traces from older versions replay too.
pub fn read_recorded(trace: &Path) -> Result<(Vec<RecordedStep>, Vec<String>), TraceError> {
    let (lines, warnings) = read_jsonl::<Value>(trace)?;
    let run = trace
        .parent()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut steps = Vec::new();
    for (number, value) in lines {
        let (Some(request), Some(decision)) = (value.get("request"), value.get("decision")) else {
            continue;
        };
        let field = |v: Option<&Value>| v.cloned().unwrap_or(Value::Null);
        let parsed = (|| -> Result<RecordedStep, serde_json::Error> {
            Ok(RecordedStep {
                run: run.clone(),
                label: value
                    .get("step")
                    .map_or_else(|| format!("line {number}"), |s| format!("step {s}")),
                request: serde_json::from_value(request.clone())?,
                verdict: serde_json::from_value(field(decision.get("decision")))?,
                rule: decision["rule"].as_str().map(str::to_owned),
                layer: serde_json::from_value(field(decision.get("layer")))?,
                intents: match decision.get("intents") {
                    Some(intents) => serde_json::from_value(intents.clone())?,
                    None => Vec::new(),
                },
                answer: serde_json::from_value(field(value.get("answer")))?,
                answered_by: serde_json::from_value(field(value.get("answered_by")))?,
            })
        })();
        match parsed {
            Ok(step) => steps.push(step),
            Err(e) => {
                return Err(TraceError::Parse {
                    path: trace.to_path_buf(),
                    line: number,
                    problem: format!("the request or decision does not parse: {e}"),
                });
            }
        }
    }
    Ok((steps, warnings))
}

/// A recorded decision the current files decide differently.
pub struct Change<'a> {
    pub step: &'a RecordedStep,
    pub now: Decision,
}

impl Change<'_> {
    pub fn looser(&self) -> bool {
        self.now.decision < self.step.verdict
    }

    /// A deny or an ask that would now be allowed.
    pub fn relaxed(&self) -> bool {
        self.looser() && self.now.decision == Verdict::Allow
    }

    /// One line for the terminal: the step, its action and window, then and now.
    pub fn describe(&self) -> String {
        let step = self.step;
        format!(
            "{}{}: {}{}: {} ({}) -> {} ({}: {}){}",
            if step.run.is_empty() {
                String::new()
            } else {
                format!("{} ", step.run)
            },
            step.label,
            step.request.action,
            step.request
                .app
                .as_ref()
                .map(|a| format!(" in {a}"))
                .unwrap_or_default(),
            step.verdict,
            step.decided_by(),
            self.now.decision,
            self.now
                .rule
                .clone()
                .unwrap_or_else(|| self.now.source.clone()),
            self.now.reason,
            if self.looser() { "  [LOOSER]" } else { "" }
        )
    }
}

/// Decides every recorded request again with `engine`; returns the decisions that changed.
pub fn replay<'a>(engine: &PolicyEngine, steps: &'a [RecordedStep]) -> Vec<Change<'a>> {
    steps
        .iter()
        .filter_map(|step| {
            let now = engine.decide(&step.request);
            (now.decision != step.verdict).then_some(Change { step, now })
        })
        .collect()
}

/// One row of `policy diff`'s table: the decisions that moved from one rule to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffRow {
    /// What decided when the run was recorded, with its verdict (`ask by preset`).
    pub then: String,
    /// What decides now, with its verdict.
    pub now: String,
    pub stricter: usize,
    pub looser: usize,
}

/// The changes grouped by the rule that decided then and the rule that decides now.
pub fn diff_table(changes: &[Change<'_>]) -> Vec<DiffRow> {
    let mut rows: BTreeMap<(String, String), (usize, usize)> = BTreeMap::new();
    for change in changes {
        let then = format!("{} by {}", change.step.verdict, change.step.decided_by());
        let now = format!("{} by {}", change.now.decision, decided_by(&change.now));
        let counts = rows.entry((then, now)).or_default();
        if change.looser() {
            counts.1 += 1;
        } else {
            counts.0 += 1;
        }
    }
    rows.into_iter()
        .map(|((then, now), (stricter, looser))| DiffRow {
            then,
            now,
            stricter,
            looser,
        })
        .collect()
}

/// Fewest answers a group needs before `policy suggest` proposes a rule for it.
pub const DEFAULT_MIN_ANSWERS: usize = 2;

/// Examples each suggested rule carries at most.
const EXAMPLES_PER_RULE: usize = 3;

/// Asks that belong together: the same asker, window program, kind of action (and chord) and
/// intents.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct GroupKey {
    asked_by: String,
    app: Option<String>,
    kind: &'static str,
    chord: Option<String>,
    intents: Vec<Intent>,
    /// Secret detectors that fired (what a `floor.secret` unlock names).
    secrets: Vec<String>,
}

impl GroupKey {
    /// `click in firefox (send_email)`, for comments and reasons.
    fn describe(&self) -> String {
        let mut text = match &self.chord {
            Some(chord) => format!("{} {chord}", self.kind),
            None => self.kind.to_owned(),
        };
        match &self.app {
            Some(app) => {
                let _ = write!(text, " in {app}");
            }
            None => text.push_str(" in an unnamed window"),
        }
        if !self.intents.is_empty() {
            let names: Vec<&str> = self.intents.iter().map(|i| i.name()).collect();
            let _ = write!(text, " ({})", names.join(", "));
        }
        text
    }
}

#[derive(Default)]
struct Group<'a> {
    layer: Option<Layer>,
    yes: usize,
    no: usize,
    by_answer: BTreeMap<&'static str, usize>,
    steps: Vec<&'a RecordedStep>,
    runs: BTreeSet<&'a str>,
}

/// What `policy suggest` found: TOML to review and paste, and what it counted.
#[derive(Debug, Default)]
pub struct Suggestions {
    /// Candidate rules, commented-out unlocks and notes, as TOML.
    pub toml: String,
    /// Rules suggested as they are.
    pub rules: usize,
    /// Floor unlocks suggested, commented out.
    pub unlocks: usize,
    /// Asks a person answered.
    pub answered: usize,
    /// Asks answered by `--yes` or by nobody (no terminal): not the person's word, so not
    /// learned from.
    pub not_by_a_person: usize,
}

/// Inputs `suggest` needs from the policy in force.
pub struct SuggestContext<'a> {
    /// The current files: a group they already decide as its answers did is not suggested
    /// again.
    pub current: &'a PolicyEngine,
    /// Checks a candidate: the user's file with the candidate appended must load and pass
    /// its examples. Returns why not.
    pub verify: &'a dyn Fn(&str) -> Result<(), String>,
    pub min_answers: usize,
}

/// Groups the asks a person answered and writes a candidate rule for each group whose
/// answers agree.
///
/// - All yes to an ask of the preset or the defaults: an `allow` rule scoped to the program,
///   the action (and chord) and the intents.
/// - All no: a `deny` rule with the same scope.
/// - All yes to an ask of the floor: a commented-out, scoped `unlock` of that floor item.
/// - All yes to an ask of a rule in a policy file: a note, because an allow rule cannot relax
///   another rule's ask (the strictest match wins).
/// - Mixed answers, too few answers, or asks in an unnamed window: a note, no rule.
///
/// Each rule carries up to three `[[rule.example]]` entries from the traces and was checked
/// against the user's file (`SuggestContext::verify`) before it is printed.
pub fn suggest(steps: &[RecordedStep], context: &SuggestContext<'_>) -> Suggestions {
    let mut out = Suggestions::default();
    let mut groups: BTreeMap<GroupKey, Group<'_>> = BTreeMap::new();
    for step in steps {
        if step.verdict != Verdict::Ask {
            continue;
        }
        let Some(answer) = step.answer else { continue };
        if step.answered_by != Some(AnsweredBy::Person) {
            out.not_by_a_person += 1;
            continue;
        }
        out.answered += 1;
        let key = group_key(step, context.current);
        let group = groups.entry(key).or_default();
        group.layer = group.layer.or(step.layer);
        match answer {
            Answer::Deny => group.no += 1,
            Answer::Once | Answer::Session | Answer::Always => group.yes += 1,
        }
        *group.by_answer.entry(answer_name(answer)).or_default() += 1;
        group.steps.push(step);
        group.runs.insert(&step.run);
    }

    let mut taken_ids: BTreeSet<String> = BTreeSet::new();
    for (key, group) in &groups {
        let answered = group.yes + group.no;
        let tally: Vec<String> = group
            .by_answer
            .iter()
            .map(|(answer, n)| format!("{answer} {n}"))
            .collect();
        let heading = format!(
            "# {} ask(s) by {} about {}, answered {} in {} run(s)",
            answered,
            key.asked_by,
            key.describe(),
            tally.join(", "),
            group.runs.len()
        );
        let note = |out: &mut Suggestions, why: &str| {
            let _ = writeln!(out.toml, "{heading}\n# {why}\n");
        };
        if group.yes > 0 && group.no > 0 {
            note(
                &mut out,
                "answered both ways: no rule suggested; keep being asked",
            );
            continue;
        }
        if answered < context.min_answers {
            note(
                &mut out,
                &format!(
                    "fewer than {} answers: no rule suggested yet",
                    context.min_answers
                ),
            );
            continue;
        }
        let Some(app) = key.app.clone() else {
            note(
                &mut out,
                "the window had no program name, so a rule could not be scoped to it",
            );
            continue;
        };
        let verdict = if group.yes > 0 {
            Verdict::Allow
        } else {
            Verdict::Deny
        };
        let floor = group.layer == Some(Layer::Floor) || key.asked_by.starts_with("floor.");
        if already_decided(context.current, &group.steps, verdict) {
            note(
                &mut out,
                &format!("the current policy already decides these {verdict}: nothing to add"),
            );
            continue;
        }
        if verdict == Verdict::Allow
            && !floor
            && matches!(group.layer, Some(Layer::User | Layer::System))
        {
            note(
                &mut out,
                &format!(
                    "rule '{}' asked and you said yes every time, but an allow rule cannot relax another rule's ask (the strictest match wins): narrow rule '{}', or answer \"always\" where it may be remembered",
                    key.asked_by, key.asked_by
                ),
            );
            continue;
        }
        let unlock = if floor && verdict == Verdict::Allow {
            match unlock_item(key) {
                Ok(item) => Some(item),
                Err(why) => {
                    note(&mut out, &why);
                    continue;
                }
            }
        } else {
            None
        };
        let id = unique_id(&suggested_id(key, verdict), &mut taken_ids);
        let rule = rule_toml(&id, verdict, key, &app, unlock, group, context.current);
        if let Err(why) = (context.verify)(&rule) {
            note(
                &mut out,
                &format!(
                    "a rule was drafted but does not pass `policy check` with your file: {}",
                    why.replace('\n', "\n#   ")
                ),
            );
            continue;
        }
        let _ = writeln!(out.toml, "{heading}");
        if unlock.is_some() {
            out.unlocks += 1;
            let _ = writeln!(
                out.toml,
                "# This unlocks a floor item: the floor asks about it every time. Remove the\n# leading '# ' from the lines below only if you mean it; every run will list it."
            );
            for line in rule.lines() {
                if line.is_empty() {
                    out.toml.push_str("#\n");
                } else {
                    let _ = writeln!(out.toml, "# {line}");
                }
            }
            out.toml.push('\n');
        } else {
            out.rules += 1;
            let _ = writeln!(out.toml, "{rule}");
        }
    }
    out
}

fn answer_name(answer: Answer) -> &'static str {
    match answer {
        Answer::Once => "once",
        Answer::Session => "session",
        Answer::Always => "always",
        Answer::Deny => "deny",
    }
}

fn group_key(step: &RecordedStep, current: &PolicyEngine) -> GroupKey {
    let action = &step.request.action;
    let chord = match action {
        Action::Key { chord } | Action::HoldKey { chord, .. } => Some(
            crate::input::Chord::parse(chord).map_or_else(|_| chord.clone(), |c| c.normalized()),
        ),
        _ => None,
    };
    let mut intents: Vec<Intent> = step
        .intents
        .iter()
        .copied()
        .chain([step.request.declared_intent])
        .chain(step.request.inferred_intents.iter().copied())
        .filter(|i| *i != Intent::Other)
        .collect();
    intents.sort();
    intents.dedup();
    let mut secrets: Vec<String> = step
        .request
        .detector_hits
        .iter()
        .filter(|name| current.detectors().is_secret(name))
        .cloned()
        .collect();
    secrets.sort();
    secrets.dedup();
    GroupKey {
        asked_by: step.decided_by(),
        app: step.request.app.as_ref().map(|a| a.to_lowercase()),
        kind: action.kind(),
        chord,
        intents,
        secrets,
    }
}

/// Whether `current` already decides every step of the group as `verdict`.
fn already_decided(current: &PolicyEngine, steps: &[&RecordedStep], verdict: Verdict) -> bool {
    steps
        .iter()
        .all(|s| current.decide(&s.request).decision == verdict)
}

/// The floor item an all-yes floor group may unlock, or why none.
fn unlock_item(key: &GroupKey) -> Result<&'static str, String> {
    match key.asked_by.as_str() {
        "floor.risky_intent" if key.intents.iter().any(|i| i.is_floor()) => {
            Ok("floor.risky_intent")
        }
        "floor.secret" if !key.secrets.is_empty() => Ok("floor.secret"),
        "floor.session_chord" if key.chord.is_some() => Ok("floor.session_chord"),
        other => Err(format!(
            "{other} cannot be unlocked for these asks: the floor stays in force"
        )),
    }
}

/// `suggested-firefox-click-send_email`, in the characters an id is written in.
fn suggested_id(key: &GroupKey, verdict: Verdict) -> String {
    let mut parts = vec![
        if verdict == Verdict::Allow {
            "allow"
        } else {
            "deny"
        }
        .to_owned(),
    ];
    parts.extend(key.app.clone());
    parts.push(key.kind.to_owned());
    parts.extend(key.chord.clone());
    parts.extend(key.intents.iter().map(|i| i.name().to_owned()));
    let slug: String = parts
        .join("-")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    format!("suggested-{slug}")
}

fn unique_id(base: &str, taken: &mut BTreeSet<String>) -> String {
    let mut id = base.to_owned();
    let mut n = 2;
    while taken.contains(&id) {
        id = format!("{base}-{n}");
        n += 1;
    }
    taken.insert(id.clone());
    id
}

/// A TOML string.
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

fn toml_list<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let items: Vec<String> = items.into_iter().map(toml_string).collect();
    format!("[{}]", items.join(", "))
}

/// The candidate rule as TOML, with examples from the group's steps.
fn rule_toml(
    id: &str,
    verdict: Verdict,
    key: &GroupKey,
    app: &str,
    unlock: Option<&str>,
    group: &Group<'_>,
    current: &PolicyEngine,
) -> String {
    let answered = group.yes + group.no;
    let reason = if verdict == Verdict::Allow {
        format!(
            "you said yes to all {answered} asks about {}",
            key.describe()
        )
    } else {
        format!(
            "you said no to all {answered} asks about {}",
            key.describe()
        )
    };
    let mut rule = String::new();
    let _ = writeln!(rule, "[[rule]]");
    let _ = writeln!(rule, "id = {}", toml_string(id));
    let _ = writeln!(rule, "decision = {}", toml_string(verdict.name()));
    let _ = writeln!(
        rule,
        "reason = {}",
        toml_string(&current.detectors().redact(&reason))
    );
    let _ = writeln!(rule, "app = {}", toml_list([app]));
    let _ = writeln!(rule, "action = {}", toml_list([key.kind]));
    if let Some(chord) = &key.chord {
        let _ = writeln!(rule, "keys = {}", toml_list([chord.as_str()]));
    }
    if !key.intents.is_empty() {
        let _ = writeln!(
            rule,
            "intent = {}",
            toml_list(key.intents.iter().map(|i| i.name()))
        );
    }
    if unlock == Some("floor.secret") {
        let _ = writeln!(
            rule,
            "text_matches = {}",
            toml_list(key.secrets.iter().map(String::as_str))
        );
    }
    if let Some(item) = unlock {
        let _ = writeln!(rule, "unlock = {}", toml_list([item]));
    }
    let mut seen_actions = BTreeSet::new();
    for step in &group.steps {
        if seen_actions.len() == EXAMPLES_PER_RULE {
            break;
        }
        let action = redacted_action(&step.request.action, current);
        let Ok(inline) = toml::Value::try_from(&action) else {
            continue;
        };
        if !seen_actions.insert(inline.to_string()) {
            continue;
        }
        let _ = writeln!(rule, "\n  [[rule.example]]");
        let _ = writeln!(rule, "  action = {inline}");
        let _ = writeln!(rule, "  app = {}", toml_string(app));
        if let Some(intent) = key.intents.last() {
            let _ = writeln!(rule, "  intent = {}", toml_string(intent.name()));
        }
        let _ = writeln!(rule, "  expect = {}", toml_string(verdict.name()));
    }
    rule
}

/// The action with whatever today's detectors flag in its text replaced.
fn redacted_action(action: &Action, current: &PolicyEngine) -> Action {
    action.with_text_redacted(|text| current.detectors().redact(text))
}
