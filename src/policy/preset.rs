//! Presets: what the policy decides when no rule matched and `[defaults]` says nothing, and the
//! commented starter file that `deskhand policy init` writes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::Verdict;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    Permissive,
    Balanced,
    Strict,
}

impl Preset {
    pub const ALL: [Preset; 3] = [Preset::Strict, Preset::Balanced, Preset::Permissive];

    pub fn name(self) -> &'static str {
        match self {
            Preset::Strict => "strict",
            Preset::Balanced => "balanced",
            Preset::Permissive => "permissive",
        }
    }

    /// The decision for an action of `kind` that nothing else decided.
    pub fn fallback(self, kind: &str) -> Verdict {
        // Actions that touch nothing (waiting, ending the task, asking the user) are allowed
        // by every preset; the floor and the rules still see them.
        let inert = matches!(kind, "wait" | "done" | "fail" | "call_user");
        match self {
            Preset::Permissive => Verdict::Allow,
            Preset::Balanced if kind == "hold_key" => Verdict::Ask,
            Preset::Balanced => Verdict::Allow,
            Preset::Strict if inert || kind == "move" => Verdict::Allow,
            Preset::Strict => Verdict::Ask,
        }
    }

    /// The decision when a non-secret detector (an IBAN, a user pattern) fired and no rule
    /// matched. Secret detectors are the floor's business.
    pub fn detector_fallback(self) -> Verdict {
        match self {
            Preset::Permissive => Verdict::Allow,
            Preset::Balanced | Preset::Strict => Verdict::Ask,
        }
    }

    fn summary(self) -> &'static str {
        match self {
            Preset::Strict => {
                "asks before every click, key and keystroke; allows pointer moves and waits"
            }
            Preset::Balanced => {
                "allows clicking, typing and keys; asks for held keys and sensitive text"
            }
            Preset::Permissive => "allows everything the floor and your rules do not stop",
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Preset {
    type Err = String;

    fn from_str(s: &str) -> Result<Preset, String> {
        Preset::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown preset '{s}'; expected strict, balanced or permissive"))
    }
}

/// The commented file `deskhand policy init` writes. It is a working policy: its examples pass
/// under every preset, and a test checks that.
pub fn starter_policy(preset: Preset) -> String {
    STARTER
        .replace("{preset}", preset.name())
        .replace("{summary}", preset.summary())
}

const STARTER: &str = r#"# deskhand policy: decides every action the model proposes (allow, ask or deny).
#
# How a decision is made:
# - Every [[rule]] that matches is counted, in every layer (/etc/deskhand/policy.toml, this
#   file, remembered grants, this session's answers). The strictest wins: deny, then ask, then
#   allow. Rule order does not matter.
# - [defaults] decide only when no rule matched; the preset decides when nothing else does.
# - A floor under every preset and grant: typing a detected secret is denied; chords that kill
#   or end the session are denied; send_*, purchase, payment and delete ask, every time. Only a
#   scoped rule of yours can `unlock` part of it (see the end of this file), and the system
#   layer can lock even that with [floor] locked = true.
#
# Check this file with `deskhand policy check`; try an action with
# `deskhand policy explain '{"action":"type","text":"ls"}' --app xterm`.
# A broken file locks deskhand (it may only observe and abort) until it is fixed.

schema_version = 1

# strict | balanced | permissive. This one {summary}.
preset = "{preset}"

# Decisions per action kind when no rule matched: allow or ask (a deny needs a rule, so the
# model can be told its reason). Kinds: click, double_click, triple_click, move, drag, scroll,
# type, key, hold_key, wait, done, fail, call_user; detector_hit is for sensitive text that no
# rule covered.
[defaults]
# drag = "ask"
# detector_hit = "ask"

# When a budget runs out the run pauses and asks you; it never goes on silently.
[budgets]
steps_per_task = 100
actions_per_minute = 60
identical_actions = 5        # the same action this many times in a row, then ask
task_timeout_s = 1800

[budgets.per_intent_per_hour]
send_email = 3
send_message = 10

# A model server on another machine (`deskhand run --engine URL`) sees every screenshot, so
# deskhand sends them only to this machine (localhost, 127.0.0.1, ::1) and to the hosts listed
# here: the host name alone, without scheme, port or path.
# [engine]
# allowed_hosts = ["gpu-box.lan"]

# Named groups of programs, by executable name (see `deskhand window`). A rule's `app` list
# may name a group ("@terminal", or "terminal" where this file defines it) or a program
# directly. An optional `title` regex also counts as the app; web pages set their titles, so
# use it to add caution rather than to allow.
[apps.terminal]
names = ["xterm", "uxterm", "gnome-terminal-server", "konsole", "xfce4-terminal", "kgx", "ptyxis", "urxvt", "rxvt", "terminator", "guake", "tilix", "alacritty", "kitty", "wezterm", "wezterm-gui", "foot", "footclient", "lxterminal", "mate-terminal", "qterminal"]

[apps.editor]
names = ["code", "gedit", "gnome-text-editor", "kate", "mousepad", "xed"]

[apps.mail]
names = ["thunderbird", "evolution", "geary"]
title = "Gmail|Outlook|Proton Mail"

# Your own detectors for sensitive text: a regex, and whether a hit is a secret (never typed).
[detectors.employee_id]
pattern = 'EMP-\d{6}'
secret = false

# Rules. Fields within a rule must all match; items within a list are alternatives.
# Match fields: action, app, title (regex, case-insensitive), intent, text_matches (detector
# names: card_number, iban, api_token, private_key, password_context and your own), keys
# (chords such as "ctrl+q"), region (a monitor and a rectangle in fractions of it).
# remember = "never" stops an answer from being remembered at all; remember = "session"
# lets it last for this run only. window_text_matches is a regex over what this run typed into
# the window, Tab and Return as \t and \n.

[[rule]]
id = "editor-is-free"
decision = "allow"
reason = "the editor is where the agent works"
app = ["@editor"]
action = ["click", "double_click", "triple_click", "move", "drag", "scroll", "type"]

  [[rule.example]]
  action = { action = "type", text = "fn main() {}" }
  app = "code"
  expect = "allow"

# Editing keys only: other chords in an editor open its terminal, its command palette or
# its extensions, which reach far beyond the file.
[[rule]]
id = "editor-keys"
decision = "allow"
reason = "moving around and editing text in the editor"
app = ["@editor"]
keys = ["Return", "Tab", "shift+Tab", "BackSpace", "Delete", "Escape", "Up", "Down", "Left", "Right", "Home", "End", "Page_Up", "Page_Down", "shift+Up", "shift+Down", "shift+Left", "shift+Right", "shift+Home", "shift+End", "ctrl+Left", "ctrl+Right", "ctrl+Home", "ctrl+End", "ctrl+a", "ctrl+c", "ctrl+x", "ctrl+z", "ctrl+shift+z", "ctrl+y", "ctrl+f", "ctrl+h", "ctrl+s", "ctrl+g"]

  [[rule.example]]
  action = { action = "key", chord = "ctrl+s" }
  app = "code"
  expect = "allow"

[[rule]]
id = "editor-terminal"
decision = "ask"
reason = "this opens the editor's built-in terminal or its command palette, which run commands"
app = ["@editor"]
keys = ["ctrl+`", "ctrl+shift+`", "ctrl+shift+c", "ctrl+j", "ctrl+shift+p", "F1", "F4", "ctrl+alt+t"]
remember = "session"

  [[rule.example]]
  action = { action = "key", chord = "ctrl+`" }
  app = "code"
  expect = "ask"

# "session" because one answer about `ls` must not outlive this run: the next run's commands
# are other commands.
[[rule]]
id = "terminal-commands"
decision = "ask"
reason = "text typed into a terminal runs as a command with your rights"
app = ["@terminal"]
action = ["type", "key", "click", "double_click", "triple_click", "drag"]
remember = "session"

  [[rule.example]]
  action = { action = "type", text = "ls -la" }
  app = "xterm"
  expect = "ask"

[[rule]]
id = "no-recursive-delete"
decision = "deny"
reason = "deleting files from a terminal is done by hand"
app = ["@terminal"]
intent = ["delete"]
remember = "never"

  [[rule.example]]
  action = { action = "type", text = "rm -rf ~/projects" }
  app = "xterm"
  expect = "deny"

[[rule]]
id = "quit-shortcuts"
decision = "ask"
reason = "quitting a program can lose unsaved work"
keys = ["ctrl+q", "alt+f4"]

[[rule]]
id = "top-panel"
decision = "ask"
reason = "the top panel holds power, network and session menus"
action = ["click", "double_click", "triple_click"]
region = { monitor = 0, rect = [0.0, 0.0, 1.0, 0.03] }

  [[rule.example]]
  action = { action = "click", x = 960, y = 10 }
  monitor = 0
  point = [0.5, 0.01]
  expect = "ask"

[[rule]]
id = "employee-ids"
decision = "ask"
reason = "employee ids belong to HR forms only"
text_matches = ["employee_id", "iban"]

# Your own level of risk: a rule may unlock floor.risky_intent (for the floor intents in its
# `intent`), floor.secret (for the detectors in its `text_matches`) or floor.session_chord (for
# the session chords in its `keys`), within a scope (app, title, region, window_text_matches).
# Every run starts by listing your unlocks. For example, mail to your team, sent unasked:
#
# [[rule]]
# id = "mail-to-my-team"
# decision = "allow"
# reason = "I send mail to my team myself every day"
# intent = ["send_email"]
# app = ["thunderbird"]
# title = '^Write: '
# window_text_matches = '^[a-z.]+@example\.com\t'
# unlock = ["floor.risky_intent"]
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_asks_more_than_balanced_which_asks_more_than_permissive() {
        for kind in super::super::ACTION_KINDS {
            assert!(Preset::Strict.fallback(kind) >= Preset::Balanced.fallback(kind));
            assert!(Preset::Balanced.fallback(kind) >= Preset::Permissive.fallback(kind));
        }
        assert_eq!(Preset::Strict.fallback("click"), Verdict::Ask);
        assert_eq!(Preset::Balanced.fallback("type"), Verdict::Allow);
    }

    #[test]
    fn names_round_trip() {
        for preset in Preset::ALL {
            assert_eq!(preset.name().parse::<Preset>(), Ok(preset));
        }
        assert!(
            "lax"
                .parse::<Preset>()
                .unwrap_err()
                .contains("strict, balanced")
        );
    }
}
