//! Intents the runtime works out for itself, from the typed text and the window, so that a
//! model which declares `other` cannot walk a risky action past the policy.
//!
//! These are heuristics and they lean cautious: a click inside a mail composer may be the Send
//! button, so it counts as `send_email`. They only ever add intents; a missed inference leaves
//! the declared intent and the user's rules in charge, never less.

use std::sync::LazyLock;

use regex::Regex;

use super::Intent;
use crate::input::{Action, Chord, ChordKey, Modifier, NamedKey};

/// Every intent the action's text or context implies, without duplicates, riskiest last.
pub fn infer_intents(action: &Action, app: Option<&str>, title: Option<&str>) -> Vec<Intent> {
    let app = app.map(str::to_ascii_lowercase).unwrap_or_default();
    let title = title.unwrap_or_default();
    let mut found = Vec::new();

    if let Action::Type { text } = action {
        for (intent, pattern) in TEXT_PATTERNS.iter() {
            if pattern.is_match(text) {
                found.push(*intent);
            }
        }
    }

    let gesture = Gesture::of(action);
    let context = Context::of(&app, title);
    if context.mail && (context.compose && gesture.activates() || gesture.is_send_chord()) {
        found.push(Intent::SendEmail);
    }
    if context.chat && gesture.submits_line() {
        found.push(Intent::SendMessage);
    }
    for (intent, pattern) in TITLE_PATTERNS.iter() {
        if gesture.activates() && pattern.is_match(title) {
            found.push(*intent);
        }
    }
    if gesture.shift_delete || (gesture.plain_delete && FILE_MANAGERS.contains(&app.as_str())) {
        found.push(Intent::Delete);
    }
    if gesture.activates() && SOFTWARE_INSTALLERS.contains(&app.as_str()) {
        found.push(Intent::Install);
    }

    found.sort();
    found.dedup();
    found
}

/// What kind of gesture an action is, as far as inference cares.
struct Gesture {
    click: bool,
    /// Return, keypad Enter or Space: keys that press a focused button.
    activating_key: bool,
    /// ctrl+Return and friends: "send" in most mail clients.
    send_chord: bool,
    /// Return without ctrl/alt/shift, or typed text with a newline: submits a chat line.
    line_submit: bool,
    shift_delete: bool,
    plain_delete: bool,
}

impl Gesture {
    fn of(action: &Action) -> Gesture {
        let mut gesture = Gesture {
            click: matches!(
                action,
                Action::Click { .. } | Action::DoubleClick { .. } | Action::TripleClick { .. }
            ),
            activating_key: false,
            send_chord: false,
            line_submit: false,
            shift_delete: false,
            plain_delete: false,
        };
        if let Action::Type { text } = action {
            gesture.line_submit = text.contains('\n');
        }
        if let Ok(Some(chord)) = action.chord() {
            gesture.read_chord(&chord);
        }
        gesture
    }

    fn read_chord(&mut self, chord: &Chord) {
        let has = |m: Modifier| chord.modifiers.contains(&m);
        match chord.key {
            ChordKey::Named(NamedKey::Return) => {
                self.activating_key = true;
                self.send_chord = has(Modifier::Ctrl) || has(Modifier::Alt);
                self.line_submit = chord.modifiers.is_empty() || has(Modifier::Ctrl);
            }
            ChordKey::Named(NamedKey::Space) => self.activating_key = chord.modifiers.is_empty(),
            ChordKey::Char('s') => self.send_chord = has(Modifier::Alt) || has(Modifier::Ctrl),
            ChordKey::Named(NamedKey::Delete) => {
                self.shift_delete = has(Modifier::Shift);
                self.plain_delete = chord.modifiers.is_empty();
            }
            _ => {}
        }
    }

    fn activates(&self) -> bool {
        self.click || self.activating_key
    }

    fn is_send_chord(&self) -> bool {
        self.send_chord
    }

    fn submits_line(&self) -> bool {
        self.line_submit
    }
}

struct Context {
    mail: bool,
    compose: bool,
    chat: bool,
}

impl Context {
    fn of(app: &str, title: &str) -> Context {
        Context {
            mail: MAIL_APPS.contains(&app) || MAIL_TITLE.is_match(title),
            compose: COMPOSE_TITLE.is_match(title),
            chat: CHAT_APPS.contains(&app) || CHAT_TITLE.is_match(title),
        }
    }
}

const MAIL_APPS: &[&str] = &[
    "thunderbird",
    "betterbird",
    "evolution",
    "geary",
    "kmail",
    "claws-mail",
    "mailspring",
    "sylpheed",
    "mutt",
    "neomutt",
];

const CHAT_APPS: &[&str] = &[
    "slack",
    "discord",
    "signal",
    "signal-desktop",
    "telegram",
    "telegram-desktop",
    "element",
    "element-desktop",
    "teams",
    "teams-for-linux",
    "whatsapp",
    "whatsapp-for-linux",
    "skype",
    "skypeforlinux",
    "mattermost-desktop",
    "zulip",
    "pidgin",
    "hexchat",
    "weechat",
    "irssi",
];

const FILE_MANAGERS: &[&str] = &[
    "nautilus",
    "dolphin",
    "thunar",
    "nemo",
    "pcmanfm",
    "pcmanfm-qt",
    "caja",
    "konqueror",
];

const SOFTWARE_INSTALLERS: &[&str] = &[
    "gnome-software",
    "plasma-discover",
    "discover",
    "synaptic",
    "snap-store",
    "mintinstall",
    "pamac-manager",
];

fn regex(pattern: &str) -> Regex {
    // The patterns are constants of this file, checked by the tests below; an error here is a
    // bug in this file, caught by every test run, never by a user.
    Regex::new(pattern).unwrap_or_else(|e| panic!("built-in pattern {pattern:?}: {e}"))
}

static MAIL_TITLE: LazyLock<Regex> = LazyLock::new(|| {
    regex(r"(?i)\b(gmail|outlook|mail|inbox|proton ?mail|thunderbird|fastmail|roundcube)\b")
});
static COMPOSE_TITLE: LazyLock<Regex> = LazyLock::new(|| {
    regex(r"(?i)(\b(compose|new message|write|reply|forward|draft)\b|\b(re|fwd?):)")
});
static CHAT_TITLE: LazyLock<Regex> = LazyLock::new(|| {
    regex(
        r"(?i)\b(slack|discord|signal|telegram|whatsapp|element|microsoft teams|messenger|mattermost|zulip|rocket\.chat)\b",
    )
});

/// Titles that make an activating click or Enter mean more than navigation.
static TITLE_PATTERNS: LazyLock<Vec<(Intent, Regex)>> = LazyLock::new(|| {
    vec![
        (
            Intent::Payment,
            regex(r"(?i)\b(payment|pay now|billing|card details|paypal|bank transfer)\b"),
        ),
        (
            Intent::Purchase,
            regex(
                r"(?i)\b(checkout|check out|place (your )?order|buy now|purchase|shopping (cart|basket)|your (cart|basket))\b",
            ),
        ),
        (
            Intent::Delete,
            regex(r"(?i)\b(delete|permanently|empty trash|erase|remove account)\b"),
        ),
        (
            Intent::Login,
            regex(r"(?i)\b(sign[ -]?in|log[ -]?in|authenticate)\b"),
        ),
        (
            Intent::Publish,
            regex(r"(?i)\b(publish|new post|create post|tweet)\b"),
        ),
    ]
});

/// Shell commands and queries whose typing (in a terminal, usually followed by Return) does
/// the risky thing itself.
static TEXT_PATTERNS: LazyLock<Vec<(Intent, Regex)>> = LazyLock::new(|| {
    let command_start = r"(^|[\s;&|(`]|\$\()";
    vec![
        (
            Intent::SendEmail,
            regex(&format!(
                r"{command_start}(mail|mailx|sendmail|mutt|neomutt|msmtp|swaks)\s"
            )),
        ),
        (
            Intent::Delete,
            regex(&format!(
                r"(?i){command_start}(sudo\s+)?(rm|rmdir|shred|unlink|srm|wipefs)\s|\bmkfs(\.\w+)?\b|\bdd\s[^\n]*\bof=/dev/|\b(drop\s+(table|database|schema)|delete\s+from|truncate\s+table)\b|\bgit\s+(push\s[^\n]*(--force|-f\b)|reset\s+--hard|clean\s+-\w*f)|\bfind\s[^\n]*\s-delete\b"
            )),
        ),
        (
            Intent::Install,
            regex(
                r"\b(apt|apt-get|aptitude|dnf|yum|zypper|snap|flatpak|brew)\s+(-y\s+)?install\b|\bpacman\s+-S|\bpip3?\s+install\b|\bpipx\s+install\b|\bnpm\s+(install|i)\s+-g\b|\bcargo\s+install\b|\bdpkg\s+-i\b|\b(curl|wget)\s[^\n|]*\|\s*(sudo\s+)?(ba|z|da)?sh\b",
            ),
        ),
        (
            Intent::Publish,
            regex(
                r"\bgit\s+push\b|\b(npm|cargo|gem|poetry)\s+publish\b|\btwine\s+upload\b|\bgh\s+release\s+create\b|\bdocker\s+push\b",
            ),
        ),
    ]
});

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(text: &str) -> Action {
        Action::Type { text: text.into() }
    }

    fn key(chord: &str) -> Action {
        Action::Key {
            chord: chord.into(),
        }
    }

    fn click() -> Action {
        Action::Click {
            x: 1,
            y: 1,
            button: Default::default(),
        }
    }

    #[test]
    fn every_built_in_pattern_compiles() {
        LazyLock::force(&TEXT_PATTERNS);
        LazyLock::force(&TITLE_PATTERNS);
        LazyLock::force(&MAIL_TITLE);
        LazyLock::force(&COMPOSE_TITLE);
        LazyLock::force(&CHAT_TITLE);
    }

    #[test]
    fn shell_text_implies_its_intent() {
        let cases = [
            ("rm -rf ~\n", vec![Intent::Delete]),
            ("sudo rm -r /tmp/x", vec![Intent::Delete]),
            (
                "echo hi | mail -s test bob@example.com\n",
                vec![Intent::SendEmail],
            ),
            ("sudo apt-get install -y htop", vec![Intent::Install]),
            ("curl -fsSL https://x.sh | sh", vec![Intent::Install]),
            ("git push origin main", vec![Intent::Publish]),
            (
                "git push --force origin main",
                vec![Intent::Publish, Intent::Delete],
            ),
            ("DROP TABLE users;", vec![Intent::Delete]),
            ("ls -la\n", vec![]),
            ("the form was removed from the mailbox", vec![]),
            ("firmware", vec![]),
        ];
        for (text, expected) in cases {
            assert_eq!(
                infer_intents(&typed(text), None, None),
                expected,
                "{text:?}"
            );
        }
    }

    #[test]
    fn mail_composer_clicks_and_send_chords_are_sending() {
        let composer = Some("Write: (no subject) - Thunderbird");
        assert_eq!(
            infer_intents(&click(), Some("thunderbird"), composer),
            vec![Intent::SendEmail]
        );
        assert_eq!(
            infer_intents(&key("ctrl+Return"), Some("firefox"), Some("Inbox - Gmail")),
            vec![Intent::SendEmail]
        );
        // Typing the body is not sending it.
        assert_eq!(
            infer_intents(&typed("Hello Bob"), Some("thunderbird"), composer),
            vec![]
        );
        // Outside mail, ctrl+Return is just a key.
        assert_eq!(
            infer_intents(&key("ctrl+Return"), Some("code"), Some("main.rs")),
            vec![]
        );
    }

    #[test]
    fn chat_lines_are_sent_by_return() {
        assert_eq!(
            infer_intents(&key("Return"), Some("slack"), Some("general")),
            vec![Intent::SendMessage]
        );
        assert_eq!(
            infer_intents(&typed("hi all\n"), Some("signal-desktop"), None),
            vec![Intent::SendMessage]
        );
        assert_eq!(
            infer_intents(&key("shift+Return"), Some("slack"), None),
            vec![]
        );
    }

    #[test]
    fn titles_raise_clicks_but_not_pointer_moves() {
        let title = Some("Checkout – Payment details");
        assert_eq!(
            infer_intents(&click(), Some("firefox"), title),
            vec![Intent::Purchase, Intent::Payment]
        );
        assert_eq!(
            infer_intents(&Action::Move { x: 1, y: 1 }, Some("firefox"), title),
            vec![]
        );
        assert_eq!(
            infer_intents(&key("Return"), None, Some("Sign in – Example")),
            vec![Intent::Login]
        );
    }

    #[test]
    fn deleting_files_is_delete() {
        assert_eq!(
            infer_intents(&key("shift+Delete"), Some("code"), None),
            vec![Intent::Delete]
        );
        assert_eq!(
            infer_intents(&key("Delete"), Some("nautilus"), Some("Home")),
            vec![Intent::Delete]
        );
        assert_eq!(infer_intents(&key("Delete"), Some("gedit"), None), vec![]);
    }
}
