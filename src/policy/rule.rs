//! A compiled rule and the facts it matches against.

use regex::Regex;

use super::{DetectorHit, Intent, NormalizedPoint, Remember, Verdict};

/// What the engine worked out about one request; every rule matches against the same facts.
pub(super) struct Facts<'a> {
    pub kind: &'static str,
    /// Another kind the action also counts as: a drag that stays within the click
    /// threshold is a click.
    pub also_kind: Option<&'static str>,
    /// Lower case.
    pub app: Option<String>,
    pub title: &'a str,
    /// The normalized chord of `key` and `hold_key`.
    pub chord: Option<String>,
    /// A paste whose text could not be read.
    pub paste_unread: bool,
    /// Whether the chord's key is Caps Lock.
    pub caps_lock: bool,
    /// What the action enters into a text field: what it types or pastes.
    pub typed: Option<String>,
    /// Declared and inferred, sorted, without duplicates.
    pub intents: Vec<Intent>,
    pub hits: Vec<DetectorHit>,
    pub points: &'a [NormalizedPoint],
    /// What this run typed into the window before this action (Tab and Return as `\t` and
    /// `\n`); with `typed`, what `window_text_matches` reads.
    pub typed_before: &'a str,
}

impl Facts<'_> {
    /// Everything this run typed into the window, this action's text included, in order.
    /// Built only for a rule that asks for it.
    fn window_text(&self) -> String {
        format!(
            "{}{}",
            self.typed_before,
            self.typed.as_deref().unwrap_or_default()
        )
    }
}

/// A named `[apps.NAME]` group.
#[derive(Debug, Clone)]
pub(super) struct AppGroup {
    /// Lower case.
    pub names: Vec<String>,
    pub title: Option<Regex>,
}

#[derive(Debug, Clone)]
pub(super) enum AppMatcher {
    /// Lower case program name.
    Program(String),
    Group(AppGroup),
}

impl AppMatcher {
    fn matches(&self, facts: &Facts) -> bool {
        let is_named = |names: &[String]| {
            facts
                .app
                .as_ref()
                .is_some_and(|app| names.iter().any(|n| n == app))
        };
        match self {
            AppMatcher::Program(name) => is_named(std::slice::from_ref(name)),
            AppMatcher::Group(group) => {
                is_named(&group.names)
                    || group
                        .title
                        .as_ref()
                        .is_some_and(|t| !facts.title.is_empty() && t.is_match(facts.title))
            }
        }
    }
}

/// A rectangle in fractions of one monitor: `[left, top, right, bottom]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Region {
    pub monitor: usize,
    pub rect: [f64; 4],
}

impl Region {
    fn contains(&self, p: &NormalizedPoint) -> bool {
        let [left, top, right, bottom] = self.rect;
        p.monitor == self.monitor && p.x >= left && p.x <= right && p.y >= top && p.y <= bottom
    }
}

/// A floor entry that a rule may unlock within its scope. The other floor entries (deskhand's
/// own files, Caps Lock, an unreadable paste) guard deskhand itself and cannot be unlocked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FloorItem {
    /// The ask for sending, buying, paying and deleting: for the rule's floor intents.
    RiskyIntent,
    /// The deny for typing a detected secret: for the detectors in the rule's `text_matches`.
    Secret,
    /// The deny for chords that end the session: for the session chords in the rule's `keys`.
    SessionChord,
}

impl FloorItem {
    pub const ALL: [FloorItem; 3] = [
        FloorItem::RiskyIntent,
        FloorItem::Secret,
        FloorItem::SessionChord,
    ];

    /// The floor entry's id, as decisions name it and `unlock` spells it.
    pub fn id(self) -> &'static str {
        match self {
            FloorItem::RiskyIntent => "floor.risky_intent",
            FloorItem::Secret => "floor.secret",
            FloorItem::SessionChord => "floor.session_chord",
        }
    }

    pub fn parse(name: &str) -> Option<FloorItem> {
        FloorItem::ALL.into_iter().find(|item| item.id() == name)
    }
}

/// One `[[rule]]`. Every present field must match; within a list, any item may.
#[derive(Debug, Clone)]
pub(super) struct Rule {
    pub id: String,
    pub decision: Verdict,
    pub reason: String,
    pub remember: Remember,
    pub line: usize,
    pub actions: Option<Vec<String>>,
    pub apps: Option<Vec<AppMatcher>>,
    pub title: Option<Regex>,
    pub intents: Option<Vec<Intent>>,
    pub text_matches: Option<Vec<String>>,
    pub keys: Option<Vec<String>>,
    pub region: Option<Region>,
    /// Matched against `Facts::window_text`.
    pub window_text: Option<Regex>,
    /// The floor entries this rule unlocks where it matches (unless the system layer locks
    /// the floor), each with what it unlocks: the floor intents in its `intent`, the detectors
    /// in its `text_matches`, the session chords in its `keys`.
    pub unlock: Vec<(FloorItem, Vec<String>)>,
}

impl Rule {
    pub fn matches(&self, facts: &Facts) -> bool {
        let any = |list: &Option<Vec<String>>, value: Option<&str>| match list {
            None => true,
            Some(items) => value.is_some_and(|v| items.iter().any(|i| i == v)),
        };
        (any(&self.actions, Some(facts.kind))
            || facts
                .also_kind
                .is_some_and(|kind| any(&self.actions, Some(kind))))
            && self
                .apps
                .as_ref()
                .is_none_or(|apps| apps.iter().any(|a| a.matches(facts)))
            && self
                .title
                .as_ref()
                .is_none_or(|t| !facts.title.is_empty() && t.is_match(facts.title))
            && self
                .intents
                .as_ref()
                .is_none_or(|wanted| wanted.iter().any(|i| facts.intents.contains(i)))
            && self
                .text_matches
                .as_ref()
                .is_none_or(|names| facts.hits.iter().any(|hit| names.contains(&hit.name)))
            && any(&self.keys, facts.chord.as_deref())
            && self
                .region
                .as_ref()
                .is_none_or(|r| self.region_holds(r, facts))
            && self
                .window_text
                .as_ref()
                .is_none_or(|t| t.is_match(&facts.window_text()))
    }

    /// What this rule, compiled, would unlock of `item`: the names a decision reports.
    pub fn unlockable(&self, item: FloorItem) -> Vec<String> {
        match item {
            FloorItem::RiskyIntent => self
                .intents
                .iter()
                .flatten()
                .filter(|i| i.is_floor())
                .map(|i| i.name().to_owned())
                .collect(),
            FloorItem::Secret => self.text_matches.clone().unwrap_or_default(),
            FloorItem::SessionChord => self
                .keys
                .iter()
                .flatten()
                .filter(|chord| super::engine::is_session_chord(chord))
                .cloned()
                .collect(),
        }
    }

    /// A rule that allows speaks only for actions that stay inside its region, every drag
    /// point included; one that asks or denies speaks as soon as any point is inside.
    fn region_holds(&self, region: &Region, facts: &Facts) -> bool {
        if self.decision == Verdict::Allow {
            !facts.points.is_empty() && facts.points.iter().all(|p| region.contains(p))
        } else {
            facts.points.iter().any(|p| region.contains(p))
        }
    }
}
