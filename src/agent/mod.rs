//! The loop: see → think → check → act → record, step after step, until the model says done
//! or fail, the person aborts, or a guard stops a run that is going nowhere.
//!
//! Every stage is reached through its trait (`Screen`, `Backend`, `Policy`, `Hands`,
//! `Recorder`, `User`), so the loop is the same for a real model, a script or a test double.

mod script;
mod user;

use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use script::ScriptBackend;
pub use user::{TerminalUser, Unattended, User, UserAnswer};

use crate::input::{ABORT_EXIT_CODE, AbortReason, AbortSignal, Action, Hands, InputError};
use crate::model::{Backend, Prompt, ms};
use crate::policy::{Answer, Decision, Layer, Policy, Request, Verdict, WindowRef};
use crate::screen::{
    ActiveWindow, Frame, FrameTarget, MonitorInfo, Screen, SettleOptions, observe,
};
use crate::trace::{
    FrameRecord, ModelRecord, Outcome, Recorder, Refuser, RunEnd, RunStart, StepRecord,
    StepTimings, now_rfc3339, printable,
};

/// Exit status when the policy is broken and deskhand is locked.
pub const LOCKED_EXIT_CODE: i32 = 3;

/// Limits that end a run which is going nowhere, each with its own message.
#[derive(Debug, Clone)]
pub struct Guards {
    pub max_steps: u32,
    /// The same action proposed this many times in a row (waits excepted).
    pub repeats: u32,
    /// This many executed actions in a row left the screen exactly as it was.
    pub unchanged: u32,
    /// This many refused actions in a row.
    pub refusals: u32,
    /// This many model failures in a row.
    pub model_errors: u32,
    pub timeout: Duration,
}

impl Default for Guards {
    fn default() -> Self {
        Guards {
            max_steps: 50,
            repeats: 4,
            unchanged: 4,
            refusals: 3,
            model_errors: 3,
            timeout: Duration::from_secs(30 * 60),
        }
    }
}

pub struct RunOptions {
    pub task: String,
    /// The family's system prompt.
    pub system_prompt: String,
    /// Frames in each prompt: the current one plus up to `images - 1` earlier ones.
    pub images: usize,
    pub dry_run: bool,
    /// Answer asks with "once", except the floor's.
    pub yes: bool,
    pub frame_target: FrameTarget,
    pub settle: SettleOptions,
    pub guards: Guards,
    /// For the trace's header.
    pub engine: String,
    pub policy: String,
}

/// The stages one run uses.
pub struct Stages<'a> {
    pub screen: &'a mut dyn Screen,
    pub monitor: MonitorInfo,
    pub monitors: Vec<MonitorInfo>,
    pub backend: &'a mut dyn Backend,
    pub policy: &'a mut dyn Policy,
    pub hands: &'a mut dyn Hands,
    pub recorder: &'a mut dyn Recorder,
    pub user: &'a mut dyn User,
    pub abort: AbortSignal,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunResult {
    pub exit_code: i32,
    /// `done`, `failed`, `guard`, `aborted`, `error`.
    pub status: String,
    pub message: String,
    pub steps: u32,
    pub run_dir: Option<PathBuf>,
}

/// Where the loop stands between steps.
struct State {
    history: Vec<String>,
    frames: Vec<Frame>,
    last_proposed: Option<Action>,
    repeated: u32,
    unchanged: u32,
    refusals: u32,
    model_errors: u32,
    /// Whether the last step executed an action: then this step's frame, compared with the
    /// previous one, shows whether it changed anything.
    acted: bool,
}

enum Next {
    Continue,
    End {
        code: i32,
        status: &'static str,
        message: String,
    },
}

fn end(code: i32, status: &'static str, message: impl Into<String>) -> Next {
    Next::End {
        code,
        status,
        message: message.into(),
    }
}

/// Runs the task until it ends. Recording failures end the run: a run that cannot be
/// recorded must not go on acting.
pub fn run(options: &RunOptions, stages: Stages<'_>) -> RunResult {
    let Stages {
        screen,
        monitor,
        monitors,
        backend,
        policy,
        hands,
        recorder,
        user,
        abort,
    } = stages;
    let started = Instant::now();
    let start = RunStart {
        run: recorder
            .dir()
            .and_then(|d| d.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        task: options.task.clone(),
        started: now_rfc3339(),
        deskhand_version: env!("CARGO_PKG_VERSION").to_owned(),
        engine: options.engine.clone(),
        policy: options.policy.clone(),
        monitor: format!(
            "{} '{}' {}x{}+{}+{}",
            monitor.index, monitor.name, monitor.width, monitor.height, monitor.x, monitor.y
        ),
        dry_run: options.dry_run,
        max_steps: options.guards.max_steps,
        images: options.images,
    };
    let mut result = RunResult {
        exit_code: 1,
        status: "error".into(),
        message: String::new(),
        steps: 0,
        run_dir: recorder.dir().map(|d| d.to_path_buf()),
    };
    if let Err(e) = recorder.start(&start) {
        result.message = format!("cannot record the run: {e}");
        return result;
    }
    let mut state = State {
        history: Vec::new(),
        frames: Vec::new(),
        last_proposed: None,
        repeated: 0,
        unchanged: 0,
        refusals: 0,
        model_errors: 0,
        acted: false,
    };
    let mut context = Context {
        options,
        screen,
        monitor: &monitor,
        monitors: &monitors,
        backend,
        policy,
        hands,
        recorder,
        user,
        abort: &abort,
    };
    let mut step = 0u32;
    let (code, status, message) = loop {
        if step >= options.guards.max_steps {
            break (
                1,
                "guard",
                format!(
                    "stopped after {step} steps, the step limit (--max-steps); the task is not done"
                ),
            );
        }
        if started.elapsed() >= options.guards.timeout {
            break (
                1,
                "guard",
                format!(
                    "stopped after {:.0} s, the time limit; the task is not done",
                    started.elapsed().as_secs_f64()
                ),
            );
        }
        step += 1;
        match context.step(step, &mut state) {
            Next::Continue => {}
            Next::End {
                code,
                status,
                message,
            } => break (code, status, message),
        }
    };
    result.exit_code = code;
    result.status = status.to_owned();
    result.message = message;
    result.steps = step;
    let end = RunEnd {
        ended: now_rfc3339(),
        steps: step,
        exit_code: code,
        status: status.to_owned(),
        message: result.message.clone(),
    };
    if let Err(e) = context.recorder.end(&end) {
        context
            .user
            .note(&format!("the run's end was not recorded: {e}"));
    }
    result
}

struct Context<'a, 'b> {
    options: &'a RunOptions,
    screen: &'b mut dyn Screen,
    monitor: &'a MonitorInfo,
    monitors: &'a [MonitorInfo],
    backend: &'b mut dyn Backend,
    policy: &'b mut dyn Policy,
    hands: &'b mut dyn Hands,
    recorder: &'b mut dyn Recorder,
    user: &'b mut dyn User,
    abort: &'a AbortSignal,
}

impl Context<'_, '_> {
    fn aborted(&self) -> Option<AbortReason> {
        self.abort.reason()
    }

    fn step(&mut self, step: u32, state: &mut State) -> Next {
        let step_started = Instant::now();
        let at = now_rfc3339();
        let mut timings = StepTimings::default();
        let record = |outcome: Outcome| StepRecord {
            step,
            at: at.clone(),
            frame: None,
            settled: false,
            timings: StepTimings::default(),
            model: None,
            action: None,
            request: None,
            decision: None,
            answer: None,
            outcome,
        };

        // See.
        self.user.phase(step, "settle + capture");
        let observed = match observe(
            self.screen,
            self.monitor,
            self.options.frame_target,
            self.options.settle,
        ) {
            Ok(o) => o,
            Err(e) => {
                let message = format!("cannot see the screen: {e}");
                let _ = self.recorder.step(&record(Outcome::Error {
                    stage: "screen".into(),
                    error: e.to_string(),
                }));
                return end(1, "error", message);
            }
        };
        let observe_total = step_started.elapsed();
        timings.settle_ms = ms(observed.settle_time);
        timings.observe_ms = ms(observe_total.saturating_sub(observed.settle_time));
        let settled = observed.settle_time < self.options.settle.timeout;
        if std::mem::take(&mut state.acted) {
            let before = state.frames.last().map(|f| &f.image);
            if before == Some(&observed.frame.image) {
                state.unchanged += 1;
            } else {
                state.unchanged = 0;
            }
        }
        if state.unchanged >= self.options.guards.unchanged {
            return end(
                1,
                "guard",
                format!(
                    "the screen did not change after {} actions in a row; the model seems stuck",
                    state.unchanged
                ),
            );
        }
        if let Some(reason) = self.aborted() {
            return self.abort_now(
                reason,
                record(Outcome::Aborted {
                    reason: reason.to_string(),
                }),
            );
        }
        let record_started = Instant::now();
        let frame_file = match self.recorder.frame(step, &observed.frame.image) {
            Ok(name) => name,
            Err(e) => return end(1, "error", format!("cannot record the frame: {e}")),
        };
        let mut record_ms = ms(record_started.elapsed());

        // Think.
        self.user.phase(step, "model");
        let prompt_started = Instant::now();
        let frame = Some(FrameRecord {
            file: frame_file,
            map: observed.frame.map.clone(),
        });
        state.frames.push(observed.frame);
        let keep = self.options.images.max(1);
        if state.frames.len() > keep {
            let excess = state.frames.len() - keep;
            state.frames.drain(..excess);
        }
        let (current, earlier) = match state.frames.split_last() {
            Some(split) => split,
            None => return end(1, "error", "no frame to show the model"),
        };
        let prompt = Prompt {
            system: self.options.system_prompt.clone(),
            task: self.options.task.clone(),
            history: state.history.clone(),
            earlier_frames: earlier.iter().collect(),
            frame: current,
        };
        timings.prompt_ms = ms(prompt_started.elapsed());
        let model_started = Instant::now();
        let reply = self.backend.reply(&prompt);
        timings.model_ms = ms(model_started.elapsed());
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) => {
                state.model_errors += 1;
                // The error may quote the raw reply, which may hold what a detector flags.
                let e = self.policy.redact(&e.to_string());
                state
                    .history
                    .push(format!("Step {step}: your reply could not be used: {e}"));
                let mut rec = record(Outcome::Error {
                    stage: "model".into(),
                    error: e.clone(),
                });
                rec.frame = frame;
                rec.settled = settled;
                timings.total_ms = ms(step_started.elapsed());
                rec.timings = timings;
                if let Err(e) = self.recorder.step(&rec) {
                    return end(1, "error", format!("cannot record step {step}: {e}"));
                }
                self.user
                    .step_done(&format!("step {step}: the model failed: {}", printable(&e)));
                if state.model_errors >= self.options.guards.model_errors {
                    return end(
                        1,
                        "guard",
                        format!(
                            "the model failed {} times in a row: {}",
                            state.model_errors,
                            printable(&e)
                        ),
                    );
                }
                return Next::Continue;
            }
        };
        state.model_errors = 0;
        if let Some(reason) = self.aborted() {
            return self.abort_now(
                reason,
                record(Outcome::Aborted {
                    reason: reason.to_string(),
                }),
            );
        }
        let action = reply.action.clone();

        // Check.
        self.user.phase(step, "policy");
        let policy_started = Instant::now();
        let seen = self.windows_reached(&action, observed.active_window.clone());
        let mut request = seen.request(&action, self.monitors);
        let mut decision = self.policy.check(&request);
        timings.policy_ms = ms(policy_started.elapsed());

        // Act.
        let mut answer = None;
        let ask_started = Instant::now();
        let verdict = match decision.decision {
            Verdict::Ask => {
                self.user.phase(step, "waiting for you");
                match self.resolve_ask(&request, &decision) {
                    Ok((verdict, given)) => {
                        answer = Some(given);
                        verdict
                    }
                    Err(reason) => {
                        let mut rec = record(Outcome::Aborted {
                            reason: reason.to_string(),
                        });
                        rec.decision = Some(decision);
                        return self.abort_now(reason, rec);
                    }
                }
            }
            other => other,
        };

        // Between the screenshot and now, decoding and a waiting ask may have taken seconds,
        // and the focus or the windows under the pointer may have changed: look again, and if
        // they did, decide again for the windows the input would reach now.
        let mut verdict = verdict;
        if verdict == Verdict::Allow && touches_desktop(&action) && !self.options.dry_run {
            let now = self.windows_reached(&action, self.screen.active_window().ok().flatten());
            if now.differs_from(&seen) {
                request = now.request(&action, self.monitors);
                decision = self.policy.recheck(&request);
                self.user.note(&format!(
                    "step {step}: the windows changed before acting ({}); decided again: {}",
                    now.describe(),
                    decision.decision
                ));
                verdict = match decision.decision {
                    Verdict::Ask => match self.resolve_ask(&request, &decision) {
                        Ok((verdict, given)) => {
                            answer = Some(given);
                            verdict
                        }
                        Err(reason) => {
                            let mut rec = record(Outcome::Aborted {
                                reason: reason.to_string(),
                            });
                            rec.decision = Some(decision);
                            return self.abort_now(reason, rec);
                        }
                    },
                    other => other,
                };
            }
        }
        request.detector_hits = decision
            .detector_hits
            .iter()
            .map(|h| h.name.clone())
            .collect();
        request.inferred_intents = decision
            .intents
            .iter()
            .copied()
            .filter(|i| *i != request.declared_intent)
            .collect();
        timings.ask_ms = ms(ask_started.elapsed());

        let proposed_again =
            state.last_proposed.as_ref() == Some(&action) && !matches!(action, Action::Wait { .. });
        state.repeated = if proposed_again {
            state.repeated + 1
        } else {
            1
        };
        state.last_proposed = Some(action.clone());

        self.user.phase(step, "act");
        let act_started = Instant::now();
        let outcome = self
            .act(&action, verdict, &decision, answer, state)
            .redacted(|text| self.policy.redact(text));
        timings.act_ms = ms(act_started.elapsed());
        if matches!(outcome, Outcome::Executed { .. }) {
            self.policy.executed(&request, &decision);
            state.acted = true;
        }

        // Record.
        let record_started = Instant::now();
        let redacted_action = self.redact_action(&action);
        request.action = redacted_action.clone();
        request.pasted = request.pasted.as_deref().map(|t| self.policy.redact(t));
        let summary = summary_line(
            step,
            &redacted_action,
            &decision,
            verdict,
            &outcome,
            &timings,
        );
        state.history.push(history_line(
            step,
            reply.thought.as_deref().map(|t| self.policy.redact(t)),
            &redacted_action,
            &decision,
            &outcome,
        ));
        let ended = self.ending(&outcome, state);
        let mut rec = record(outcome);
        rec.frame = frame;
        rec.settled = settled;
        rec.model = Some(ModelRecord {
            raw: self.policy.redact(&reply.raw),
            thought: reply.thought.as_deref().map(|t| self.policy.redact(t)),
            timings: reply.timings.clone(),
        });
        rec.action = Some(redacted_action);
        rec.request = Some(request);
        rec.decision = Some(decision);
        rec.answer = answer;
        record_ms += ms(record_started.elapsed());
        timings.record_ms = record_ms;
        timings.total_ms = ms(step_started.elapsed());
        rec.timings = timings;
        if let Err(e) = self.recorder.step(&rec) {
            return end(1, "error", format!("cannot record step {step}: {e}"));
        }
        self.user.step_done(&summary);
        ended
    }

    /// The windows `action` would reach: the active one (keys and text) and the top-level
    /// windows under its points (clicks, scrolls, drags). A window that cannot be read counts
    /// as an unknown window, which no allow rule for a named app covers.
    fn windows_reached(&self, action: &Action, active: Option<ActiveWindow>) -> WindowsReached {
        let points = action.points();
        let under_pointer = match self.screen.windows_at(&points) {
            Ok(windows) => windows.into_iter().map(Some).collect(),
            Err(e) => {
                tracing::warn!("cannot read the windows under the pointer: {e}");
                points.iter().map(|_| None).take(1).collect()
            }
        };
        WindowsReached {
            active,
            under_pointer,
            pasted: self.pasted_text(action),
        }
    }

    /// What `action` would paste, if it is a paste: every selection it may insert, read now.
    /// `None` when one of them cannot be read.
    fn pasted_text(&self, action: &Action) -> Option<String> {
        let mut texts = Vec::new();
        for &selection in action.pastes() {
            match self.screen.selection_text(selection) {
                Ok(Some(text)) => texts.push(text),
                Ok(None) => return None,
                Err(e) => {
                    tracing::warn!("cannot read the {selection:?} selection: {e}");
                    return None;
                }
            }
        }
        Some(texts.join("\n"))
    }

    /// Settles an ask: `--yes`, or the person. The floor's and the budgets' asks always go to
    /// the person: `--yes` must not turn a budget into a silent limit-free run.
    fn resolve_ask(
        &mut self,
        request: &Request,
        decision: &Decision,
    ) -> Result<(Verdict, Answer), AbortReason> {
        let for_the_person = decision
            .asking()
            .any(|m| matches!(m.layer, Layer::Floor | Layer::Budget));
        let given = if self.options.yes && !for_the_person {
            Answer::Once
        } else {
            let mut shown = request.clone();
            shown.action = self.redact_action(&request.action);
            shown.pasted = request.pasted.as_deref().map(|t| self.policy.redact(t));
            match self.user.ask(&shown, decision) {
                UserAnswer::Answer(answer) => answer,
                UserAnswer::Abort => {
                    self.abort.trigger(AbortReason::User);
                    return Err(AbortReason::User);
                }
            }
        };
        match self.policy.answer(request, decision, given) {
            Ok(verdict) => Ok((verdict, given)),
            Err(e) => {
                // The person allowed it; only remembering failed (a floor ask, or the grant
                // file could not be written). Allow this once and say so.
                self.user.note(&format!("{e}; allowing this once"));
                Ok((Verdict::Allow, Answer::Once))
            }
        }
    }

    fn act(
        &mut self,
        action: &Action,
        verdict: Verdict,
        decision: &Decision,
        answer: Option<Answer>,
        state: &mut State,
    ) -> Outcome {
        if verdict != Verdict::Allow {
            state.refusals += 1;
            let by = if answer == Some(Answer::Deny) {
                Refuser::User
            } else {
                Refuser::Policy
            };
            let reason = match by {
                Refuser::User => "the user said no".to_owned(),
                Refuser::Policy => decision.reason.clone(),
            };
            return Outcome::Refused { by, reason };
        }
        state.refusals = 0;
        match action {
            Action::Done { summary } => Outcome::Done {
                summary: summary.clone(),
            },
            Action::Fail { reason } => Outcome::Failed {
                reason: reason.clone(),
            },
            // Redacted on the terminal too: the screen deskhand captures may show it.
            Action::CallUser { question } => Outcome::Asked {
                question: question.clone(),
                answer: self.user.reply(&self.policy.redact(question)),
            },
            Action::Wait { ms } if !self.options.dry_run => {
                let until = Instant::now() + Duration::from_millis(*ms);
                while Instant::now() < until {
                    if self.aborted().is_some() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10).min(until - Instant::now()));
                }
                Outcome::Waited { ms: *ms }
            }
            _ if self.options.dry_run => Outcome::DryRun,
            _ => match self.hands.perform(action) {
                Ok(performed) => Outcome::Executed {
                    events: performed.events,
                    ms: performed.elapsed_ms,
                },
                Err(InputError::Aborted(reason)) => Outcome::Aborted {
                    reason: reason.to_string(),
                },
                Err(e) => Outcome::Error {
                    stage: "act".into(),
                    error: e.to_string(),
                },
            },
        }
    }

    /// Whether the step's outcome ends the run.
    fn ending(&mut self, outcome: &Outcome, state: &State) -> Next {
        let guards = &self.options.guards;
        match outcome {
            Outcome::Done { summary } => end(0, "done", format!("done: {}", printable(summary))),
            Outcome::Failed { reason } => end(
                1,
                "failed",
                format!("the model gave up: {}", printable(reason)),
            ),
            Outcome::Asked {
                question,
                answer: None,
            } => end(
                1,
                "failed",
                format!(
                    "the model asked \"{}\" and nobody could answer",
                    printable(question)
                ),
            ),
            Outcome::Aborted { reason } => {
                self.hands.release_all();
                end(ABORT_EXIT_CODE, "aborted", format!("aborted: {reason}"))
            }
            _ if state.refusals >= guards.refusals => end(
                1,
                "guard",
                format!(
                    "the model proposed {} refused actions in a row; stopping rather than probing the policy",
                    state.refusals
                ),
            ),
            _ if state.repeated >= guards.repeats => end(
                1,
                "guard",
                format!(
                    "the model proposed the same action {} times in a row",
                    state.repeated
                ),
            ),
            _ => Next::Continue,
        }
    }

    fn abort_now(&mut self, reason: AbortReason, mut record: StepRecord) -> Next {
        self.hands.release_all();
        record.outcome = Outcome::Aborted {
            reason: reason.to_string(),
        };
        let _ = self.recorder.step(&record);
        end(ABORT_EXIT_CODE, "aborted", format!("aborted: {reason}"))
    }

    /// The action with everything the model wrote passed through the detectors.
    fn redact_action(&self, action: &Action) -> Action {
        let redact = |text: &str| self.policy.redact(text);
        match action {
            Action::Type { text } => Action::Type { text: redact(text) },
            Action::Done { summary } => Action::Done {
                summary: redact(summary),
            },
            Action::Fail { reason } => Action::Fail {
                reason: redact(reason),
            },
            Action::CallUser { question } => Action::CallUser {
                question: redact(question),
            },
            other => other.clone(),
        }
    }
}

/// Whether an action would touch the desktop (and so could reach another window than the one
/// it was decided for).
fn touches_desktop(action: &Action) -> bool {
    !matches!(action, Action::Wait { .. }) && !action.is_terminal()
}

/// The windows one action reaches, and what it would paste, as read at one moment.
struct WindowsReached {
    active: Option<ActiveWindow>,
    /// What a paste would insert (`None` when it could not be read, or for other actions).
    pasted: Option<String>,
    /// `None`: a window that could not be read.
    under_pointer: Vec<Option<ActiveWindow>>,
}

impl WindowsReached {
    fn request(&self, action: &Action, monitors: &[MonitorInfo]) -> Request {
        let to_ref = |w: &Option<ActiveWindow>| WindowRef {
            app: w.as_ref().map(|w| w.app_name.clone()),
            title: w.as_ref().map(|w| w.title.clone()),
        };
        let active = to_ref(&self.active);
        Request::new(action.clone())
            .with_window(active.app, active.title)
            .with_windows_under_pointer(self.under_pointer.iter().map(to_ref).collect())
            .with_pasted(self.pasted.clone())
            .with_monitors(monitors)
    }

    fn ids(&self) -> (Option<u32>, Vec<Option<u32>>) {
        let id = |w: &Option<ActiveWindow>| w.as_ref().map(|w| w.window_id);
        (
            id(&self.active),
            self.under_pointer.iter().map(id).collect(),
        )
    }

    fn differs_from(&self, earlier: &WindowsReached) -> bool {
        self.ids() != earlier.ids() || self.pasted != earlier.pasted
    }

    fn describe(&self) -> String {
        let name = |w: &Option<ActiveWindow>| {
            w.as_ref().map_or_else(
                || "unknown".to_owned(),
                |w| format!("{} \"{}\"", printable(&w.app_name), printable(&w.title)),
            )
        };
        let mut text = format!("focus: {}", name(&self.active));
        if self.pasted.is_some() {
            text.push_str("; the text to paste");
        }
        if !self.under_pointer.is_empty() {
            let under: Vec<String> = self.under_pointer.iter().map(name).collect();
            text.push_str(&format!("; under the pointer: {}", under.join(", ")));
        }
        text
    }
}

/// One step as the model reads it in later prompts.
fn history_line(
    step: u32,
    thought: Option<String>,
    action: &Action,
    decision: &Decision,
    outcome: &Outcome,
) -> String {
    let mut line = format!("Step {step}:");
    if let Some(thought) = thought.filter(|t| !t.is_empty()) {
        line.push_str(&format!(" thought: {thought}."));
    }
    line.push_str(&format!(" action: {}.", action.to_json()));
    let result = match outcome {
        Outcome::Refused {
            by: Refuser::Policy,
            ..
        } => decision.refusal(),
        Outcome::Refused {
            by: Refuser::User, ..
        } => "the user refused it".to_owned(),
        Outcome::Executed { .. } => "executed".to_owned(),
        Outcome::DryRun => "allowed, not executed (dry run)".to_owned(),
        Outcome::Waited { ms } => format!("waited {ms} ms"),
        Outcome::Asked {
            answer: Some(answer),
            ..
        } => format!("the user answered: {answer}"),
        Outcome::Error { error, .. } => format!("failed: {error}"),
        other => format!("{other:?}"),
    };
    line.push_str(&format!(" result: {result}."));
    line
}

fn summary_line(
    step: u32,
    action: &Action,
    decision: &Decision,
    verdict: Verdict,
    outcome: &Outcome,
    t: &StepTimings,
) -> String {
    let by = decision
        .rule
        .clone()
        .unwrap_or_else(|| format!("{:?}", decision.layer).to_lowercase());
    format!(
        "step {step}: {action} -> {verdict} ({by}), {outcome} | settle {:.0} ms, capture {:.0} ms, model {:.0} ms, policy {:.2} ms, act {:.0} ms",
        t.settle_ms, t.observe_ms, t.model_ms, t.policy_ms, t.act_ms
    )
}
