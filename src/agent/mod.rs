//! The loop: see → think → check → act → record, step after step, until the model says done
//! or fail, the person aborts, or a guard stops a run that is going nowhere.
//!
//! Every stage is reached through its trait (`Screen`, `Backend`, `Policy`, `Hands`,
//! `Recorder`, `User`), so the loop is the same for a real model, a script or a test double.

pub mod dialog;
mod script;
mod user;

use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use script::ScriptBackend;
pub use user::{TerminalUser, Unattended, User, UserAnswer, ask_choices, ask_details};

use crate::input::{ABORT_EXIT_CODE, AbortReason, AbortSignal, Action, Hands, InputError};
use crate::model::{Backend, ModelError, PastTurn, Prompt, Reply, UnusableReply, ms};
use crate::policy::{Answer, Decision, Intent, Policy, Request, Verdict, WindowRef};
use crate::screen::{
    ActiveWindow, Frame, FrameTarget, MonitorInfo, Observation, Screen, SettleOptions,
    changed_fraction, observe,
};
use crate::trace::{
    AnsweredBy, FrameRecord, ModelRecord, Outcome, Recorder, Refuser, RunEnd, RunStart, RunStatus,
    StepRecord, StepTimings, now_rfc3339, printable,
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

#[derive(Clone)]
pub struct RunOptions {
    pub task: String,
    /// The family's system prompt.
    pub system_prompt: String,
    /// The screenshots each prompt shows.
    pub window: ImageWindow,
    pub dry_run: bool,
    /// Answer asks with "once", except the floor's.
    pub yes: bool,
    pub frame_target: FrameTarget,
    pub settle: SettleOptions,
    pub guards: Guards,
    /// For the trace's header.
    pub engine: String,
    pub policy: String,
    /// The policy's unlocks of floor entries (and the refused ones), for the trace's header.
    pub unlocks: Vec<String>,
    /// The MCP client driving the run, for the trace's header.
    pub client: Option<String>,
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
    pub status: RunStatus,
    pub message: String,
    pub steps: u32,
    pub run_dir: Option<PathBuf>,
}

/// Where the loop stands between steps.
struct State {
    /// The conversation so far: each earlier step's note, its screenshot while it is in the
    /// window, and the model's reply.
    turns: Vec<Turn>,
    /// What the next user turn tells the model before its screenshot.
    note: String,
    /// The frame this step shows the model; it joins `turns` with the reply. Until then it is
    /// the last frame seen, which the unchanged-screen guard compares the next one with.
    current: Option<Frame>,
    last_proposed: Option<Action>,
    repeated: u32,
    unchanged: u32,
    refusals: u32,
    model_errors: u32,
    /// Whether the last step executed an action: then this step's frame, compared with the
    /// previous one, shows whether it changed anything.
    acted: bool,
}

/// One earlier step as the conversation keeps it.
struct Turn {
    note: String,
    frame: Option<Frame>,
    reply: String,
}

/// How many screenshots the conversation shows. Dropping one changes everything after it,
/// which must then be evaluated again, so they leave in batches: the window grows from
/// `images` to `images + evict_every` screenshots, then the oldest `evict_every` leave at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageWindow {
    /// Screenshots always shown, the current one included (at least 1).
    pub images: usize,
    /// How many more the window may grow by before they leave together (0: every step).
    pub evict_every: usize,
}

impl ImageWindow {
    /// How many of `turns`' screenshots stay, counting the one the next step brings.
    fn keep(self, shown: usize) -> usize {
        let images = self.images.max(1);
        if shown + 1 > images + self.evict_every {
            images - 1
        } else {
            shown
        }
    }
}

/// The most turns the conversation keeps. A model's context fills long before (the engine then
/// drops the oldest turns' text itself); this only bounds the loop's own memory.
const MAX_TURNS: usize = 256;

impl State {
    fn new() -> State {
        State {
            turns: Vec::new(),
            note: String::new(),
            current: None,
            last_proposed: None,
            repeated: 0,
            unchanged: 0,
            refusals: 0,
            model_errors: 0,
            acted: false,
        }
    }

    /// The prompt for this step: the conversation and the current frame.
    fn prompt<'a>(&'a self, options: &RunOptions) -> Option<Prompt<'a>> {
        Some(Prompt {
            system: options.system_prompt.clone(),
            task: options.task.clone(),
            past: self
                .turns
                .iter()
                .map(|t| PastTurn {
                    note: t.note.clone(),
                    frame: t.frame.as_ref(),
                    reply: t.reply.clone(),
                })
                .collect(),
            note: self.note.clone(),
            frame: self.current.as_ref()?,
        })
    }

    /// The model replied: the step joins the conversation with its screenshot, `note` is what
    /// the next turn will say about the reply, and old screenshots leave as `window` says.
    fn close_turn(&mut self, reply: &str, note: String, window: ImageWindow) {
        self.turns.push(Turn {
            note: std::mem::replace(&mut self.note, note),
            frame: self.current.clone(),
            reply: reply.to_owned(),
        });
        // A bound on memory for runs of any length. The oldest half leaves at once, since any
        // change at the front makes the engine evaluate the whole conversation again; the
        // trace keeps every step.
        if self.turns.len() > MAX_TURNS {
            self.turns.drain(..self.turns.len() - MAX_TURNS / 2);
        }
        let shown = self.turns.iter().filter(|t| t.frame.is_some()).count();
        let mut leaving = shown - window.keep(shown);
        for turn in &mut self.turns {
            if leaving == 0 {
                break;
            }
            if turn.frame.take().is_some() {
                leaving -= 1;
            }
        }
    }

    /// The step ended without a reply to keep: its screenshot does not join the conversation,
    /// and the next turn says why along with what it had to say already.
    fn add_note(&mut self, note: &str) {
        if !self.note.is_empty() {
            self.note.push('\n');
        }
        self.note.push_str(note);
    }
}

enum Next {
    Continue,
    End {
        code: i32,
        status: RunStatus,
        message: String,
    },
}

fn end(code: i32, status: RunStatus, message: impl Into<String>) -> Next {
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
    // The time limit holds inside a long action too, not only between steps.
    hands.set_deadline(Some(started + options.guards.timeout));
    let start = RunStart {
        run: recorder
            .dir()
            .and_then(|d| d.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        // The person typed the task; it passes the detectors before it is recorded.
        task: policy.redact(&options.task),
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
        images: options.window.images,
        unlocks: options.unlocks.clone(),
        client: options.client.clone(),
    };
    let mut result = RunResult {
        exit_code: 1,
        status: RunStatus::Error,
        message: String::new(),
        steps: 0,
        run_dir: recorder.dir().map(|d| d.to_path_buf()),
    };
    if let Err(e) = recorder.start(&start) {
        result.message = format!("cannot record the run: {e}");
        return result;
    }
    let mut state = State::new();
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
        deadline: started + options.guards.timeout,
    };
    let mut step = 0u32;
    let (code, status, message) = loop {
        if step >= options.guards.max_steps {
            break (
                1,
                RunStatus::Guard,
                format!(
                    "stopped after {step} steps, the step limit (--max-steps); the task is not done"
                ),
            );
        }
        if started.elapsed() >= options.guards.timeout {
            break (
                1,
                RunStatus::Guard,
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
    result.status = status;
    result.message = message;
    result.steps = step;
    let end = RunEnd {
        ended: now_rfc3339(),
        steps: step,
        exit_code: code,
        status,
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
    /// The run's time limit, which a long wait must not outlast either.
    deadline: Instant,
}

impl Context<'_, '_> {
    fn aborted(&self) -> Option<AbortReason> {
        self.abort.reason()
    }

    /// One step: see → think → check → act → record. Each stage may end the step early; the
    /// draft carries what the step gathered so far, so every way out records it.
    fn step(&mut self, step: u32, state: &mut State) -> Next {
        let mut draft = Draft::new(step);
        let observed = match self.see(&mut draft, state) {
            Ok(observed) => observed,
            Err(next) => return next,
        };
        let active = observed.active_window.clone();
        let reply = match self.think(&mut draft, state, observed) {
            Ok(reply) => reply,
            Err(next) => return next,
        };
        let seen = state.current.as_ref();
        let checked = match self.check(&mut draft, &reply, active, seen) {
            Ok(checked) => checked,
            Err(next) => return next,
        };
        self.act_and_record(draft, state, reply, checked)
    }

    /// See: settle and capture the screen, stop a model whose actions change nothing, and
    /// save the frame.
    fn see(&mut self, draft: &mut Draft, state: &mut State) -> Result<Observation, Next> {
        self.user.phase(draft.step, "settle + capture");
        let observed = match observe(
            self.screen,
            self.monitor,
            self.options.frame_target,
            self.options.settle,
        ) {
            Ok(o) => o,
            Err(e) => {
                let message = format!("cannot see the screen: {e}");
                let _ = self.recorder.step(&draft.record(Outcome::Error {
                    stage: "screen".into(),
                    error: e.to_string(),
                }));
                return Err(end(1, RunStatus::Error, message));
            }
        };
        let observe_total = draft.started.elapsed();
        draft.timings.settle_ms = ms(observed.settle_time);
        draft.timings.observe_ms = ms(observe_total.saturating_sub(observed.settle_time));
        draft.settled = observed.settled;
        if std::mem::take(&mut state.acted) {
            // The same tolerance as settling: a blinking caret is not a change.
            let same = state.current.as_ref().is_some_and(|before| {
                changed_fraction(before, &observed.frame)
                    <= self.options.settle.max_changed_fraction
            });
            if same {
                state.unchanged += 1;
            } else {
                state.unchanged = 0;
            }
        }
        if state.unchanged >= self.options.guards.unchanged {
            return Err(end(
                1,
                RunStatus::Guard,
                format!(
                    "the screen did not change after {} actions in a row; the model seems stuck",
                    state.unchanged
                ),
            ));
        }
        if let Some(reason) = self.aborted() {
            return Err(self.abort_now(
                reason,
                draft.record(Outcome::Aborted {
                    reason: reason.to_string(),
                }),
            ));
        }
        let record_started = Instant::now();
        let file = match self.recorder.frame(draft.step, &observed.frame.image) {
            Ok(name) => name,
            Err(e) => {
                return Err(end(
                    1,
                    RunStatus::Error,
                    format!("cannot record the frame: {e}"),
                ));
            }
        };
        draft.record_ms += ms(record_started.elapsed());
        draft.frame = Some(FrameRecord {
            file,
            map: observed.frame.map.clone(),
        });
        Ok(observed)
    }

    /// Think: the prompt (the task, the history, the latest frames) and the model's reply. A
    /// reply that cannot be used is recorded and told to the model in the next step.
    fn think(
        &mut self,
        draft: &mut Draft,
        state: &mut State,
        observed: Observation,
    ) -> Result<Reply, Next> {
        let step = draft.step;
        self.user.phase(step, "model");
        let prompt_started = Instant::now();
        state.current = Some(observed.frame);
        let Some(prompt) = state.prompt(self.options) else {
            return Err(end(1, RunStatus::Error, "no frame to show the model"));
        };
        draft.timings.prompt_ms = ms(prompt_started.elapsed());
        let model_started = Instant::now();
        let reply = self.backend.reply(&prompt);
        draft.timings.model_ms = ms(model_started.elapsed());
        // An abort stops the model mid-reply; that is the abort, not a model failure.
        if let Some(reason) = self.aborted() {
            return Err(self.abort_now(
                reason,
                draft.record(Outcome::Aborted {
                    reason: reason.to_string(),
                }),
            ));
        }
        let e = match reply {
            Ok(reply) => {
                state.model_errors = 0;
                return Ok(reply);
            }
            Err(e) => e,
        };
        state.model_errors += 1;
        // A reply that was written but cannot be used keeps its text and timings in the
        // record: the step's time went somewhere.
        let (e, model) = match e {
            ModelError::Unusable(unusable) => {
                let UnusableReply {
                    raw,
                    timings,
                    error,
                } = *unusable;
                let model = ModelRecord {
                    raw: self.policy.redact(&raw),
                    thought: None,
                    timings,
                };
                (error, Some(model))
            }
            other => (other, None),
        };
        // The error may quote the raw reply, which may hold what a detector flags.
        let e = self.policy.redact(&e.to_string());
        state.add_note(&format!("Your last reply could not be used: {e}"));
        draft.timings.total_ms = ms(draft.started.elapsed());
        let mut rec = draft.record(Outcome::Error {
            stage: "model".into(),
            error: e.clone(),
        });
        rec.model = model;
        if let Err(e) = self.recorder.step(&rec) {
            return Err(end(
                1,
                RunStatus::Error,
                format!("cannot record step {step}: {e}"),
            ));
        }
        self.user
            .step_done(&format!("step {step}: the model failed: {}", printable(&e)));
        if state.model_errors >= self.options.guards.model_errors {
            return Err(end(
                1,
                RunStatus::Guard,
                format!(
                    "the model failed {} times in a row: {}",
                    state.model_errors,
                    printable(&e)
                ),
            ));
        }
        Err(Next::Continue)
    }

    /// Check: the policy decides for the windows the action reaches, the person (or `--yes`)
    /// answers an ask, and just before acting a second look at those windows decides again
    /// if they changed.
    fn check(
        &mut self,
        draft: &mut Draft,
        reply: &Reply,
        active: Option<ActiveWindow>,
        frame: Option<&Frame>,
    ) -> Result<Checked, Next> {
        let action = &reply.action;
        self.user.phase(draft.step, "policy");
        let policy_started = Instant::now();
        let seen = self.windows_reached(action, active);
        let declared = reply.intent.unwrap_or(Intent::Other);
        let mut request = seen.request(action, self.monitors).with_intent(declared);
        let mut decision = self.policy.check(&request);
        draft.timings.policy_ms = ms(policy_started.elapsed());

        let ask_started = Instant::now();
        let (mut verdict, mut answer) = self.settle_ask(draft, &request, &decision, frame)?;
        // Between the screenshot and now, decoding and a waiting ask may have taken seconds,
        // and the focus, the windows under the pointer or the clipboard may have changed:
        // look again, and if they did, decide again for what the input would reach now.
        if verdict == Verdict::Allow && action.touches_desktop() && !self.options.dry_run {
            let now = self.windows_reached(action, self.screen.active_window().ok().flatten());
            if now.differs_from(&seen) {
                request = now.request(action, self.monitors).with_intent(declared);
                decision = self.policy.recheck(&request);
                self.user.note(&format!(
                    "step {}: the windows changed before acting ({}); decided again: {}",
                    draft.step,
                    now.describe(),
                    decision.decision
                ));
                let (again, given) = self.settle_ask(draft, &request, &decision, frame)?;
                verdict = again;
                answer = given.or(answer);
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
        draft.timings.ask_ms = ms(ask_started.elapsed());
        Ok(Checked {
            request,
            decision,
            verdict,
            answer,
        })
    }

    /// The verdict on `decision`: its own, or, for an ask, the answer it got.
    fn settle_ask(
        &mut self,
        draft: &Draft,
        request: &Request,
        decision: &Decision,
        frame: Option<&Frame>,
    ) -> Result<(Verdict, Option<Given>), Next> {
        if decision.decision != Verdict::Ask {
            return Ok((decision.decision, None));
        }
        self.user.phase(draft.step, "waiting for you");
        match self.resolve_ask(request, decision, frame) {
            Ok((verdict, given)) => Ok((verdict, Some(given))),
            Err(reason) => {
                let mut rec = draft.record(Outcome::Aborted {
                    reason: reason.to_string(),
                });
                rec.decision = Some(decision.clone());
                Err(self.abort_now(reason, rec))
            }
        }
    }

    /// Act on the verdict, then record the step (redacted) and say whether the run goes on.
    fn act_and_record(
        &mut self,
        mut draft: Draft,
        state: &mut State,
        reply: Reply,
        checked: Checked,
    ) -> Next {
        let step = draft.step;
        let Checked {
            mut request,
            decision,
            verdict,
            answer,
        } = checked;
        let action = &reply.action;
        let proposed_again =
            state.last_proposed.as_ref() == Some(action) && !matches!(action, Action::Wait { .. });
        state.repeated = if proposed_again {
            state.repeated + 1
        } else {
            1
        };
        state.last_proposed = Some(action.clone());

        self.user.phase(step, "act");
        let act_started = Instant::now();
        let outcome = self
            .act(action, verdict, &decision, answer.map(|g| g.answer), state)
            .redacted(|text| self.policy.redact(text));
        draft.timings.act_ms = ms(act_started.elapsed());
        if matches!(outcome, Outcome::Executed { .. }) {
            self.policy.executed(&request, &decision);
            state.acted = true;
        }

        let record_started = Instant::now();
        let redacted_action = self.redact_action(action);
        request.action = redacted_action.clone();
        request.pasted = request.pasted.as_deref().map(|t| self.policy.redact(t));
        let thought = reply.thought.as_deref().map(|t| self.policy.redact(t));
        let summary = summary_line(
            step,
            &redacted_action,
            &decision,
            verdict,
            &outcome,
            &draft.timings,
        );
        state.close_turn(
            &reply.raw,
            self.policy.redact(&note_after(&decision, &outcome)),
            self.options.window,
        );
        let ended = self.ending(&outcome, state);
        draft.record_ms += ms(record_started.elapsed());
        draft.timings.record_ms = draft.record_ms;
        draft.timings.total_ms = ms(draft.started.elapsed());
        let mut rec = draft.record(outcome);
        rec.model = Some(ModelRecord {
            raw: self.policy.redact(&reply.raw),
            thought,
            timings: reply.timings.clone(),
        });
        rec.action = Some(redacted_action);
        rec.request = Some(request);
        rec.decision = Some(decision);
        rec.answer = answer.map(|g| g.answer);
        rec.answered_by = answer.map(|g| g.by);
        if let Err(e) = self.recorder.step(&rec) {
            return end(
                1,
                RunStatus::Error,
                format!("cannot record step {step}: {e}"),
            );
        }
        self.user.step_done(&summary);
        ended
    }

    fn windows_reached(&self, action: &Action, active: Option<ActiveWindow>) -> WindowsReached {
        windows_reached(&*self.screen, action, active)
    }

    /// Settles an ask: `--yes`, or the person. The floor's and the budgets' asks always go to
    /// the person: `--yes` must not turn a budget into a silent limit-free run.
    fn resolve_ask(
        &mut self,
        request: &Request,
        decision: &Decision,
        frame: Option<&Frame>,
    ) -> Result<(Verdict, Given), AbortReason> {
        let for_the_person = decision.only_the_person_answers();
        let (answer, by) = if self.options.yes && !for_the_person {
            (Answer::Once, AnsweredBy::YesFlag)
        } else {
            let mut shown = request.clone();
            shown.action = self.redact_action(&request.action);
            shown.pasted = request.pasted.as_deref().map(|t| self.policy.redact(t));
            match self.user.ask(&shown, decision, frame) {
                UserAnswer::Answer(answer) => (answer, AnsweredBy::Person),
                UserAnswer::Client(answer) => (answer, AnsweredBy::Client),
                UserAnswer::Nobody => (Answer::Deny, AnsweredBy::Nobody),
                UserAnswer::Abort => {
                    self.abort.trigger(AbortReason::User);
                    return Err(AbortReason::User);
                }
            }
        };
        match self.policy.answer(request, decision, answer) {
            Ok(verdict) => Ok((verdict, Given { answer, by })),
            Err(e) => {
                // The person allowed it; only remembering failed (a floor ask, or the grant
                // file could not be written). Allow this once and say so.
                self.user.note(&format!("{e}; allowing this once"));
                let answer = Answer::Once;
                Ok((Verdict::Allow, Given { answer, by }))
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
                let started = Instant::now();
                let until = (started + Duration::from_millis(*ms)).min(self.deadline);
                while Instant::now() < until {
                    if self.aborted().is_some() {
                        break;
                    }
                    std::thread::sleep(
                        Duration::from_millis(10).min(until.saturating_duration_since(Instant::now())),
                    );
                }
                // What was waited: a wait cut by the time limit or an abort says so.
                Outcome::Waited {
                    ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                }
            }
            _ if self.options.dry_run => Outcome::DryRun,
            // Unreadable counts as on: typing blind to the case is what the check prevents.
            _ if action.typed_text().is_some() && self.screen.caps_lock().unwrap_or(true) => {
                Outcome::Error {
                    stage: "act".into(),
                    error: "Caps Lock is on, so this text would arrive in another case than the policy judged it; nothing was typed. Turn Caps Lock off".into(),
                }
            }
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
            Outcome::Done { summary } => {
                end(0, RunStatus::Done, format!("done: {}", printable(summary)))
            }
            Outcome::Failed { reason } => end(
                1,
                RunStatus::Failed,
                format!("the model gave up: {}", printable(reason)),
            ),
            Outcome::Asked {
                question,
                answer: None,
            } => end(
                1,
                RunStatus::Failed,
                format!(
                    "the model asked \"{}\" and nobody could answer",
                    printable(question)
                ),
            ),
            Outcome::Aborted { reason } => {
                self.hands.release_all();
                end(
                    ABORT_EXIT_CODE,
                    RunStatus::Aborted,
                    format!("aborted: {reason}"),
                )
            }
            _ if state.refusals >= guards.refusals => end(
                1,
                RunStatus::Guard,
                format!(
                    "the model proposed {} refused actions in a row; stopping rather than probing the policy",
                    state.refusals
                ),
            ),
            _ if state.repeated >= guards.repeats => end(
                1,
                RunStatus::Guard,
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
        end(
            ABORT_EXIT_CODE,
            RunStatus::Aborted,
            format!("aborted: {reason}"),
        )
    }

    /// The action with everything the model wrote passed through the detectors.
    fn redact_action(&self, action: &Action) -> Action {
        action.with_text_redacted(|text| self.policy.redact(text))
    }
}

/// The windows `action` would reach: the active one (keys and text) and the top-level windows
/// under its points (clicks, scrolls, drags). A window that cannot be read counts as an unknown
/// window, which no allow rule for a named app covers.
fn windows_reached(
    screen: &dyn Screen,
    action: &Action,
    active: Option<ActiveWindow>,
) -> WindowsReached {
    let points = action.points();
    let under_pointer = match screen.windows_at(&points) {
        Ok(windows) => windows.into_iter().map(Some).collect(),
        Err(e) => {
            tracing::warn!("cannot read the windows under the pointer: {e}");
            points.iter().map(|_| None).take(1).collect()
        }
    };
    WindowsReached {
        active,
        under_pointer,
        pasted: pasted_text(screen, action),
    }
}

/// What `action` would paste, if it is a paste: every selection it may insert, read now.
/// `None` when one of them cannot be read.
fn pasted_text(screen: &dyn Screen, action: &Action) -> Option<String> {
    let mut texts = Vec::new();
    for &selection in action.pastes() {
        match screen.selection_text(selection) {
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

/// The request the check stage would make for `action` as the screen stands now: the window
/// with the focus, the windows under its points and what it would paste. For callers that
/// decide outside a run (an MCP client's `explain`).
pub fn request_now(screen: &dyn Screen, action: &Action, monitors: &[MonitorInfo]) -> Request {
    let active = screen.active_window().ok().flatten();
    windows_reached(screen, action, active).request(action, monitors)
}

/// What one step has gathered so far; every way out of the step records it.
struct Draft {
    step: u32,
    at: String,
    started: Instant,
    timings: StepTimings,
    frame: Option<FrameRecord>,
    settled: bool,
    /// Time spent recording (the frame, the step line).
    record_ms: f64,
}

impl Draft {
    fn new(step: u32) -> Draft {
        Draft {
            step,
            at: now_rfc3339(),
            started: Instant::now(),
            timings: StepTimings::default(),
            frame: None,
            settled: false,
            record_ms: 0.0,
        }
    }

    /// The step's record with `outcome` and what the step gathered; the caller adds the model,
    /// the action and the decision where the step got that far.
    fn record(&self, outcome: Outcome) -> StepRecord {
        StepRecord {
            step: self.step,
            at: self.at.clone(),
            frame: self.frame.clone(),
            settled: self.settled,
            timings: self.timings.clone(),
            model: None,
            action: None,
            request: None,
            decision: None,
            answer: None,
            answered_by: None,
            outcome,
        }
    }
}

/// A decided action: what the policy saw and said, and what the person answered.
struct Checked {
    request: Request,
    decision: Decision,
    verdict: Verdict,
    answer: Option<Given>,
}

/// An answer to an ask, and who gave it.
#[derive(Debug, Clone, Copy)]
struct Given {
    answer: Answer,
    by: AnsweredBy,
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
            id: w.as_ref().map(|w| w.window_id),
        };
        Request::new(action.clone())
            .with_window_ref(to_ref(&self.active))
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

/// What the next user turn tells the model about its last reply, before the new screenshot:
/// nothing when the action simply ran, as in the conversations the models were trained on.
fn note_after(decision: &Decision, outcome: &Outcome) -> String {
    match outcome {
        Outcome::Executed { .. } | Outcome::Waited { .. } => String::new(),
        Outcome::Refused {
            by: Refuser::Policy,
            ..
        } => format!("That action was not run: {}.", decision.refusal()),
        Outcome::Refused {
            by: Refuser::User, ..
        } => "That action was not run: the user refused it.".to_owned(),
        Outcome::DryRun => "That action was allowed but not run (dry run).".to_owned(),
        Outcome::Asked {
            answer: Some(answer),
            ..
        } => format!("The user answered: {answer}"),
        Outcome::Asked { answer: None, .. } => "The user did not answer.".to_owned(),
        Outcome::Error { error, .. } => format!("That action failed: {error}"),
        Outcome::Done { .. } | Outcome::Failed { .. } | Outcome::Aborted { .. } => String::new(),
    }
}

fn summary_line(
    step: u32,
    action: &Action,
    decision: &Decision,
    verdict: Verdict,
    outcome: &Outcome,
    t: &StepTimings,
) -> String {
    let mut by = decision
        .rule
        .clone()
        .unwrap_or_else(|| format!("{:?}", decision.layer).to_lowercase());
    for unlock in &decision.unlocked {
        by.push_str("; ");
        by.push_str(unlock);
    }
    format!(
        "step {step}: {action} -> {verdict} ({by}), {outcome} | settle {:.0} ms, capture {:.0} ms, model {:.0} ms, policy {:.2} ms, act {:.0} ms",
        t.settle_ms, t.observe_ms, t.model_ms, t.policy_ms, t.act_ms
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::input::{AbortSignal, Performed};
    use crate::model::{ModelError, Reply, Timings};
    use crate::policy::{Checker, Layer, PolicyEngine};
    use crate::screen::{FrameMap, ScreenError, ScreenPoint};
    use crate::trace::{RunEnd, RunStart, TraceError};

    fn monitor() -> MonitorInfo {
        MonitorInfo::single("m", 200, 200)
    }

    /// A screen that never changes except for a blinking two-pixel caret.
    struct BlinkingCaret {
        captures: u32,
    }

    impl Screen for BlinkingCaret {
        fn monitors(&self) -> Result<Vec<MonitorInfo>, ScreenError> {
            Ok(vec![monitor()])
        }
        fn capture(&mut self, m: &MonitorInfo, _: FrameTarget) -> Result<Frame, ScreenError> {
            self.captures += 1;
            let mut image = image::RgbImage::new(200, 200);
            if self.captures.is_multiple_of(2) {
                image.put_pixel(50, 50, image::Rgb([255, 255, 255]));
                image.put_pixel(50, 51, image::Rgb([255, 255, 255]));
            }
            Ok(Frame {
                image,
                map: FrameMap::new(m, 200, 200),
            })
        }
        fn active_window(&self) -> Result<Option<ActiveWindow>, ScreenError> {
            Ok(None)
        }
        fn window_at(&self, _: ScreenPoint) -> Result<Option<ActiveWindow>, ScreenError> {
            Ok(None)
        }
        fn selection_text(
            &self,
            _: crate::input::Selection,
        ) -> Result<Option<String>, ScreenError> {
            Ok(None)
        }
    }

    /// Clicks somewhere new every step, so the repeat guard never fires.
    struct Clicker {
        step: i32,
    }

    impl Backend for Clicker {
        fn reply(&mut self, _: &Prompt<'_>) -> Result<Reply, ModelError> {
            self.step += 1;
            let action = Action::Click {
                x: 20 + self.step,
                y: 20,
                button: Default::default(),
            };
            Ok(Reply {
                raw: action.to_json(),
                thought: None,
                action,
                intent: None,
                timings: Timings::default(),
            })
        }
    }

    /// A model that only ever wants to wait a minute.
    struct Waiter;

    impl Backend for Waiter {
        fn reply(&mut self, _: &Prompt<'_>) -> Result<Reply, ModelError> {
            let action = Action::Wait { ms: 60_000 };
            Ok(Reply {
                raw: action.to_json(),
                thought: None,
                action,
                intent: None,
                timings: Timings::default(),
            })
        }
    }

    struct NoHands;

    impl Hands for NoHands {
        fn perform(&mut self, action: &Action) -> Result<Performed, InputError> {
            Ok(Performed {
                action: action.clone(),
                monitor: Some(0),
                events: 2,
                elapsed_ms: 0.0,
            })
        }
        fn release_all(&mut self) -> usize {
            0
        }
        fn set_deadline(&mut self, _: Option<Instant>) {}
    }

    struct NoTrace;

    impl Recorder for NoTrace {
        fn start(&mut self, _: &RunStart) -> Result<(), TraceError> {
            Ok(())
        }
        fn frame(&mut self, _: u32, _: &image::RgbImage) -> Result<String, TraceError> {
            Ok("frame.png".into())
        }
        fn step(&mut self, _: &StepRecord) -> Result<(), TraceError> {
            Ok(())
        }
        fn end(&mut self, _: &RunEnd) -> Result<(), TraceError> {
            Ok(())
        }
        fn dir(&self) -> Option<&Path> {
            None
        }
    }

    /// A recorder that keeps the step records in memory.
    #[derive(Default)]
    struct Kept {
        steps: Vec<StepRecord>,
    }

    impl Recorder for Kept {
        fn start(&mut self, _: &RunStart) -> Result<(), TraceError> {
            Ok(())
        }
        fn frame(&mut self, _: u32, _: &image::RgbImage) -> Result<String, TraceError> {
            Ok("frame.png".into())
        }
        fn step(&mut self, record: &StepRecord) -> Result<(), TraceError> {
            self.steps.push(record.clone());
            Ok(())
        }
        fn end(&mut self, _: &RunEnd) -> Result<(), TraceError> {
            Ok(())
        }
        fn dir(&self) -> Option<&Path> {
            None
        }
    }

    /// A model that writes replies, each 512 tokens in 2 s, that name a point off the frame.
    struct OffFrame;

    impl Backend for OffFrame {
        fn reply(&mut self, _: &Prompt<'_>) -> Result<Reply, ModelError> {
            Err(ModelError::Unusable(Box::new(UnusableReply {
                raw: "click(9999, 9999) card 4111 1111 1111 1111".into(),
                timings: Timings {
                    decode_tokens: 512,
                    decode_ms: 2000.0,
                    ..Timings::default()
                },
                error: ModelError::Engine("the point (9999, 9999) is off the frame".into()),
            })))
        }
    }

    /// A reply that cannot be used still shows in the record what it cost and what it said
    /// (redacted), and the run ends after the allowed model failures.
    #[test]
    fn an_unusable_reply_keeps_its_timings_and_text_in_the_record() {
        let mut options = options_with(ImageWindow {
            images: 1,
            evict_every: 0,
        });
        options.settle.interval = Duration::from_millis(1);
        let mut recorder = Kept::default();
        let result = run_on_caret(&options, &mut OffFrame, &mut recorder);
        assert_eq!(result.status, RunStatus::Guard, "{result:?}");
        assert_eq!(
            recorder.steps.len(),
            3,
            "three failures in a row end the run"
        );
        for step in &recorder.steps {
            assert!(matches!(&step.outcome, Outcome::Error { stage, error }
                if stage == "model" && error.contains("off the frame")));
            let model = step.model.as_ref().expect("the reply's record");
            assert_eq!(model.timings.decode_tokens, 512);
            assert!(
                model.raw.contains("[redacted:card_number]"),
                "{}",
                model.raw
            );
            assert!(!model.raw.contains("4111"));
        }
    }

    /// A run on the blinking-caret screen, under a policy that allows what the floor does not
    /// stop, with hands that do nothing and nobody to answer.
    fn run_on_caret(
        options: &RunOptions,
        backend: &mut dyn Backend,
        recorder: &mut dyn Recorder,
    ) -> RunResult {
        let mut policy = permissive();
        run(
            options,
            Stages {
                screen: &mut BlinkingCaret { captures: 0 },
                monitor: monitor(),
                monitors: vec![monitor()],
                backend,
                policy: &mut policy,
                hands: &mut NoHands,
                recorder,
                user: &mut Unattended,
                abort: AbortSignal::new(),
            },
        )
    }

    /// A policy that allows everything the floor does not stop.
    fn permissive() -> Checker {
        let engine = PolicyEngine::from_sources(vec![(
            Layer::User,
            PathBuf::from("p.toml"),
            "schema_version = 1\npreset = \"permissive\"\n".into(),
        )])
        .unwrap();
        Checker::new(engine, None)
    }

    #[test]
    fn a_blinking_caret_does_not_hide_a_stuck_model() {
        let options = RunOptions {
            task: "click".into(),
            system_prompt: String::new(),
            window: ImageWindow {
                images: 1,
                evict_every: 0,
            },
            dry_run: false,
            yes: false,
            frame_target: FrameTarget::Original,
            settle: SettleOptions {
                interval: Duration::from_millis(1),
                ..SettleOptions::default()
            },
            guards: Guards {
                max_steps: 20,
                unchanged: 3,
                ..Guards::default()
            },
            engine: "test".into(),
            policy: "permissive".into(),
            unlocks: Vec::new(),
            client: None,
        };
        let result = run_on_caret(&options, &mut Clicker { step: 0 }, &mut NoTrace);
        assert_eq!(result.status, RunStatus::Guard, "{result:?}");
        assert!(result.message.contains("did not change"), "{result:?}");
        assert!(result.steps <= 5, "{result:?}");
    }

    /// A wait is an action too: it ends at the run's time limit, not a minute later.
    #[test]
    fn a_long_wait_ends_at_the_time_limit() {
        let mut options = options_with(ImageWindow {
            images: 1,
            evict_every: 0,
        });
        options.settle.interval = Duration::from_millis(1);
        options.guards.timeout = Duration::from_millis(400);
        options.guards.max_steps = 5;
        let started = Instant::now();
        let result = run_on_caret(&options, &mut Waiter, &mut NoTrace);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the wait outlasted the time limit: {:?}",
            started.elapsed()
        );
        assert_eq!(result.status, RunStatus::Guard, "{result:?}");
        assert!(result.message.contains("time limit"), "{result:?}");
    }

    fn tiny_frame(shade: u8) -> Frame {
        Frame {
            image: image::RgbImage::from_pixel(4, 4, image::Rgb([shade; 3])),
            map: FrameMap::new(&monitor(), 4, 4),
        }
    }

    fn options_with(window: ImageWindow) -> RunOptions {
        RunOptions {
            task: "t".into(),
            system_prompt: String::new(),
            window,
            dry_run: false,
            yes: false,
            frame_target: FrameTarget::Original,
            settle: SettleOptions::default(),
            guards: Guards::default(),
            engine: String::new(),
            policy: String::new(),
            unlocks: Vec::new(),
            client: None,
        }
    }

    /// Screenshots leave in batches: the prompt shows 3 to 3 + 2 of them, the latest ones,
    /// every turn's text stays, and each note goes with the turn it was said in.
    #[test]
    fn screenshots_leave_the_conversation_in_batches_and_the_text_stays() {
        let window = ImageWindow {
            images: 3,
            evict_every: 2,
        };
        let options = options_with(window);
        let mut state = State::new();
        let mut shown = Vec::new();
        for step in 0..12u8 {
            state.current = Some(tiny_frame(step));
            let prompt = state.prompt(&options).unwrap();
            assert_eq!(prompt.past.len(), usize::from(step));
            shown.push(prompt.images());
            if let Some(first) = prompt.past.iter().position(|t| t.frame.is_some()) {
                assert!(prompt.past[first..].iter().all(|t| t.frame.is_some()));
            }
            state.close_turn(
                &format!("reply {step}"),
                format!("note after {step}"),
                window,
            );
        }
        assert_eq!(shown, vec![1, 2, 3, 4, 5, 3, 4, 5, 3, 4, 5, 3]);
        assert_eq!(state.turns[0].note, "");
        assert_eq!(state.turns[1].note, "note after 0");
        assert_eq!(state.turns[11].reply, "reply 11");
        assert_eq!(state.note, "note after 11");
        // Without batches, exactly `images` every step.
        let window = ImageWindow {
            images: 2,
            evict_every: 0,
        };
        let mut state = State::new();
        for step in 0..5u8 {
            state.current = Some(tiny_frame(step));
            let shown = state.prompt(&options_with(window)).unwrap().images();
            assert_eq!(shown, usize::from(step).min(1) + 1);
            state.close_turn("r", String::new(), window);
        }
    }

    /// However long the run, the conversation holds at most `MAX_TURNS` turns: the oldest half
    /// leaves at once, the newest stay in order, and the screenshots in the window stay.
    #[test]
    fn the_conversation_is_bounded_and_keeps_its_newest_turns() {
        let window = ImageWindow {
            images: 2,
            evict_every: 0,
        };
        let mut state = State::new();
        for step in 0..(3 * MAX_TURNS) {
            state.current = Some(tiny_frame(0));
            state.close_turn(&format!("reply {step}"), String::new(), window);
            assert!(
                state.turns.len() <= MAX_TURNS,
                "{} turns",
                state.turns.len()
            );
        }
        let last = state.turns.last().map(|t| t.reply.clone());
        assert_eq!(
            last.as_deref(),
            Some(format!("reply {}", 3 * MAX_TURNS - 1).as_str())
        );
        let replies: Vec<usize> = state
            .turns
            .iter()
            .filter_map(|t| t.reply.strip_prefix("reply ")?.parse().ok())
            .collect();
        assert!(
            replies.windows(2).all(|w| w[1] == w[0] + 1),
            "in order, none missing"
        );
        // The next step's screenshot makes two.
        assert_eq!(state.turns.iter().filter(|t| t.frame.is_some()).count(), 1);
    }

    #[test]
    fn a_reply_that_could_not_be_used_leaves_no_turn_and_a_note() {
        let window = ImageWindow {
            images: 3,
            evict_every: 0,
        };
        let mut state = State::new();
        state.current = Some(tiny_frame(1));
        state.close_turn("r", "That action failed: x".into(), window);
        state.current = Some(tiny_frame(2));
        state.add_note("Your last reply could not be used: y");
        assert_eq!(state.turns.len(), 1);
        assert_eq!(
            state.note,
            "That action failed: x\nYour last reply could not be used: y"
        );
    }
}
