//! Record: every run gets a folder with `trace.jsonl` (one line per step, fsync'd as it is
//! written), the frames the model saw, and a self-contained `report.html`.
//!
//! A trace line is one `TraceLine`: the run's start, a step, or the run's end. Step lines carry
//! `request` and `decision`, which is what `deskhand policy test` replays.

mod report;
mod writer;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::input::Action;
use crate::model::Timings;
use crate::policy::{Answer, Decision, Request};
use crate::screen::FrameMap;

pub use report::{render_report, write_report};
pub use writer::{TRACE_FILE, TraceWriter, read_jsonl, read_trace, run_folders, runs_dir};

/// One line of `trace.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum TraceLine {
    Start(RunStart),
    Step(Box<StepRecord>),
    End(RunEnd),
}

/// The first line: what was asked, with what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunStart {
    /// The run's folder name.
    pub run: String,
    pub task: String,
    /// RFC 3339.
    pub started: String,
    pub deskhand_version: String,
    /// The model's name or path, or `script FILE`.
    pub engine: String,
    /// The policy files in force, or why none was.
    pub policy: String,
    pub monitor: String,
    pub dry_run: bool,
    pub max_steps: u32,
    pub images: usize,
    /// The floor entries the policy unlocks, each with its rule and `file:line`, and the
    /// unlocks the system layer's lock refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unlocks: Vec<String>,
    /// The MCP client that drove the run, as it named itself in `initialize`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
}

/// How long each stage of a step took, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepTimings {
    /// Waiting for the screen to stop changing (includes the captures made meanwhile).
    pub settle_ms: f64,
    /// Reading the active window and preparing the frame after settling.
    pub observe_ms: f64,
    /// Building the prompt from the history and frames.
    pub prompt_ms: f64,
    /// The whole model call; `model` holds its own breakdown.
    pub model_ms: f64,
    pub policy_ms: f64,
    /// Waiting for the person to answer an ask.
    pub ask_ms: f64,
    pub act_ms: f64,
    /// Writing the trace line and queueing the frame.
    pub record_ms: f64,
    pub total_ms: f64,
}

/// What the model said, with its own timings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    /// The raw reply, with detected secrets redacted.
    pub raw: String,
    pub thought: Option<String>,
    pub timings: Timings,
}

/// What happened to the step's action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// The action ran.
    Executed { events: usize, ms: f64 },
    /// `--dry-run`: the policy allowed it but nothing was executed.
    DryRun,
    /// The policy or the person refused it; the model is told the reason.
    Refused { by: Refuser, reason: String },
    /// `done`: the model says the task is complete.
    Done { summary: String },
    /// `fail`: the model gave up.
    Failed { reason: String },
    /// `call_user`: the model asked a question.
    Asked {
        question: String,
        answer: Option<String>,
    },
    /// Waiting is an action too, but it touches nothing.
    Waited { ms: u64 },
    /// The model, the screen or the input device failed.
    Error { stage: String, error: String },
    /// Ctrl-C, SIGTERM, the corner failsafe, or an "abort" answer.
    Aborted { reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refuser {
    Policy,
    User,
}

impl std::fmt::Display for Refuser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refuser::Policy => "the policy",
            Refuser::User => "the person",
        })
    }
}

/// `text` safe to print on a terminal: control characters (escape sequences, OSC 52 clipboard
/// writes, cursor moves, line breaks that fake a prompt) and bidirectional overrides are
/// written as escapes. Everything the model wrote or the screen showed goes through this
/// before it is printed.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || is_bidi_control(c) => {
                out.extend(c.escape_unicode());
            }
            c => out.push(c),
        }
    }
    out
}

fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// One sentence for people: the progress line, `deskhand trace show` and the report. Texts
/// from the model, the person or the screen are `printable`.
impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = printable;
        match self {
            Outcome::Executed { events, ms } => {
                write!(f, "Executed: {events} input events in {ms:.1} ms")
            }
            Outcome::DryRun => f.write_str("Dry run: the policy allowed it; nothing was executed"),
            Outcome::Refused { by, reason } => write!(f, "Refused by {by}: {}", p(reason)),
            Outcome::Done { summary } => write!(f, "Done: {}", p(summary)),
            Outcome::Failed { reason } => write!(f, "The model gave up: {}", p(reason)),
            Outcome::Asked {
                question,
                answer: Some(answer),
            } => write!(
                f,
                "Asked the person: {} — they answered: {}",
                p(question),
                p(answer)
            ),
            Outcome::Asked {
                question,
                answer: None,
            } => write!(f, "Asked the person: {} — no answer", p(question)),
            Outcome::Waited { ms } => write!(f, "Waited {ms} ms"),
            Outcome::Error { stage, error } => write!(f, "Error in {stage}: {}", p(error)),
            Outcome::Aborted { reason } => write!(f, "Aborted: {}", p(reason)),
        }
    }
}

impl Outcome {
    /// The outcome with every text the model wrote or the person typed passed through
    /// `redact`, before it is recorded, shown to the model again or printed.
    pub fn redacted(self, redact: impl Fn(&str) -> String) -> Outcome {
        match self {
            Outcome::Done { summary } => Outcome::Done {
                summary: redact(&summary),
            },
            Outcome::Failed { reason } => Outcome::Failed {
                reason: redact(&reason),
            },
            Outcome::Asked { question, answer } => Outcome::Asked {
                question: redact(&question),
                answer: answer.as_deref().map(&redact),
            },
            Outcome::Error { stage, error } => Outcome::Error {
                stage,
                error: redact(&error),
            },
            other => other,
        }
    }
}

/// One step: one line of `trace.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: u32,
    /// RFC 3339, when the step began.
    pub at: String,
    /// The frame file (relative to the run folder) and its mapping to the screen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame: Option<FrameRecord>,
    pub settled: bool,
    pub timings: StepTimings,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelRecord>,
    /// The action in screen pixels, with typed secrets redacted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Request>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<Answer>,
    /// Who gave `answer`: `policy suggest` learns only from what a person answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_by: Option<AnsweredBy>,
    pub outcome: Outcome,
}

/// Who answered an ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnsweredBy {
    /// Someone at the terminal or in the ask dialog.
    Person,
    /// `--yes`, which answers "once" to every ask the floor and the budgets do not own.
    YesFlag,
    /// Nobody could be asked (no terminal, no display), so the ask was refused.
    Nobody,
    /// An MCP client, through elicitation: its person, as far as deskhand can tell.
    Client,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameRecord {
    pub file: String,
    pub map: FrameMap,
}

/// The last line: how the run ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunEnd {
    pub ended: String,
    pub steps: u32,
    pub exit_code: i32,
    pub status: RunStatus,
    pub message: String,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// The model said the task is done.
    Done,
    /// The model gave up, or asked a question nobody could answer.
    Failed,
    /// A guard stopped it: the step or time limit, repeats, refusals, an unchanged screen.
    Guard,
    /// The policy was broken, so nothing ran.
    Locked,
    /// Ctrl-C, SIGTERM, the corner failsafe or an "abort" answer.
    Aborted,
    /// The screen, the model or the recorder failed.
    Error,
}

impl RunStatus {
    pub fn name(self) -> &'static str {
        match self {
            RunStatus::Done => "done",
            RunStatus::Failed => "failed",
            RunStatus::Guard => "guard",
            RunStatus::Locked => "locked",
            RunStatus::Aborted => "aborted",
            RunStatus::Error => "error",
        }
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The record stage's boundary: the loop hands over each line as it happens.
pub trait Recorder {
    fn start(&mut self, start: &RunStart) -> Result<(), TraceError>;
    /// Saves the frame the model saw at `step`; returns its file name in the run folder.
    fn frame(&mut self, step: u32, image: &image::RgbImage) -> Result<String, TraceError>;
    fn step(&mut self, record: &StepRecord) -> Result<(), TraceError>;
    fn end(&mut self, end: &RunEnd) -> Result<(), TraceError>;
    /// The run folder, if the recorder writes one.
    fn dir(&self) -> Option<&Path>;
}

#[derive(Debug, Error)]
pub enum TraceError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {problem}")]
    Parse {
        path: PathBuf,
        line: usize,
        problem: String,
    },
    #[error("no run named '{name}' in {dir}; `deskhand trace list` shows the runs")]
    NoSuchRun { name: String, dir: PathBuf },
    #[error(
        "no runs directory: set DESKHAND_RUNS_DIR, or HOME so that ~/.local/share/deskhand/runs can be used"
    )]
    NoRunsDir,
}

impl TraceError {
    pub(crate) fn io(action: &'static str, path: &Path, source: std::io::Error) -> TraceError {
        TraceError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The current time as RFC 3339 with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod printable_tests {
    use super::*;

    #[test]
    fn terminal_control_sequences_are_written_as_escapes() {
        let osc52 = "done\u{1b}]52;c;cm0gLXJmIH4=\u{7}\nThe policy asks before: nothing";
        let shown = printable(osc52);
        assert!(!shown.chars().any(|c| c.is_control()), "{shown}");
        assert_eq!(
            shown,
            "done\\u{1b}]52;c;cm0gLXJmIH4=\\u{7}\\nThe policy asks before: nothing"
        );
        assert_eq!(printable("a\u{202e}b\u{9b}c"), "a\\u{202e}b\\u{9b}c");
        assert_eq!(printable("héllo, 世界"), "héllo, 世界");
    }

    #[test]
    fn outcomes_redact_and_print_what_the_model_wrote() {
        let done = Outcome::Done {
            summary: "paid with 4111 1111 1111 1111\u{1b}[2J".into(),
        }
        .redacted(|t| t.replace("4111 1111 1111 1111", "[redacted:card_number]"));
        assert_eq!(
            done.to_string(),
            "Done: paid with [redacted:card_number]\\u{1b}[2J"
        );
        let asked = Outcome::Asked {
            question: "card?".into(),
            answer: Some("4111 1111 1111 1111".into()),
        }
        .redacted(|t| t.replace("4111 1111 1111 1111", "[redacted:card_number]"));
        assert!(!asked.to_string().contains("4111"));
    }
}
