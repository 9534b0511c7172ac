//! `deskhand mcp`: deskhand as a policy-gated computer for any MCP client (Claude Desktop,
//! Claude Code, goose, Cursor). The client sees through `screenshot` and acts through the
//! input tools; each input call is one step of a deskhand run with the client in the model's
//! place (`session`), so the policy, the floor, asks, budgets, the held-input guarantees, the
//! corner failsafe and the trace all apply as they do to `deskhand run`.
//!
//! The protocol is rmcp's, on tokio; the runtime stays in this module and the stages stay
//! synchronous on each session's own thread.

mod http;
mod server;
mod session;
mod tools;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use clap::Args;
use rmcp::ServiceExt;

use crate::agent::TerminalUser;
use crate::cli::run::{Loaded, load_policy, watch_corners};
use crate::cli::{Failure, bad_input};
use crate::input::{ABORT_EXIT_CODE, AbortSignal, Releaser, stop_on_signals};
use crate::policy::PolicyPaths;
use crate::screen::{Screen, X11Screen};

pub use server::DeskhandMcp;

#[derive(Debug, Args)]
pub struct McpArgs {
    /// Serve MCP over streamable HTTP at ADDR (host:port, port 0 picks one) instead of stdio.
    /// Only loopback addresses unless --listen; every request needs the bearer token.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    /// Let --http listen on an address other hosts can reach: whoever holds the token then
    /// drives this desktop, within the policy.
    #[arg(long, requires = "http")]
    pub listen: bool,
    /// The bearer token's file for --http (default ~/.config/deskhand/mcp-token). deskhand
    /// makes it, mode 0600, when it is missing, and refuses one others can read.
    #[arg(long, value_name = "FILE", requires = "http")]
    pub token_file: Option<PathBuf>,
    /// The policy file (default ~/.config/deskhand/policy.toml or $DESKHAND_POLICY).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// The monitor screenshots show by default (default: the primary one).
    #[arg(long, value_name = "N")]
    pub monitor: Option<usize>,
    /// Screenshots are at most this many pixels wide.
    #[arg(long, default_value_t = 1280, value_name = "PX",
          value_parser = clap::value_parser!(u32).range(64..))]
    pub max_width: u32,
    /// End a session after this many seconds.
    #[arg(long, default_value_t = 24 * 3600, value_name = "SECS")]
    pub timeout: u64,
    /// Do not stop when the pointer is parked in a screen corner.
    #[arg(long)]
    pub no_failsafe: bool,
    /// Without an MCP client that can ask its person (elicitation) and without a terminal,
    /// deny every ask instead of showing it in a window on the display (also set by
    /// DESKHAND_NO_DIALOG=1).
    #[arg(long, env = "DESKHAND_NO_DIALOG", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_dialog: bool,
    /// The model `run_task` uses: an installed model's name or a GGUF file (default: the
    /// first installed model).
    #[arg(long, value_name = "NAME|PATH")]
    pub model: Option<String>,
    /// The vision projector for a --model given as a path.
    #[arg(long, value_name = "PATH")]
    pub mmproj: Option<PathBuf>,
    /// The model family for a --model given as a path (guessed from the GGUF otherwise).
    #[arg(long, value_name = "FAMILY")]
    pub family: Option<crate::model::FamilyId>,
}

pub const MCP_EXAMPLES: &str = r#"Examples:
  deskhand mcp                                  # stdio, for Claude Desktop, Claude Code, goose
  deskhand mcp --http 127.0.0.1:8765            # streamable HTTP at http://127.0.0.1:8765/mcp
  deskhand mcp --policy ~/work-policy.toml --model ui-tars-1.5-7b

Tools: screenshot, click, double_click, move, drag, scroll, type, key, wait, active_window,
list_monitors, explain, run_task. Every input goes through the policy, as in `deskhand run`;
each session is recorded as a run under ~/.local/share/deskhand/runs/ (DESKHAND_RUNS_DIR).
Ctrl-C, SIGTERM or the pointer in a screen corner release every held input and stop the
server with exit code 130."#;

/// What every session of one server shares.
pub struct Shared {
    pub display: Option<String>,
    pub policy_paths: PolicyPaths,
    pub policy_label: String,
    pub unlocks: Vec<String>,
    pub monitor: Option<usize>,
    pub max_width: u32,
    pub timeout: Duration,
    pub failsafe: bool,
    /// Where asks go when the client cannot take them: a dialog on this display.
    dialog_display: Option<String>,
    /// stdio carries the protocol, so asks never read it.
    stdin_is_protocol: bool,
    pub abort: AbortSignal,
    /// One input call at a time, whichever session it comes from.
    pub input_turn: tokio::sync::Mutex<()>,
    releasers: Mutex<Vec<Releaser>>,
    session_threads: Mutex<Vec<JoinHandle<()>>>,
    /// `run_task`'s `deskhand run` arguments.
    pub run_task: RunTaskConfig,
}

/// How `run_task` starts `deskhand run`.
pub struct RunTaskConfig {
    pub program: PathBuf,
    pub model: Option<String>,
    pub mmproj: Option<PathBuf>,
    pub family: Option<crate::model::FamilyId>,
    pub policy: Option<PathBuf>,
}

impl Shared {
    pub fn add_releaser(&self, releaser: Releaser) {
        session::lock(&self.releasers).push(releaser);
    }

    pub fn add_session_thread(&self, handle: JoinHandle<()>) {
        session::lock(&self.session_threads).push(handle);
    }

    /// Releases every held key and button of every session; how many there were.
    fn release_all(&self) -> usize {
        session::lock(&self.releasers).iter().map(|r| r()).sum()
    }

    /// The terminal (or dialog) side of a session's asks.
    pub fn terminal_user(&self) -> TerminalUser {
        let user = TerminalUser::new()
            .with_abort(self.abort.clone())
            .with_dialog_on(self.dialog_display.clone());
        if self.stdin_is_protocol {
            user.without_terminal_input()
        } else {
            user
        }
    }

    /// Waits (up to `limit`) for every session's run to end its trace and write its report.
    fn finish_sessions(&self, limit: Duration) {
        let started = Instant::now();
        let threads: Vec<JoinHandle<()>> = session::lock(&self.session_threads).drain(..).collect();
        for thread in threads {
            while !thread.is_finished() && started.elapsed() < limit {
                std::thread::sleep(Duration::from_millis(20));
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else {
                eprintln!(
                    "deskhand mcp: a session did not end in time; its trace may lack its end"
                );
            }
        }
    }
}

pub fn run(args: &McpArgs, display: Option<&str>) -> Result<(), Failure> {
    // Policy first, as for a run: a broken one stops the server before any client connects.
    let Loaded {
        label,
        unlocks,
        paths,
        ..
    } = load_policy(args.policy.as_deref())?;
    let screen = X11Screen::connect(display)?;
    let monitors = screen.monitors()?;
    screen.monitor(args.monitor).map_err(bad_input)?;
    drop(screen);
    let display = display
        .map(str::to_owned)
        .or_else(|| std::env::var("DISPLAY").ok());
    let abort = AbortSignal::new();
    let shared = Arc::new(Shared {
        display: display.clone(),
        policy_paths: paths,
        policy_label: label,
        unlocks,
        monitor: args.monitor,
        max_width: args.max_width,
        timeout: Duration::from_secs(args.timeout),
        failsafe: !args.no_failsafe,
        dialog_display: if args.no_dialog {
            None
        } else {
            display.clone()
        },
        stdin_is_protocol: args.http.is_none(),
        abort: abort.clone(),
        input_turn: tokio::sync::Mutex::new(()),
        releasers: Mutex::new(Vec::new()),
        session_threads: Mutex::new(Vec::new()),
        run_task: RunTaskConfig {
            program: std::env::current_exe()
                .map_err(|e| anyhow!("cannot find deskhand's own program: {e}"))?,
            model: args.model.clone(),
            mmproj: args.mmproj.clone(),
            family: args.family,
            policy: args.policy.clone(),
        },
    });
    let release_shared = shared.clone();
    let releaser: Releaser = Arc::new(move || release_shared.release_all());
    // Ctrl-C, SIGTERM and the corner failsafe act from their own threads; the server notices
    // the abort, stops taking calls, and each session's run ends its trace.
    stop_on_signals(abort.clone(), releaser.clone())
        .map_err(|e| anyhow!("cannot install the SIGINT/SIGTERM handler: {e}"))?;
    if !args.no_failsafe {
        watch_corners(display.as_deref(), monitors, abort.clone(), releaser);
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| anyhow!("cannot start the async runtime: {e}"))?;
    let served = runtime.block_on(async {
        match &args.http {
            Some(addr) => {
                http::serve(shared.clone(), addr, args.listen, args.token_file.clone()).await
            }
            None => serve_stdio(shared.clone()).await,
        }
    });
    // Dropping the runtime drops every session's handler, so each session's loop sees its
    // client gone and ends its run.
    runtime.shutdown_timeout(Duration::from_secs(5));
    shared.finish_sessions(Duration::from_secs(20));
    served?;
    match abort.reason() {
        Some(reason) => Err(Failure {
            code: ABORT_EXIT_CODE as u8,
            error: anyhow!("stopped: {reason}"),
        }),
        None => Ok(()),
    }
}

/// Serves one client on stdin and stdout until it goes or deskhand is stopped.
async fn serve_stdio(shared: Arc<Shared>) -> Result<(), Failure> {
    let service = DeskhandMcp::new(shared.clone())
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| {
            anyhow!("the MCP client on stdin and stdout did not complete the handshake: {e}")
        })?;
    let cancel = service.cancellation_token();
    let abort = shared.abort.clone();
    tokio::spawn(async move {
        while abort.reason().is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        cancel.cancel();
    });
    service
        .waiting()
        .await
        .map_err(|e| anyhow!("the MCP service failed: {e}"))?;
    Ok(())
}
