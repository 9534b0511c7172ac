//! Check: every action the model proposes is decided here (allow, ask or deny) before anything
//! touches the desktop. This is ordinary code over the user's own files; nothing the model
//! writes or the screen shows can change a rule.
//!
//! - `file`: the TOML policy file, parsed with positions so every error names `file:line:column`.
//! - `engine`: the layers (floor, system file, user file, grants, session grants) and the one
//!   decision rule: every matching rule counts and the strictest wins.
//! - `detect` and `infer`: what the runtime works out for itself (secrets in typed text, risky
//!   intents from the text and the window), which can only raise risk.
//! - `grants`: remembered "always" answers in their own program-written file.
//! - `budget`: steps, rates, repeats, per-intent caps and the task timeout.
//! - `tune`: learning from recorded runs: replaying them against the current files
//!   (`policy test`, `policy diff`) and turning the person's answers into candidate rules
//!   (`policy suggest`).

mod budget;
mod detect;
mod engine;
mod file;
mod grants;
mod infer;
mod preset;
mod request;
mod rule;
mod seen;
#[cfg(test)]
mod tests;
pub mod tune;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use budget::{BudgetExceeded, BudgetLimits, BudgetTracker};
pub use detect::{BUILTIN_DETECTORS, DetectorHit, Detectors, password_context};
pub use engine::{
    Answer, AnswerError, Checker, Decision, Match, Policy, PolicyEngine, PolicyPaths,
    PolicyPathsError, Unlock,
};
pub use file::{Layer, PolicyError, PolicyErrors, SCHEMA_VERSION};
pub use grants::{Grant, GrantError, GrantScope, GrantStore};
pub use infer::{infer_intents, infer_intents_after, shell_normal_form};
pub use preset::{Preset, starter_policy};
pub use request::{NormalizedPoint, Request, WindowRef};
pub use seen::{Changed, SEEN_FILE, changed_since_last_run};

/// What the policy says about one action. The order is strictness: `Allow < Ask < Deny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allow,
    Ask,
    Deny,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Ask => "ask",
            Verdict::Deny => "deny",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What an action is for. The model declares one; the runtime infers more from the typed text
/// and the window; the policy sees all of them, so a declaration can only add risk.
///
/// The order is risk, lowest first; grants are scoped to the riskiest intent of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Intent {
    Other,
    Login,
    Install,
    Publish,
    Delete,
    SendMessage,
    SendEmail,
    Purchase,
    Payment,
}

impl Intent {
    pub const ALL: [Intent; 9] = [
        Intent::Other,
        Intent::Login,
        Intent::Install,
        Intent::Publish,
        Intent::Delete,
        Intent::SendMessage,
        Intent::SendEmail,
        Intent::Purchase,
        Intent::Payment,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Intent::Other => "other",
            Intent::Login => "login",
            Intent::Install => "install",
            Intent::Publish => "publish",
            Intent::Delete => "delete",
            Intent::SendMessage => "send_message",
            Intent::SendEmail => "send_email",
            Intent::Purchase => "purchase",
            Intent::Payment => "payment",
        }
    }

    /// Intents the floor always asks about and never lets anyone remember.
    pub fn is_floor(self) -> bool {
        matches!(
            self,
            Intent::SendEmail
                | Intent::SendMessage
                | Intent::Purchase
                | Intent::Payment
                | Intent::Delete
        )
    }
}

impl fmt::Display for Intent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Intent {
    type Err = String;

    fn from_str(s: &str) -> Result<Intent, String> {
        Intent::ALL
            .into_iter()
            .find(|i| i.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown intent '{s}'; expected one of {}",
                    Intent::ALL.map(Intent::name).join(", ")
                )
            })
    }
}

/// Whether an "always" answer to a rule's ask may be remembered as a grant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Remember {
    Never,
    /// For the rest of the run, never in the grants file.
    Session,
    #[default]
    Always,
}

/// The action kinds a policy can name, in wire-format spelling.
pub const ACTION_KINDS: [&str; 13] = [
    "click",
    "double_click",
    "triple_click",
    "move",
    "drag",
    "scroll",
    "type",
    "key",
    "hold_key",
    "wait",
    "done",
    "fail",
    "call_user",
];
