//! The MCP handler: one per client session. Screenshots and window facts are read directly;
//! input calls go to the session's run (`session`), which decides, acts and records them;
//! `explain` asks the session's policy; `run_task` starts `deskhand run`.

use std::borrow::Cow;
use std::io::Cursor;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ElicitRequestParams,
    ElicitationAction, ElicitationSchema, Implementation, InitializeRequestParams,
    InitializeResult, ListToolsResult, PaginatedRequestParams, ProgressNotificationParam,
    ProtocolVersion, ServerCapabilities, ServerConfig,
};
use rmcp::service::{ElicitationMode, RequestContext};
use rmcp::{ErrorData, Peer, RoleServer, ServerHandler};
use serde_json::{Map, Value, json};
use tokio::io::AsyncBufReadExt;

use super::Shared;
use super::session::{Call, Event, Session, lock};
use super::tools::{self, INPUT_TOOLS};
use crate::agent::dialog::Choice;
use crate::agent::{UserAnswer, request_now};
use crate::cli::policy::decision_text;
use crate::input::Action;
use crate::policy::{Answer, Decision};
use crate::screen::{FrameMap, Screen, X11Screen};
use crate::trace::{AnsweredBy, Outcome, Refuser, StepRecord};

/// Screenshots larger than this as PNG are sent as JPEG.
const MAX_PNG_BYTES: usize = 1_000_000;

const INSTRUCTIONS: &str = "deskhand operates this computer's desktop under its owner's policy. \
Take a screenshot first; give points in that screenshot's pixels. Every input (click, type, key, \
...) is decided by the policy: it runs, is refused with the rule and the reason, or the person \
is asked. Do not try to get around a refusal: ask the person instead.";

/// The handler of one client session.
#[derive(Clone)]
pub struct DeskhandMcp {
    shared: Arc<Shared>,
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    session: Option<Arc<Session>>,
    /// The map of the latest screenshot: later points are in its pixels.
    screenshot: Option<FrameMap>,
}

impl DeskhandMcp {
    pub fn new(shared: Arc<Shared>) -> DeskhandMcp {
        DeskhandMcp {
            shared,
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    fn session(&self) -> Result<Arc<Session>, ErrorData> {
        lock(&self.state).session.clone().ok_or_else(|| {
            ErrorData::internal_error(
                "the session has not started; the client must initialize first",
                None,
            )
        })
    }

    /// Starts the session's run, once, naming the client.
    async fn start_session(&self, client: String) -> Result<(), ErrorData> {
        if lock(&self.state).session.is_some() {
            return Ok(());
        }
        let shared = self.shared.clone();
        let started = tokio::task::spawn_blocking(move || Session::start(&shared, client))
            .await
            .map_err(|e| {
                ErrorData::internal_error(format!("the session did not start: {e}"), None)
            })?
            .map_err(|e| {
                ErrorData::internal_error(format!("the session did not start: {e}"), None)
            })?;
        lock(&self.state).session = Some(Arc::new(started));
        Ok(())
    }

    /// The map points are read with: the latest screenshot's, or the one a screenshot of the
    /// session's monitor would have.
    fn current_map(&self, session: &Session) -> Option<FrameMap> {
        let screenshot = lock(&self.state).screenshot.clone();
        screenshot.or_else(|| {
            tools::map_without_screenshot(
                &session.monitor,
                tools::screenshot_target(&session.monitor, self.shared.max_width),
            )
        })
    }

    async fn screenshot(&self, arguments: Map<String, Value>) -> Result<CallToolResult, ErrorData> {
        let args: tools::ScreenshotArgs = match tools::parse("screenshot", arguments) {
            Ok(args) => args,
            Err(e) => return Ok(error_result(e)),
        };
        let session = self.session()?;
        let index = args.monitor.unwrap_or(session.monitor.index);
        let Some(monitor) = session.monitors.iter().find(|m| m.index == index).cloned() else {
            return Ok(error_result(format!(
                "no monitor {index}: there are {} (see list_monitors)",
                session.monitors.len()
            )));
        };
        let display = self.shared.display.clone();
        let target = tools::screenshot_target(&monitor, self.shared.max_width);
        let captured = tokio::task::spawn_blocking(move || -> Result<_, String> {
            let mut screen = X11Screen::connect(display.as_deref()).map_err(|e| e.to_string())?;
            let frame = screen
                .capture(&monitor, target)
                .map_err(|e| e.to_string())?;
            let (bytes, mime) = encode(&frame.image)?;
            Ok((frame.map, bytes, mime, monitor))
        })
        .await
        .map_err(|e| ErrorData::internal_error(format!("the capture failed: {e}"), None))?;
        let (map, bytes, mime, monitor) = match captured {
            Ok(captured) => captured,
            Err(e) => return Ok(error_result(format!("cannot capture the screen: {e}"))),
        };
        let text = tools::describe_screenshot(&monitor, &map, mime, bytes.len());
        lock(&self.state).screenshot = Some(map);
        // No structured content: some clients then drop the image.
        Ok(CallToolResult::success(vec![
            ContentBlock::image(
                base64::engine::general_purpose::STANDARD.encode(&bytes),
                mime,
            ),
            ContentBlock::text(text),
        ]))
    }

    async fn active_window(&self) -> Result<CallToolResult, ErrorData> {
        let display = self.shared.display.clone();
        let active = tokio::task::spawn_blocking(move || {
            X11Screen::connect(display.as_deref())
                .and_then(|s| s.active_window())
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        Ok(match active {
            Ok(Some(window)) => json_result(&json!({
                "app": window.app_name,
                "title": window.title,
                "pid": window.pid,
                "wm_class": window.wm_class,
                "window_id": window.window_id,
            })),
            Ok(None) => {
                CallToolResult::success(vec![ContentBlock::text("no window has the focus")])
            }
            Err(e) => error_result(format!("cannot read the active window: {e}")),
        })
    }

    fn list_monitors(&self) -> Result<CallToolResult, ErrorData> {
        let session = self.session()?;
        let monitors: Vec<Value> = session
            .monitors
            .iter()
            .map(|m| {
                json!({
                    "index": m.index,
                    "name": m.name,
                    "x": m.x,
                    "y": m.y,
                    "width": m.width,
                    "height": m.height,
                    "scale_factor": m.scale_factor,
                    "primary": m.primary,
                    "screenshots_by_default": m.index == session.monitor.index,
                })
            })
            .collect();
        Ok(json_result(&Value::Array(monitors)))
    }

    /// An input tool's call: mapped, handed to the session's run, and answered with what the
    /// run decided and did.
    async fn input(
        &self,
        tool: &str,
        arguments: Map<String, Value>,
        peer: &Peer<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let session = self.session()?;
        let Some(map) = self.current_map(&session) else {
            return Ok(error_result(
                "the monitor's size is unknown; take a screenshot first",
            ));
        };
        let raw = json!({ "tool": tool, "arguments": arguments }).to_string();
        let action = match tools::action_for(tool, arguments, &map) {
            Ok(action) => action,
            Err(e) => return Ok(error_result(e)),
        };
        let _turn = self.shared.input_turn.lock().await;
        let (events, mut happened) = tokio::sync::mpsc::unbounded_channel();
        if let Err(e) = session.send(Call {
            action: action.clone(),
            raw,
            events,
        }) {
            return Ok(error_result(e));
        }
        loop {
            match happened.recv().await {
                Some(Event::Ask {
                    text,
                    choices,
                    answer,
                }) => {
                    let _ = answer.send(elicit(peer, &text, &choices).await);
                }
                Some(Event::Step(record)) => return Ok(step_result(tool, &action, &record)),
                None => return Ok(error_result(session.why_ended())),
            }
        }
    }

    async fn explain(&self, arguments: Map<String, Value>) -> Result<CallToolResult, ErrorData> {
        let args: tools::ExplainArgs = match tools::parse("explain", arguments) {
            Ok(args) => args,
            Err(e) => return Ok(error_result(e)),
        };
        let session = self.session()?;
        let Some(map) = self.current_map(&session) else {
            return Ok(error_result(
                "the monitor's size is unknown; take a screenshot first",
            ));
        };
        let action = match tools::action_for(&args.tool, args.arguments, &map) {
            Ok(action) => action,
            Err(e) => return Ok(error_result(e)),
        };
        let display = self.shared.display.clone();
        let explained = tokio::task::spawn_blocking(move || -> Result<String, String> {
            let screen = X11Screen::connect(display.as_deref()).map_err(|e| e.to_string())?;
            let request = request_now(&screen, &action, &session.monitors);
            let decision = session.explain(&request);
            Ok(format!(
                "{} as the screen stands now (on the screen: {}):\n{}\nBudgets are not counted \
                 here; a call may still ask when one runs out.",
                args.tool,
                action,
                decision_text(&decision)
            ))
        })
        .await
        .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        Ok(match explained {
            Ok(text) => CallToolResult::success(vec![ContentBlock::text(text)]),
            Err(e) => error_result(format!("cannot read the screen: {e}")),
        })
    }

    /// `deskhand run TASK` as a child process, with a progress notification per step.
    async fn run_task(
        &self,
        arguments: Map<String, Value>,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let args: tools::RunTaskArgs = match tools::parse("run_task", arguments) {
            Ok(args) => args,
            Err(e) => return Ok(error_result(e)),
        };
        let max_steps = args.max_steps.unwrap_or(30).max(1);
        let config = &self.shared.run_task;
        let mut command = tokio::process::Command::new(&config.program);
        if let Some(display) = &self.shared.display {
            command.args(["--display", display]);
        }
        command
            .arg("run")
            .arg(&args.task)
            .args(["--max-steps", &max_steps.to_string()]);
        if let Some(model) = &config.model {
            command.arg("--model").arg(model);
        }
        if let Some(mmproj) = &config.mmproj {
            command.arg("--mmproj").arg(mmproj);
        }
        if let Some(family) = config.family {
            command.args(["--family", family.name()]);
        }
        if let Some(policy) = &config.policy {
            command.arg("--policy").arg(policy);
        }
        if let Some(monitor) = self.shared.monitor {
            command.args(["--monitor", &monitor.to_string()]);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let _turn = self.shared.input_turn.lock().await;
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => return Ok(error_result(format!("cannot start deskhand run: {e}"))),
        };
        let token = context.meta.get_progress_token();
        let mut said = Vec::new();
        if let Some(stderr) = child.stderr.take() {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            loop {
                let line = tokio::select! {
                    line = lines.next_line() => line,
                    () = context.ct.cancelled() => {
                        stop_child(&child);
                        break;
                    }
                };
                let Ok(Some(line)) = line else { break };
                if let (Some(token), Some(step)) = (&token, step_of(&line)) {
                    let _ = context
                        .peer
                        .notify_progress(
                            ProgressNotificationParam::new(token.clone(), f64::from(step))
                                .with_total(f64::from(max_steps))
                                .with_message(line.clone()),
                        )
                        .await;
                }
                said.push(line);
            }
        }
        let output = child
            .wait_with_output()
            .await
            .map_err(|e| ErrorData::internal_error(format!("deskhand run: {e}"), None))?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let trace = stdout
            .lines()
            .find_map(|l| l.strip_prefix("recorded "))
            .and_then(|l| l.split_once(" steps in "))
            .and_then(|(_, rest)| rest.strip_suffix(" (report.html)"))
            .map(|dir| std::path::Path::new(dir).join("trace.jsonl"));
        let mut text = format!(
            "deskhand run ended with exit code {}: {}",
            output.status.code().unwrap_or(-1),
            stdout.trim()
        );
        if let Some(trace) = &trace {
            text.push_str(&format!("\ntrace: {}", trace.display()));
        }
        if output.status.success() {
            Ok(CallToolResult::success(vec![ContentBlock::text(text)]))
        } else {
            let tail: Vec<&str> = said
                .iter()
                .rev()
                .take(8)
                .rev()
                .map(String::as_str)
                .collect();
            text.push_str(&format!("\nits last words:\n{}", tail.join("\n")));
            Ok(error_result(text))
        }
    }
}

impl ServerHandler for DeskhandMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("deskhand", env!("CARGO_PKG_VERSION")))
            .with_protocol_version(ProtocolVersion::V_2025_11_25)
            .with_instructions(INSTRUCTIONS)
    }

    // Up to 2025-11-25: later revisions forbid the server's requests that elicitation needs.
    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        Cow::Borrowed(ProtocolVersion::known_up_to(&ProtocolVersion::V_2025_11_25))
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, ErrorData> {
        context.peer.set_peer_info(request.clone());
        let info = &request.client_info;
        self.start_session(format!("{} {}", info.name, info.version))
            .await?;
        self.negotiate_initialize(&request)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        tools::all()
            .map(ListToolsResult::with_all_items)
            .map_err(|e| ErrorData::internal_error(e, None))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let arguments = request.arguments.unwrap_or_default();
        let result = match request.name.as_ref() {
            "screenshot" => self.screenshot(arguments).await,
            "active_window" => self.active_window().await,
            "list_monitors" => self.list_monitors(),
            "explain" => self.explain(arguments).await,
            "run_task" => self.run_task(arguments, &context).await,
            tool if INPUT_TOOLS.contains(&tool) => self.input(tool, arguments, &context.peer).await,
            other => Err(ErrorData::invalid_params(
                format!(
                    "unknown tool {other:?}; deskhand's tools are screenshot, {}, active_window, \
                     list_monitors, explain and run_task",
                    INPUT_TOOLS.join(", ")
                ),
                None,
            )),
        }?;
        Ok(result.into())
    }
}

fn error_result(text: impl Into<String>) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(text.into())])
}

fn json_result(value: &Value) -> CallToolResult {
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    CallToolResult::success(vec![ContentBlock::text(text)])
}

/// PNG, or JPEG when the PNG would be over `MAX_PNG_BYTES`.
fn encode(image: &image::RgbImage) -> Result<(Vec<u8>, &'static str), String> {
    let mut png = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| format!("cannot encode the screenshot: {e}"))?;
    if png.len() <= MAX_PNG_BYTES {
        return Ok((png, "image/png"));
    }
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 85)
        .encode_image(image)
        .map_err(|e| format!("cannot encode the screenshot: {e}"))?;
    Ok((jpeg, "image/jpeg"))
}

/// What deciding `decision` was: "allow by rule 'x' at FILE:LINE".
fn decided(decision: &Decision) -> String {
    format!(
        "{} by {} at {}",
        decision.decision.name(),
        decision.decider(),
        decision.source
    )
}

/// The call's answer from its recorded step.
fn step_result(tool: &str, action: &Action, record: &StepRecord) -> CallToolResult {
    let shown = format!("{tool} ({action} on the screen)");
    let decision = record.decision.as_ref();
    let by = decision.map(decided).unwrap_or_default();
    match &record.outcome {
        Outcome::Executed { .. } => {
            let answered = match record.answered_by {
                Some(AnsweredBy::Person) => ", after an ask the person answered",
                Some(AnsweredBy::Client) => ", after an ask the MCP client answered",
                Some(AnsweredBy::YesFlag | AnsweredBy::Nobody) | None => "",
            };
            CallToolResult::success(vec![ContentBlock::text(format!(
                "{shown}: done ({by}{answered})"
            ))])
        }
        Outcome::Waited { ms } => {
            CallToolResult::success(vec![ContentBlock::text(format!("waited {ms} ms"))])
        }
        Outcome::Refused {
            by: Refuser::Policy,
            reason,
        } => error_result(format!(
            "{shown}: refused by deskhand's policy, nothing was executed. Decision: {by}. \
             Reason: {reason}"
        )),
        Outcome::Refused {
            by: Refuser::User, ..
        } => {
            let reason = decision.map(|d| d.reason.as_str()).unwrap_or_default();
            let who = match record.answered_by {
                Some(AnsweredBy::Nobody) => "nobody could answer",
                Some(AnsweredBy::Client) => "the MCP client answered no",
                _ => "the person answered no",
            };
            error_result(format!(
                "{shown}: the policy asked ({by}: {reason}) and {who}; nothing was executed"
            ))
        }
        Outcome::Error { stage, error } => {
            error_result(format!("{shown}: nothing more was done; {stage}: {error}"))
        }
        Outcome::Aborted { reason } => error_result(format!(
            "{shown}: aborted ({reason}); deskhand has stopped and released every key and button"
        )),
        other => error_result(format!(
            "{shown}: {}",
            serde_json::to_string(other).unwrap_or_default()
        )),
    }
}

/// The policy's ask put to the client's person through elicitation; `None` when the client
/// cannot elicit or the elicitation fails. "always" is not offered: a lasting grant is only
/// given in deskhand's own dialog or terminal.
async fn elicit(peer: &Peer<RoleServer>, text: &str, choices: &[Choice]) -> Option<UserAnswer> {
    if !peer
        .supported_elicitation_modes()
        .contains(&ElicitationMode::Form)
    {
        return None;
    }
    let offered: Vec<&Choice> = choices.iter().filter(|c| c.word != "always").collect();
    let words: Vec<&str> = offered.iter().map(|c| c.word).collect();
    let schema: ElicitationSchema = serde_json::from_value(json!({
        "type": "object",
        "properties": {
            "answer": {
                "type": "string",
                "title": "Your answer",
                "description": "once: allow this action; session: allow it for this session; deny: refuse it; abort: stop deskhand",
                "enum": words,
            }
        },
        "required": ["answer"],
    }))
    .ok()?;
    let asked = peer
        .create_elicitation_with_timeout(
            ElicitRequestParams::FormElicitationParams {
                meta: None,
                message: format!("deskhand's policy asks before this action:\n{text}"),
                requested_schema: schema,
            },
            Some(Duration::from_secs(600)),
        )
        .await;
    let result = match asked {
        Ok(result) => result,
        Err(e) => {
            tracing::warn!("the MCP client's elicitation failed ({e}); asking on deskhand's side");
            return None;
        }
    };
    let deny = UserAnswer::Client(Answer::Deny);
    Some(match result.action {
        ElicitationAction::Accept => {
            let word = result
                .content
                .as_ref()
                .and_then(|c| c.get("answer"))
                .and_then(Value::as_str);
            match offered
                .iter()
                .find(|c| Some(c.word) == word)
                .map(|c| c.answer)
            {
                Some(UserAnswer::Answer(answer)) => UserAnswer::Client(answer),
                Some(other) => other,
                None => deny,
            }
        }
        _ => deny,
    })
}

/// The step number a `deskhand run` progress line names ("step 3: click ...").
fn step_of(line: &str) -> Option<u32> {
    line.strip_prefix("step ")?.split_once(':')?.0.parse().ok()
}

/// Asks `deskhand run` to stop as Ctrl-C would: it releases what it holds and ends its trace.
fn stop_child(child: &tokio::process::Child) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill(2) on our own child's pid, which has not been reaped (we still hold it).
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_name_their_step() {
        assert_eq!(
            step_of("step 3: click (1, 2) -> allow (x), executed | settle 1 ms"),
            Some(3)
        );
        assert_eq!(step_of("loading model..."), None);
        assert_eq!(step_of("step x: y"), None);
    }
}
