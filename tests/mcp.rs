//! `deskhand mcp` driven by rmcp's own client, over stdio and over streamable HTTP, on a
//! private 1920x1080 Xvfb with the test window: the tools are listed, a screenshot decodes, a
//! click lands where the screenshot showed the target, a floor-denied key is refused and never
//! reaches the window, bad calls get errors while the server keeps serving, a wrong token is
//! turned away, and the session is recorded as a run that names its client.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{TestWindow, display, read_jsonl};
use deskhand::screen::{FrameMap, MonitorInfo, VirtualDisplay};
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, ClientCapabilities, ClientRequest, ElicitRequestParams,
    ElicitResult, ElicitationAction, Implementation, InitializeRequestParams,
    ProgressNotificationParam, ServerResult,
};
use rmcp::service::{NotificationContext, PeerRequestOptions, RequestContext, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientHandler, ErrorData, RoleClient, ServiceExt};
use serde_json::{Map, Value, json};

const BALANCED: &str = "schema_version = 1\npreset = \"balanced\"\n";

/// Balanced, and clicks in the test window ask.
const ASK_IN_TEST_WINDOW: &str = "schema_version = 1\npreset = \"balanced\"\n\n[[rule]]\n\
    id = \"ask-testwin\"\ndecision = \"ask\"\nreason = \"the test window asks\"\n\
    app = [\"deskhand-testwin\"]\naction = [\"click\"]\n";

/// A test's folders: runs, policy, grants, token.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(policy: &str) -> Setup {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("policy.toml"), policy).expect("write the policy");
        Setup { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn command(&self, display: &VirtualDisplay, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_deskhand"));
        cmd.arg("mcp")
            .args(args)
            .env("DISPLAY", display.name())
            .env("DESKHAND_NO_DIALOG", "1")
            .env("DESKHAND_RUNS_DIR", self.path("runs"))
            .env("DESKHAND_POLICY", self.path("policy.toml"))
            .env("DESKHAND_GRANTS", self.path("grants.toml"))
            .env("DESKHAND_SYSTEM_POLICY", "none")
            .env_remove("WAYLAND_DISPLAY");
        cmd
    }

    fn stderr_file(&self) -> std::fs::File {
        std::fs::File::create(self.path("stderr.txt")).expect("stderr file")
    }

    /// `deskhand mcp` on stdio, as a client starts it.
    fn stdio(&self, display: &VirtualDisplay) -> TokioChildProcess {
        let (transport, _) = TokioChildProcess::builder(self.command(display, &[]))
            .stderr(self.stderr_file())
            .spawn()
            .expect("start deskhand mcp");
        transport
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.path("stderr.txt")).unwrap_or_default()
    }

    /// The one run's trace, once it has its end line.
    fn finished_trace(&self) -> Vec<Value> {
        let started = Instant::now();
        loop {
            let runs: Vec<PathBuf> = std::fs::read_dir(self.path("runs"))
                .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default();
            if let [run] = runs.as_slice() {
                let lines = read_jsonl(&run.join("trace.jsonl"));
                if lines.last().is_some_and(|l| l["record"] == "end") {
                    assert!(run.join("report.html").is_file(), "no report in {run:?}");
                    return lines;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no finished run in {:?} within 30 s ({} runs); stderr:\n{}",
                self.path("runs"),
                runs.len(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A client that names itself, keeps the progress it is told, and, when `answer` is set,
/// answers elicitations with it.
#[derive(Clone)]
struct TestClient {
    answer: Option<&'static str>,
    asked: Arc<Mutex<Vec<String>>>,
    progress: Progress,
}

/// Progress notifications as told: (progress, total, message).
type Progress = Arc<Mutex<Vec<(f64, Option<f64>, String)>>>;

impl TestClient {
    fn new(answer: Option<&'static str>) -> TestClient {
        TestClient {
            answer,
            asked: Arc::new(Mutex::new(Vec::new())),
            progress: Arc::new(Mutex::new(Vec::new())),
        }
    }
}

impl ClientHandler for TestClient {
    fn get_info(&self) -> InitializeRequestParams {
        let capabilities: ClientCapabilities = match self.answer {
            Some(_) => serde_json::from_value(json!({"elicitation": {"form": {}}})),
            None => serde_json::from_value(json!({})),
        }
        .expect("client capabilities");
        InitializeRequestParams::new(
            capabilities,
            Implementation::new("deskhand-test-client", "7.1"),
        )
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.progress.lock().expect("progress").push((
            params.progress,
            params.total,
            params.message.unwrap_or_default(),
        ));
    }

    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        let message = match &request {
            ElicitRequestParams::FormElicitationParams { message, .. } => message.clone(),
            other => format!("{other:?}"),
        };
        self.asked.lock().expect("asked").push(message);
        Ok(match self.answer {
            Some(answer) => ElicitResult::new(ElicitationAction::Accept)
                .with_content(json!({ "answer": answer })),
            None => ElicitResult::new(ElicitationAction::Decline),
        })
    }
}

type Client = RunningService<RoleClient, TestClient>;

/// Calls `tool` and returns its result as JSON (`isError`, `content`), or the protocol error.
async fn call(client: &Client, tool: &str, arguments: Value) -> Result<Value, String> {
    let arguments: Map<String, Value> = match arguments {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    let params = CallToolRequestParams::new(tool.to_owned()).with_arguments(arguments);
    client
        .call_tool(params)
        .await
        .map(|r| serde_json::to_value(r).expect("result as JSON"))
        .map_err(|e| e.to_string())
}

fn is_error(result: &Value) -> bool {
    result["isError"] == true
}

fn text_of(result: &Value) -> String {
    result["content"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["text"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The screenshot point that shows screen point (x, y) on this 1920x1080 display.
fn in_screenshot(x: i32, y: i32) -> (u32, u32) {
    let map = FrameMap::new(&MonitorInfo::single("screen", 1920, 1080), 1280, 720);
    map.frame_pixel_of(deskhand::screen::ScreenPoint::new(x, y))
        .expect("a point on the screen")
}

/// The checks both transports share: tools, a screenshot, a click that lands, a floor-denied
/// key that does not, bad calls refused with the server still serving.
async fn drive(client: &Client, window: &TestWindow) {
    let tools = client.list_all_tools().await.expect("list tools");
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    for expected in [
        "screenshot",
        "click",
        "double_click",
        "move",
        "drag",
        "scroll",
        "type",
        "key",
        "wait",
        "active_window",
        "list_monitors",
        "explain",
        "run_task",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    let click_tool = tools.iter().find(|t| t.name == "click").expect("click");
    assert_eq!(
        click_tool
            .annotations
            .as_ref()
            .and_then(|a| a.destructive_hint),
        Some(true)
    );

    let shot = call(client, "screenshot", json!({}))
        .await
        .expect("screenshot");
    assert!(!is_error(&shot), "{shot}");
    assert!(shot.get("structuredContent").is_none(), "{shot}");
    let image = &shot["content"][0];
    assert_eq!(image["type"], "image", "{shot}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(image["data"].as_str().expect("image data"))
        .expect("base64");
    assert!(bytes.len() < 1_000_000, "{} bytes", bytes.len());
    let decoded = image::load_from_memory(&bytes).expect("the screenshot decodes");
    assert_eq!((decoded.width(), decoded.height()), (1280, 720));
    let about = text_of(&shot);
    assert!(
        about.contains("1920x1080") && about.contains("1280x720"),
        "{about}"
    );

    // The red target, where the screenshot shows it.
    let red = window.target("red");
    let (x, y) = in_screenshot(red.x, red.y);
    let pixel = decoded.to_rgb8().get_pixel(x, y).0;
    assert!(
        pixel[0] > 180 && pixel[1] < 80,
        "not red at ({x}, {y}): {pixel:?}"
    );
    let clicked = call(client, "click", json!({"x": x, "y": y}))
        .await
        .expect("click");
    assert!(!is_error(&clicked), "{clicked}");
    window.wait_for("the click on red", Duration::from_secs(10), |e| {
        e["event"] == "button_press" && e["target"] == "red"
    });

    // The floor refuses a chord that leaves the session; the window never gets it.
    let refused = call(client, "key", json!({"chord": "ctrl+alt+F1"}))
        .await
        .expect("key");
    assert!(is_error(&refused), "{refused}");
    let why = text_of(&refused);
    assert!(
        why.contains("floor.session_chord") || why.contains("leaves the desktop session"),
        "{why}"
    );

    // Bad calls: errors, nothing executed, and the server goes on.
    let off = call(client, "click", json!({"x": 5000, "y": 10}))
        .await
        .expect("off");
    assert!(
        is_error(&off) && text_of(&off).contains("1280x720"),
        "{off}"
    );
    let bad = call(client, "click", json!({"x": "left"}))
        .await
        .expect("bad");
    assert!(
        is_error(&bad) && text_of(&bad).contains("bad arguments for click"),
        "{bad}"
    );
    let unknown = call(client, "format_disk", json!({})).await;
    assert!(
        unknown.as_ref().is_err_and(|e| e.contains("unknown tool")),
        "{unknown:?}"
    );

    let explained = call(
        client,
        "explain",
        json!({"tool": "key", "arguments": {"chord": "ctrl+alt+F1"}}),
    )
    .await
    .expect("explain");
    assert!(text_of(&explained).contains("DENY"), "{explained}");
    let monitors = call(client, "list_monitors", json!({}))
        .await
        .expect("monitors");
    assert!(text_of(&monitors).contains("1920"), "{monitors}");
    let active = call(client, "active_window", json!({}))
        .await
        .expect("active");
    assert!(!is_error(&active), "{active}");

    let blue = window.target("blue");
    let (x, y) = in_screenshot(blue.x, blue.y);
    let again = call(client, "click", json!({"x": x, "y": y}))
        .await
        .expect("click");
    assert!(!is_error(&again), "{again}");
    window.wait_for("the click on blue", Duration::from_secs(10), |e| {
        e["event"] == "button_press" && e["target"] == "blue"
    });
    let keys: Vec<Value> = window
        .quiet_events()
        .into_iter()
        .filter(|e| e["event"] == "key_press")
        .collect();
    assert!(keys.is_empty(), "keys reached the window: {keys:?}");
}

/// The run the session left: its client named, the click executed, the key refused.
fn check_trace(trace: &[Value]) {
    assert_eq!(trace[0]["record"], "start", "{}", trace[0]);
    assert_eq!(
        trace[0]["client"], "deskhand-test-client 7.1",
        "{}",
        trace[0]
    );
    let steps: Vec<&Value> = trace.iter().filter(|l| l["record"] == "step").collect();
    let outcomes: Vec<&str> = steps
        .iter()
        .filter_map(|s| s["outcome"]["status"].as_str())
        .collect();
    assert!(
        steps
            .iter()
            .any(|s| s["action"]["action"] == "key" && s["outcome"]["status"] == "refused"),
        "{outcomes:?}"
    );
    assert_eq!(
        steps
            .iter()
            .filter(|s| s["action"]["action"] == "click" && s["outcome"]["status"] == "executed")
            .count(),
        2,
        "{outcomes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_client_over_stdio_clicks_and_is_refused_the_floor() {
    let display = display(1920, 1080);
    let window = TestWindow::open(&display, "600x400+200+150", "MCP target");
    let setup = Setup::new(BALANCED);
    let client = TestClient::new(None)
        .serve(setup.stdio(&display))
        .await
        .unwrap_or_else(|e| panic!("initialize: {e}; stderr:\n{}", setup.stderr()));
    drive(&client, &window).await;
    client.cancel().await.expect("close the session");
    check_trace(&setup.finished_trace());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ask_goes_to_the_clients_person_through_elicitation() {
    let display = display(1920, 1080);
    let window = TestWindow::open(&display, "600x400+200+150", "MCP target");
    // Clicks in the test window ask; a lasting answer is not the client's to give.
    let setup = Setup::new(ASK_IN_TEST_WINDOW);
    let person = TestClient::new(Some("once"));
    let asked = person.asked.clone();
    let client = person
        .serve(setup.stdio(&display))
        .await
        .unwrap_or_else(|e| panic!("initialize: {e}; stderr:\n{}", setup.stderr()));
    let red = window.target("red");
    let (x, y) = in_screenshot(red.x, red.y);
    let clicked = call(&client, "click", json!({"x": x, "y": y}))
        .await
        .expect("click");
    assert!(!is_error(&clicked), "{clicked}");
    assert!(
        text_of(&clicked).contains("MCP client answered"),
        "{clicked}"
    );
    window.wait_for("the click on red", Duration::from_secs(10), |e| {
        e["event"] == "button_press" && e["target"] == "red"
    });
    let asked = asked.lock().expect("asked").clone();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert!(asked[0].contains("the test window asks"), "{asked:?}");
    client.cancel().await.expect("close the session");
    let trace = setup.finished_trace();
    let answered: Vec<&Value> = trace
        .iter()
        .filter(|l| l["record"] == "step" && l["answered_by"] == "client")
        .collect();
    assert_eq!(answered.len(), 1, "{trace:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_floors_ask_never_goes_to_the_client() {
    let display = display(1920, 1080);
    let composer = TestWindow::open_with(
        &display,
        "640x400+100+100",
        "unused",
        Some("thunderbird"),
        &["--mail"],
    );
    let setup = Setup::new(BALANCED);
    // A client that would say yes to anything it is asked.
    let agreeable = TestClient::new(Some("once"));
    let asked = agreeable.asked.clone();
    let client = agreeable
        .serve(setup.stdio(&display))
        .await
        .unwrap_or_else(|e| panic!("initialize: {e}; stderr:\n{}", setup.stderr()));
    for (tool, arguments) in [
        ("type", json!({"text": "nathan@example.com"})),
        ("key", json!({"chord": "Tab"})),
        ("type", json!({"text": "hello"})),
        ("key", json!({"chord": "Tab"})),
        // A space would count as pressing a focused Send button, which asks too.
        ("type", json!({"text": "Hello,Nathan"})),
    ] {
        let done = call(&client, tool, arguments).await.expect(tool);
        assert!(!is_error(&done), "{tool}: {done}");
    }
    let send = composer.target("send");
    let (x, y) = in_screenshot(send.x, send.y);
    let refused = call(&client, "click", json!({"x": x, "y": y}))
        .await
        .expect("click Send");
    assert!(is_error(&refused), "{refused}");
    let why = text_of(&refused);
    assert!(
        why.contains("send_email") && why.contains("nobody could answer"),
        "{why}"
    );
    assert!(
        asked.lock().expect("asked").is_empty(),
        "the client was asked"
    );
    let sent: Vec<Value> = composer
        .quiet_events()
        .into_iter()
        .filter(|e| e["event"] == "sent")
        .collect();
    assert!(sent.is_empty(), "the mail was sent: {sent:?}");
    client.cancel().await.expect("close the session");
    let trace = setup.finished_trace();
    let send_step = trace
        .iter()
        .find(|l| l["record"] == "step" && l["action"]["action"] == "click")
        .expect("the click's step");
    assert_eq!(send_step["answered_by"], "nobody", "{send_step}");
    assert_eq!(send_step["decision"]["layer"], "floor", "{send_step}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_task_hands_a_task_to_the_local_model_with_progress_per_step() {
    let display = display(1280, 720);
    let _window = TestWindow::open(&display, "640x480+100+100", "run_task target");
    let setup = Setup::new(BALANCED);
    let tiny = deskhand::model::tiny::write_tiny_vlm(&setup.path("model")).expect("tiny VLM");
    let (model, mmproj) = (
        tiny.model.display().to_string(),
        tiny.mmproj.display().to_string(),
    );
    let args = ["--model", &model, "--mmproj", &mmproj, "--family", "gemma3"];
    let (transport, _) = TokioChildProcess::builder(setup.command(&display, &args))
        .stderr(setup.stderr_file())
        .spawn()
        .expect("start deskhand mcp");
    let watcher = TestClient::new(None);
    let progress = watcher.progress.clone();
    let client = watcher
        .serve(transport)
        .await
        .unwrap_or_else(|e| panic!("initialize: {e}; stderr:\n{}", setup.stderr()));
    let mut arguments = Map::new();
    arguments.insert("task".into(), json!("Click the red button."));
    arguments.insert("max_steps".into(), json!(2));
    let handle = client
        .send_cancellable_request(
            ClientRequest::CallToolRequest(CallToolRequest::new(
                CallToolRequestParams::new("run_task").with_arguments(arguments),
            )),
            PeerRequestOptions::no_options(),
        )
        .await
        .expect("call run_task");
    let response = tokio::time::timeout(Duration::from_secs(120), handle.await_response())
        .await
        .expect("run_task within 120 s")
        .expect("a response");
    let ServerResult::CallToolResult(result) = response else {
        panic!("not a tool result: {response:?}");
    };
    let result = serde_json::to_value(result).expect("JSON");
    let said = text_of(&result);
    // Two steps of random weights end at the step limit (exit 1) unless they said done or fail.
    assert!(said.contains("deskhand run ended with exit code"), "{said}");
    let trace = said
        .lines()
        .find_map(|l| l.strip_prefix("trace: "))
        .unwrap_or_else(|| panic!("no trace path in {said}"));
    let lines = read_jsonl(std::path::Path::new(trace));
    assert_eq!(
        lines.first().map(|l| l["task"].clone()),
        Some(json!("Click the red button."))
    );
    let steps = lines.iter().filter(|l| l["record"] == "step").count();
    // The notifications may trail the result by a moment.
    let started = Instant::now();
    let told = loop {
        let told = progress.lock().expect("progress").clone();
        if told.len() >= steps || started.elapsed() > Duration::from_secs(5) {
            break told;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(steps >= 1, "{lines:?}");
    assert_eq!(told.len(), steps, "{told:?}");
    for (i, (step, total, message)) in told.iter().enumerate() {
        assert_eq!(*step, (i + 1) as f64, "{told:?}");
        assert_eq!(*total, Some(2.0), "{told:?}");
        assert!(message.starts_with(&format!("step {}:", i + 1)), "{told:?}");
    }
    client.cancel().await.expect("close the session");
}

/// Starts `deskhand mcp --http 127.0.0.1:0` and returns it with its URL.
fn start_http(setup: &Setup, display: &VirtualDisplay) -> (tokio::process::Child, String) {
    let token_file = setup.path("token");
    let mut command = setup.command(
        display,
        &[
            "--http",
            "127.0.0.1:0",
            "--token-file",
            token_file.to_str().expect("path"),
        ],
    );
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(setup.stderr_file());
    let child = command.spawn().expect("start deskhand mcp --http");
    let started = Instant::now();
    loop {
        let said = setup.stderr();
        if let Some(url) = said
            .lines()
            .find_map(|l| l.split("serving MCP at ").nth(1))
            .and_then(|rest| rest.split(';').next())
        {
            return (child, url.to_owned());
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "deskhand mcp --http did not say where it serves; stderr:\n{said}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn http_client(url: &str, token: &str) -> Result<Client, String> {
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(url.to_owned()).auth_header(token.to_owned()),
    );
    TestClient::new(None)
        .serve(transport)
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_client_over_http_needs_the_token() {
    use std::os::unix::fs::PermissionsExt;
    let display = display(1920, 1080);
    let window = TestWindow::open(&display, "600x400+200+150", "MCP target");
    let setup = Setup::new(BALANCED);
    let (mut server, url) = start_http(&setup, &display);
    let token_file = setup.path("token");
    let mode = std::fs::metadata(&token_file)
        .expect("token file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let token = std::fs::read_to_string(&token_file).expect("token");
    let token = token.trim();

    // Without the token, or with a wrong one, nothing gets through.
    let wrong = http_client(&url, "not-the-token").await;
    assert!(wrong.is_err(), "a wrong token was let in");
    let bare = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            reqwest::blocking::Client::new()
                .post(&url)
                .header("Content-Type", "application/json")
                .header("Accept", "application/json, text/event-stream")
                .body(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"x","version":"1"}}}"#)
                .send()
                .map(|r| r.status().as_u16())
        }
    })
    .await
    .expect("join");
    assert_eq!(bare.ok(), Some(401));

    let client = http_client(&url, token)
        .await
        .unwrap_or_else(|e| panic!("initialize over HTTP: {e}; stderr:\n{}", setup.stderr()));
    drive(&client, &window).await;
    client.cancel().await.expect("close the session");
    check_trace(&setup.finished_trace());

    // SIGTERM stops the server as it stops a run: exit 130.
    let pid = server.id().expect("pid") as i32;
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let status = tokio::time::timeout(Duration::from_secs(20), server.wait())
        .await
        .expect("the server stops on SIGTERM")
        .expect("wait");
    assert_eq!(status.code(), Some(130), "stderr:\n{}", setup.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parking_the_pointer_in_a_corner_stops_the_server_and_ends_the_session() {
    let display = display(1920, 1080);
    let window = TestWindow::open(&display, "600x400+200+150", "MCP target");
    let setup = Setup::new(BALANCED);
    let (mut server, url) = start_http(&setup, &display);
    let token = std::fs::read_to_string(setup.path("token")).expect("token");
    let client = http_client(&url, token.trim())
        .await
        .unwrap_or_else(|e| panic!("initialize over HTTP: {e}; stderr:\n{}", setup.stderr()));
    let shot = call(&client, "screenshot", json!({}))
        .await
        .expect("screenshot");
    assert!(!is_error(&shot), "{shot}");
    let red = window.target("red");
    let (x, y) = in_screenshot(red.x, red.y);
    let clicked = call(&client, "click", json!({"x": x, "y": y}))
        .await
        .expect("click");
    assert!(!is_error(&clicked), "{clicked}");

    // The person takes the mouse and parks it in a corner, as with `deskhand run`.
    let parked = Instant::now();
    common::warp_pointer(&display, 1919, 1079);
    let status = tokio::time::timeout(Duration::from_secs(20), server.wait())
        .await
        .unwrap_or_else(|_| panic!("the server went on; stderr:\n{}", setup.stderr()))
        .expect("wait");
    eprintln!(
        "stopped {:?} after the pointer was parked",
        parked.elapsed()
    );
    assert_eq!(status.code(), Some(130), "stderr:\n{}", setup.stderr());
    assert!(setup.stderr().contains("failsafe"), "{}", setup.stderr());
    assert_eq!(common::held_by_server(&display), (vec![], 0));
    let trace = setup.finished_trace();
    let end = trace.last().expect("end");
    assert_eq!(end["status"], "aborted", "{end}");
    assert!(
        trace
            .iter()
            .any(|l| l["record"] == "step" && l["outcome"]["status"] == "executed"),
        "the click before it is in the record"
    );
    drop(client);
}

/// Waits for deskhand's ask dialog on `display` (mapped and focused, then past the 600 ms in
/// which it ignores input), and clicks its button for `key` as a person would, through
/// `deskhand act`, a separate process.
fn answer_the_dialog(display: &VirtualDisplay, key: char) {
    use x11rb::connection::Connection;
    use x11rb::protocol::xproto::{AtomEnum, ConnectionExt as _, MapState};
    let (conn, screen) = x11rb::connect(Some(display.name())).expect("connect to the display");
    let root = conn.setup().roots[screen].root;
    let buttons_atom = conn
        .intern_atom(false, b"_DESKHAND_BUTTONS")
        .expect("intern")
        .reply()
        .expect("atom")
        .atom;
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no ask dialog within 30 s"
        );
        let children = conn
            .query_tree(root)
            .expect("query_tree")
            .reply()
            .expect("tree")
            .children;
        for window in children {
            let class = conn
                .get_property(false, window, AtomEnum::WM_CLASS, AtomEnum::STRING, 0, 64)
                .expect("WM_CLASS")
                .reply()
                .map(|r| r.value)
                .unwrap_or_default();
            let viewable = conn
                .get_window_attributes(window)
                .expect("attributes")
                .reply()
                .is_ok_and(|a| a.map_state == MapState::VIEWABLE);
            let focused = conn
                .get_input_focus()
                .expect("focus")
                .reply()
                .is_ok_and(|f| f.focus == window);
            if !class.starts_with(b"deskhand-ask\0") || !viewable || !focused {
                continue;
            }
            std::thread::sleep(Duration::from_millis(800));
            let at = conn
                .translate_coordinates(window, root, 0, 0)
                .expect("translate")
                .reply()
                .expect("position");
            let listed = conn
                .get_property(false, window, buttons_atom, AtomEnum::STRING, 0, 256)
                .expect("buttons")
                .reply()
                .expect("buttons")
                .value;
            let listed = String::from_utf8(listed).expect("the buttons property is text");
            let (x, y) = listed
                .split(';')
                .find_map(|b| {
                    let (k, rect) = b.split_once(':')?;
                    let n: Vec<i32> = rect.split(',').filter_map(|v| v.parse().ok()).collect();
                    (k.starts_with(key) && n.len() == 4).then(|| {
                        (
                            i32::from(at.dst_x) + n[0] + n[2] / 2,
                            i32::from(at.dst_y) + n[1] + n[3] / 2,
                        )
                    })
                })
                .unwrap_or_else(|| panic!("no [{key}] button in {listed}"));
            common::act_ok(display, &format!(r#"{{"action":"click","x":{x},"y":{y}}}"#));
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_elicitation_has_its_asks_answered_in_deskhands_dialog() {
    let display = display(1920, 1080);
    let window = TestWindow::open(&display, "600x400+200+150", "MCP target");
    let setup = Setup::new(ASK_IN_TEST_WINDOW);
    // The dialog is allowed, as on a desktop; the client cannot elicit.
    let mut command = setup.command(&display, &[]);
    command.env_remove("DESKHAND_NO_DIALOG");
    let (transport, _) = TokioChildProcess::builder(command)
        .stderr(setup.stderr_file())
        .spawn()
        .expect("start deskhand mcp");
    let client = TestClient::new(None)
        .serve(transport)
        .await
        .unwrap_or_else(|e| panic!("initialize: {e}; stderr:\n{}", setup.stderr()));
    let red = window.target("red");
    let (x, y) = in_screenshot(red.x, red.y);
    // The person answers the one dialog; a second ask would leave the call waiting.
    let (clicked, ()) = tokio::join!(
        tokio::time::timeout(
            Duration::from_secs(60),
            call(&client, "click", json!({"x": x, "y": y}))
        ),
        async {
            tokio::task::block_in_place(|| answer_the_dialog(&display, 'o'));
        }
    );
    let clicked = clicked
        .unwrap_or_else(|_| panic!("the click still waits; stderr:\n{}", setup.stderr()))
        .expect("click");
    assert!(!is_error(&clicked), "{clicked}");
    window.wait_for("the click on red", Duration::from_secs(10), |e| {
        e["event"] == "button_press" && e["target"] == "red"
    });
    client.cancel().await.expect("close the session");
    let trace = setup.finished_trace();
    let step = trace
        .iter()
        .find(|l| l["record"] == "step" && l["action"]["action"] == "click")
        .expect("the click's step");
    assert_eq!(step["decision"]["rule"], "ask-testwin", "{step}");
    assert_eq!(step["answer"], "once", "{step}");
    assert_eq!(step["answered_by"], "person", "{step}");
    assert_eq!(step["outcome"]["status"], "executed", "{step}");
}
