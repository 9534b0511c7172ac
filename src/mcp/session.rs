//! One MCP session as a deskhand run: the client takes the model's place. The session's thread
//! runs the same loop as `deskhand run` (`agent::run`): see, then "think", which here waits
//! for the client's next input call, then check, act and record. So every call meets the
//! same policy, floor, asks, budgets, held-input guarantees and trace as a model's action.
//!
//! The loop reaches the protocol through three small stage implementations: `ClientBackend`
//! (the next call is the reply), `ClientUser` (asks go to the client's elicitation first) and
//! `ClientRecorder` (each recorded step is also the call's answer).

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;

use super::Shared;
use super::tools::screenshot_target;
use crate::agent::dialog::Choice;
use crate::agent::{
    self, Guards, ImageWindow, RunOptions, Stages, TerminalUser, User, UserAnswer, ask_choices,
    ask_details,
};
use crate::input::{AbortSignal, Action, EnigoDevice, Executor, Hands};
use crate::model::{Backend, ModelError, Prompt, Reply, Timings};
use crate::policy::{
    Answer, AnswerError, Checker, Decision, GrantStore, Policy, PolicyEngine, Request, Verdict,
};
use crate::screen::{Frame, MonitorInfo, Screen, SettleOptions, X11Screen};
use crate::trace::{Recorder, RunEnd, RunStart, StepRecord, TraceError, TraceWriter, runs_dir};

/// One input call from the client, in screen pixels.
pub struct Call {
    pub action: Action,
    /// The call as the client made it, for the trace.
    pub raw: String,
    /// Where the loop says what happened to it.
    pub events: UnboundedSender<Event>,
}

/// What the loop tells the call it is working on.
pub enum Event {
    /// The policy asks. The call answers with the client's elicitation, or `None` when it
    /// cannot (then deskhand's own dialog or terminal asks).
    Ask {
        text: String,
        choices: Vec<Choice>,
        answer: Sender<Option<UserAnswer>>,
    },
    /// The call's step, as recorded (redacted).
    Step(Box<StepRecord>),
}

/// The call the loop is working on, shared by the three stages that talk to it.
type Wire = Arc<Mutex<Option<UnboundedSender<Event>>>>;

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running session: its loop's thread takes calls until the client goes.
pub struct Session {
    calls: Mutex<Sender<Call>>,
    policy: Arc<Mutex<Checker>>,
    pub monitor: MonitorInfo,
    pub monitors: Vec<MonitorInfo>,
    pub run_dir: Option<PathBuf>,
    ended: Arc<Mutex<Option<String>>>,
}

impl Session {
    /// Starts the session's run for `client` (its name and version from `initialize`). The
    /// stages are made on the session's own thread, which keeps them; this returns once they
    /// are ready, or with what kept them from being made.
    pub fn start(shared: &Arc<Shared>, client: String) -> Result<Session, String> {
        let (calls, receiver) = channel();
        let ended = Arc::new(Mutex::new(None));
        let (ready, is_ready) = channel();
        let thread_shared = shared.clone();
        let thread_ended = ended.clone();
        let handle = std::thread::Builder::new()
            .name("deskhand-mcp-session".into())
            .spawn(move || {
                let (mut stages, options) =
                    match SessionStages::new(&thread_shared, &client, receiver) {
                        Ok(made) => made,
                        Err(e) => {
                            let _ = ready.send(Err(e));
                            return;
                        }
                    };
                let monitors = stages.monitors.clone();
                let monitor = stages.monitor.clone();
                let run_dir = stages.recorder.dir().map(PathBuf::from);
                let _ = ready.send(Ok((
                    monitor.clone(),
                    monitors.clone(),
                    run_dir,
                    stages.policy.0.clone(),
                )));
                let result = agent::run(
                    &options,
                    Stages {
                        screen: &mut stages.screen,
                        monitor,
                        monitors,
                        backend: &mut stages.backend,
                        policy: &mut stages.policy,
                        hands: &mut stages.hands,
                        recorder: &mut stages.recorder,
                        user: &mut stages.user,
                        abort: thread_shared.abort.clone(),
                    },
                );
                stages.hands.release_all();
                let dir = result
                    .run_dir
                    .as_ref()
                    .map(|d| format!("; recorded in {}", d.display()))
                    .unwrap_or_default();
                eprintln!(
                    "deskhand mcp: the session with {client} ended: {}{dir}",
                    result.message
                );
                *lock(&thread_ended) = Some(result.message);
            })
            .map_err(|e| format!("cannot start the session's thread: {e}"))?;
        shared.add_session_thread(handle);
        let (monitor, monitors, run_dir, policy) = is_ready
            .recv()
            .map_err(|_| "the session's thread ended before it was ready".to_owned())??;
        Ok(Session {
            calls: Mutex::new(calls),
            policy,
            monitor,
            monitors,
            run_dir,
            ended,
        })
    }

    /// Hands a call to the loop; an error says why the session can take no more.
    pub fn send(&self, call: Call) -> Result<(), String> {
        lock(&self.calls).send(call).map_err(|_| self.why_ended())
    }

    /// Why the session takes no more calls, and where its trace is.
    pub fn why_ended(&self) -> String {
        let why = lock(&self.ended)
            .clone()
            .unwrap_or_else(|| "it stopped".into());
        format!(
            "this MCP session's run has ended ({why}); reconnect to start another{}",
            self.run_dir
                .as_ref()
                .map(|d| format!(" (its trace: {})", d.join("trace.jsonl").display()))
                .unwrap_or_default()
        )
    }

    /// What the session's policy would decide for `request` now, counting nothing.
    pub fn explain(&self, request: &Request) -> Decision {
        lock(&self.policy).recheck(request)
    }
}

/// The stages the session's thread owns.
struct SessionStages {
    screen: X11Screen,
    monitor: MonitorInfo,
    monitors: Vec<MonitorInfo>,
    hands: Executor<EnigoDevice>,
    backend: ClientBackend,
    policy: SharedPolicy,
    recorder: ClientRecorder,
    user: ClientUser,
}

impl SessionStages {
    /// The session's stages and its run's options, as `deskhand run` makes them, with the
    /// client in the model's place.
    fn new(
        shared: &Shared,
        client: &str,
        calls: Receiver<Call>,
    ) -> Result<(SessionStages, RunOptions), String> {
        // Each session decides with the files as they are now: one that broke since the
        // server started locks this session out, as it would a run.
        let engine = PolicyEngine::load(&shared.policy_paths);
        if let Some(errors) = engine.locked_by() {
            return Err(format!(
                "the policy is broken, so deskhand is locked and will not act; fix it (`deskhand policy check`): {errors}"
            ));
        }
        let checker = Checker::new(engine, Some(GrantStore::new(&shared.policy_paths.grants)));
        let display = shared.display.as_deref();
        let screen = X11Screen::connect(display).map_err(|e| e.to_string())?;
        let monitors = screen.monitors().map_err(|e| e.to_string())?;
        let monitor = screen.monitor(shared.monitor).map_err(|e| e.to_string())?;
        let device = EnigoDevice::connect(display).map_err(|e| e.to_string())?;
        let hands = Executor::new(
            device,
            monitors.clone(),
            shared.abort.clone(),
            shared.failsafe,
        );
        shared.add_releaser(hands.releaser());
        let recorder = TraceWriter::create(&runs_dir().map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        let options = RunOptions {
            task: format!("MCP session with {client}"),
            system_prompt: String::new(),
            window: ImageWindow {
                images: 1,
                evict_every: 0,
            },
            dry_run: false,
            yes: false,
            // The run's frames are what the client's screenshots show.
            frame_target: screenshot_target(&monitor, shared.max_width),
            settle: SettleOptions::default(),
            // A client decides for itself when it is stuck: no guard ends its session but
            // the time limit. Its backend fails only once the client is gone.
            guards: Guards {
                max_steps: u32::MAX,
                repeats: u32::MAX,
                unchanged: u32::MAX,
                refusals: u32::MAX,
                model_errors: 1,
                timeout: shared.timeout,
            },
            engine: format!("MCP client {client}"),
            policy: shared.policy_label.clone(),
            unlocks: shared.unlocks.clone(),
            client: Some(client.to_owned()),
        };
        let wire: Wire = Arc::new(Mutex::new(None));
        let stages = SessionStages {
            screen,
            monitor,
            monitors,
            hands,
            backend: ClientBackend {
                calls,
                wire: wire.clone(),
                abort: shared.abort.clone(),
                closed: false,
            },
            policy: SharedPolicy(Arc::new(Mutex::new(checker))),
            recorder: ClientRecorder {
                inner: recorder,
                wire: wire.clone(),
            },
            user: ClientUser {
                inner: shared.terminal_user(),
                wire,
                abort: shared.abort.clone(),
            },
        };
        Ok((stages, options))
    }
}

/// The client in the model's place: its next input call is the step's reply.
struct ClientBackend {
    calls: Receiver<Call>,
    wire: Wire,
    abort: AbortSignal,
    /// The client has gone and the run was given its `done`.
    closed: bool,
}

impl Backend for ClientBackend {
    fn reply(&mut self, _prompt: &Prompt<'_>) -> Result<Reply, ModelError> {
        loop {
            match self.calls.recv_timeout(Duration::from_millis(50)) {
                Ok(call) => {
                    *lock(&self.wire) = Some(call.events);
                    return Ok(Reply {
                        raw: call.raw,
                        thought: None,
                        action: call.action,
                        intent: None,
                        timings: Timings::default(),
                    });
                }
                // The client went: the session is over, as a model's `done` ends a run. A
                // policy that refuses `done` gets an error instead, which ends the run too
                // (the session allows one model error: a client makes none).
                Err(RecvTimeoutError::Disconnected) if self.closed => {
                    return Err(ModelError::Remote(
                        "the MCP client ended the session".into(),
                    ));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.closed = true;
                    return Ok(Reply {
                        raw: String::new(),
                        thought: None,
                        action: Action::Done {
                            summary: "the MCP client ended the session".into(),
                        },
                        intent: None,
                        timings: Timings::default(),
                    });
                }
                Err(RecvTimeoutError::Timeout) => {
                    // The loop records the abort itself once the reply returns.
                    if let Some(reason) = self.abort.reason() {
                        return Err(ModelError::Remote(format!("{reason}")));
                    }
                }
            }
        }
    }
}

/// The loop's one policy, shared with `explain` while the loop waits for a call.
struct SharedPolicy(Arc<Mutex<Checker>>);

impl Policy for SharedPolicy {
    fn check(&mut self, request: &Request) -> Decision {
        lock(&self.0).check(request)
    }
    fn recheck(&mut self, request: &Request) -> Decision {
        lock(&self.0).recheck(request)
    }
    fn answer(
        &mut self,
        request: &Request,
        decision: &Decision,
        answer: Answer,
    ) -> Result<Verdict, AnswerError> {
        lock(&self.0).answer(request, decision, answer)
    }
    fn executed(&mut self, request: &Request, decision: &Decision) {
        lock(&self.0).executed(request, decision);
    }
    fn redact(&self, text: &str) -> String {
        lock(&self.0).redact(text)
    }
}

/// The trace, whose every step also answers the call it came from.
struct ClientRecorder {
    inner: TraceWriter,
    wire: Wire,
}

impl Recorder for ClientRecorder {
    fn start(&mut self, start: &RunStart) -> Result<(), TraceError> {
        self.inner.start(start)
    }
    fn frame(&mut self, step: u32, image: &image::RgbImage) -> Result<String, TraceError> {
        self.inner.frame(step, image)
    }
    fn step(&mut self, record: &StepRecord) -> Result<(), TraceError> {
        let recorded = self.inner.step(record);
        if let Some(events) = lock(&self.wire).take() {
            // A call the client gave up on has nobody to tell.
            let _ = events.send(Event::Step(Box::new(record.clone())));
        }
        recorded
    }
    fn end(&mut self, end: &RunEnd) -> Result<(), TraceError> {
        self.inner.end(end)
    }
    fn dir(&self) -> Option<&std::path::Path> {
        self.inner.dir()
    }
}

/// The person, reached through the client's elicitation first, then deskhand's own dialog
/// or terminal.
struct ClientUser {
    inner: TerminalUser,
    wire: Wire,
    abort: AbortSignal,
}

impl ClientUser {
    /// The client's answer, or `None` when it cannot give one.
    fn ask_client(&self, request: &Request, decision: &Decision) -> Option<UserAnswer> {
        let events = lock(&self.wire).clone()?;
        let (answer, answered) = channel();
        events
            .send(Event::Ask {
                text: ask_details(request, decision),
                choices: ask_choices(decision),
                answer,
            })
            .ok()?;
        loop {
            match answered.recv_timeout(Duration::from_millis(50)) {
                Ok(answer) => return answer,
                Err(RecvTimeoutError::Disconnected) => return None,
                Err(RecvTimeoutError::Timeout) if self.abort.reason().is_some() => {
                    return Some(UserAnswer::Abort);
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }
}

impl User for ClientUser {
    fn ask(&mut self, request: &Request, decision: &Decision, frame: Option<&Frame>) -> UserAnswer {
        // The floor's and the budgets' asks go only to deskhand's own dialog or terminal: a
        // client is software, and the agent it runs must not be the one that answers them.
        let for_the_person = decision.only_the_person_answers();
        if !for_the_person && let Some(answer) = self.ask_client(request, decision) {
            return answer;
        }
        self.inner.ask(request, decision, frame)
    }
    fn reply(&mut self, _question: &str) -> Option<String> {
        None
    }
    fn phase(&mut self, step: u32, phase: &str) {
        self.inner.phase(step, phase);
    }
    fn step_done(&mut self, line: &str) {
        self.inner.step_done(line);
    }
    fn note(&mut self, line: &str) {
        self.inner.note(line);
    }
}
