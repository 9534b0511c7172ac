//! The `deskhand` command line. Each command is a thin shell over the stage modules.

pub mod models;
pub mod policy;
pub mod run;
pub mod trace;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use clap::{Args, Parser, Subcommand};

use crate::bench;
use crate::input::{
    ABORT_EXIT_CODE, AbortSignal, Action, EnigoDevice, Executor, Hands, InputError, exit_on_signals,
};
use crate::screen::{FrameTarget, Screen, X11Screen};
use crate::trace::printable;

/// Exit status for bad input: unparsable actions, bad options, impossible targets.
pub const BAD_INPUT_EXIT_CODE: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "deskhand",
    version,
    about = "A local desktop agent: a vision-language model on your own machine operates the desktop, under a policy you write.",
    long_about = None,
)]
pub struct Cli {
    /// X display to use (default: $DISPLAY).
    #[arg(long, global = true, value_name = "NAME")]
    pub display: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List monitors with their origin, size and scale factor.
    Monitors {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show the active window: app name, title and process id.
    Window {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Capture a monitor to a PNG file, sized as a model would see it.
    Screenshot(ScreenshotArgs),
    /// Run one action, given as JSON in screen pixels, and print what it did.
    #[command(after_help = ACT_EXAMPLES)]
    Act(ActArgs),
    /// Download, add, list and verify vision models.
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// Do a task: see, think, check and act until it is done, recording every step.
    #[command(after_help = run::RUN_EXAMPLES)]
    Run(run::RunArgs),
    /// Serve MCP (stdio, or streamable HTTP with --http): any MCP client drives the desktop
    /// through deskhand's policy, each session recorded as a run.
    #[command(after_help = crate::mcp::MCP_EXAMPLES)]
    Mcp(crate::mcp::McpArgs),
    /// List, show and re-render recorded runs.
    #[command(subcommand)]
    Trace(trace::TraceCommand),
    /// Write, check and explain the policy that decides every action; manage grants.
    Policy(policy::PolicyArgs),
    /// Measure deskhand against baselines.
    #[command(subcommand)]
    Bench(BenchCommand),
}

const ACT_EXAMPLES: &str = r#"Examples:
  deskhand act '{"action":"click","x":100,"y":200}'
  deskhand act '{"action":"click","x":100,"y":200,"button":"right"}'
  deskhand act '{"action":"type","text":"héllo"}'
  deskhand act '{"action":"key","chord":"ctrl+shift+t"}'
  deskhand act '{"action":"scroll","x":640,"y":400,"dx":0,"dy":-3}'
  deskhand act '{"action":"drag","path":[[10,10],[200,200]]}'

Actions: click, double_click, triple_click, move, drag, scroll, type, key, hold_key, wait,
done, fail, call_user. Ctrl-C or SIGTERM releases every held key and button and exits 130;
so does parking the pointer in a screen corner (the failsafe)."#;

#[derive(Debug, Args)]
pub struct ScreenshotArgs {
    /// Where to write the PNG (default: deskhand-screenshot-<unix ms>.png here).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Monitor index from `deskhand monitors` (default: the primary monitor).
    #[arg(long, value_name = "N")]
    pub monitor: Option<usize>,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Print a JSON description of the frame and its mapping to the screen.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TargetArgs {
    /// Shrink to at most this many pixels, each side a multiple of --align.
    #[arg(long, value_name = "P", conflicts_with_all = ["width", "height"])]
    pub max_pixels: Option<u64>,
    /// Side alignment for --max-pixels (28 for Qwen2.5-VL and UI-TARS, 32 for Qwen3-VL).
    #[arg(long, value_name = "N", requires = "max_pixels", default_value_t = 28)]
    pub align: u32,
    /// Exact frame width (needs --height).
    #[arg(long, value_name = "W", requires = "height")]
    pub width: Option<u32>,
    /// Exact frame height (needs --width).
    #[arg(long, value_name = "H", requires = "width")]
    pub height: Option<u32>,
}

impl TargetArgs {
    pub fn target(&self) -> FrameTarget {
        match (self.max_pixels, self.width, self.height) {
            (Some(max_pixels), _, _) => FrameTarget::MaxPixels {
                max_pixels,
                align: self.align,
            },
            (None, Some(width), Some(height)) => FrameTarget::Fixed { width, height },
            _ => FrameTarget::Original,
        }
    }
}

#[derive(Debug, Args)]
pub struct ActArgs {
    /// The action as JSON, e.g. '{"action":"click","x":100,"y":200}'.
    #[arg(value_name = "ACTION_JSON")]
    pub action: String,
    /// Do not abort when the pointer is parked in a screen corner.
    #[arg(long)]
    pub no_failsafe: bool,
    /// Print a JSON description of what was done.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Capture + downscale latency on a 1920x1080 screen, against ImageMagick's `import`.
    Capture(bench::CaptureBenchArgs),
    /// Prefill, decode, image encode and step latency of a model, against llama-bench.
    Model(bench::ModelBenchArgs),
    /// Decision latency of a 200-rule policy, against a policy with no rules.
    Policy(bench::PolicyBenchArgs),
    /// Whole agent steps on a 1920x1080 Xvfb (the tiny VLM, or --model): every stage, and
    /// deskhand's own overhead.
    Step(bench::StepBenchArgs),
    /// Make (or find in the cache) a random-weight model with a real model's shape, for
    /// real-size measurements; prints the model and projector paths.
    Synth(bench::SynthArgs),
}

/// An error with the exit status it should end the process with.
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(error: E) -> Self {
        Failure {
            code: 1,
            error: error.into(),
        }
    }
}

pub(crate) fn bad_input(error: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: BAD_INPUT_EXIT_CODE,
        error: error.into(),
    }
}

pub fn main() -> ExitCode {
    // Rust ignores SIGPIPE, which turns `deskhand trace show last | head` into a panic on the
    // next print. Like other Unix tools, end quietly when the reader goes away instead.
    // SAFETY: restoring a signal's default disposition before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DESKHAND_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,enigo=error")),
        )
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { code, error }) => {
            eprintln!("deskhand: {error:#}");
            ExitCode::from(code)
        }
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    let display = cli.display.as_deref();
    match cli.command {
        Command::Monitors { json } => monitors(display, json),
        Command::Window { json } => window(display, json),
        Command::Screenshot(args) => screenshot(display, &args),
        Command::Act(args) => act(display, &args),
        Command::Models(cmd) => models::run(&cmd),
        Command::Policy(args) => policy::run(&args, display),
        Command::Run(args) => run::run(&args, display),
        Command::Mcp(args) => crate::mcp::run(&args, display),
        Command::Trace(cmd) => trace::run(&cmd),
        Command::Bench(BenchCommand::Capture(args)) => bench::capture(display, &args),
        Command::Bench(BenchCommand::Model(args)) => bench::model(&args),
        Command::Bench(BenchCommand::Policy(args)) => bench::policy(&args),
        Command::Bench(BenchCommand::Step(args)) => bench::step(&args),
        Command::Bench(BenchCommand::Synth(args)) => bench::synth(&args),
    }
}

fn print_json(value: &impl serde::Serialize) -> Result<(), Failure> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn monitors(display: Option<&str>, json: bool) -> Result<(), Failure> {
    let screen = X11Screen::connect(display)?;
    let monitors = screen.monitors()?;
    if json {
        return print_json(&monitors);
    }
    println!(
        "{:>3}  {:<12} {:>13}  {:>11}  {:>5}",
        "#", "name", "origin", "size", "scale"
    );
    for m in &monitors {
        println!(
            "{:>3}  {:<12} {:>13}  {:>11}  {:>5.2}{}",
            m.index,
            m.name,
            format!("{},{}", m.x, m.y),
            format!("{}x{}", m.width, m.height),
            m.scale_factor,
            if m.primary { "  primary" } else { "" }
        );
    }
    Ok(())
}

fn window(display: Option<&str>, json: bool) -> Result<(), Failure> {
    let screen = X11Screen::connect(display)?;
    let active = screen.active_window()?;
    if json {
        return print_json(&active);
    }
    match active {
        Some(w) => {
            // A window names itself: its title and class are the screen's text, not ours.
            println!("app:    {}", printable(&w.app_name));
            println!("title:  {}", printable(&w.title));
            println!(
                "pid:    {}",
                w.pid.map_or_else(|| "unknown".into(), |p| p.to_string())
            );
            println!(
                "class:  {}",
                w.wm_class
                    .as_deref()
                    .map_or_else(|| "none".into(), printable)
            );
            println!("window: 0x{:x}", w.window_id);
        }
        None => println!("no window has the focus"),
    }
    Ok(())
}

fn screenshot(display: Option<&str>, args: &ScreenshotArgs) -> Result<(), Failure> {
    let target = args.target.target();
    let mut screen = X11Screen::connect(display)?;
    let monitor = screen.monitor(args.monitor).map_err(bad_input)?;
    let capture = screen.capture(&monitor, target);
    let frame = match capture {
        Err(crate::screen::ScreenError::Frame(e)) => return Err(bad_input(e)),
        other => other?,
    };
    let path = args.output.clone().unwrap_or_else(|| {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        PathBuf::from(format!("deskhand-screenshot-{ms}.png"))
    });
    write_png_atomically(&frame.image, &path)?;
    if args.json {
        return print_json(&serde_json::json!({ "file": path, "map": frame.map }));
    }
    println!(
        "wrote {}: {}x{} frame of monitor {} '{}' ({}x{} at {},{}, scale {:.2})",
        path.display(),
        frame.map.frame_width,
        frame.map.frame_height,
        monitor.index,
        monitor.name,
        monitor.width,
        monitor.height,
        monitor.x,
        monitor.y,
        monitor.scale_factor
    );
    Ok(())
}

/// Written atomically, so a crash never leaves a half-written PNG under the requested name.
fn write_png_atomically(image: &image::RgbImage, path: &Path) -> Result<(), Failure> {
    crate::files::write_atomically(path, |file| {
        image
            .write_to(&mut std::io::BufWriter::new(file), image::ImageFormat::Png)
            .map_err(std::io::Error::other)
    })
    .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn act(display: Option<&str>, args: &ActArgs) -> Result<(), Failure> {
    let action = Action::from_json(&args.action).map_err(|e| {
        bad_input(anyhow!(
            "{e}\n  got: {}\n  example: {{\"action\":\"click\",\"x\":100,\"y\":200}} (see `deskhand act --help`)",
            args.action
        ))
    })?;
    if action.is_terminal() {
        // Nothing to execute: these end a task or hand it to the user.
        println!("{action}");
        return Ok(());
    }
    let screen = X11Screen::connect(display)?;
    let monitors = screen.monitors()?;
    drop(screen);
    let device = EnigoDevice::connect(display).map_err(|e| anyhow!("{e}"))?;
    let abort = AbortSignal::new();
    let mut executor = Executor::new(device, monitors.clone(), abort.clone(), !args.no_failsafe);
    exit_on_signals(abort, executor.releaser())
        .context("cannot install the SIGINT/SIGTERM handler")?;
    let performed = match executor.perform(&action) {
        Ok(p) => p,
        Err(
            e @ (InputError::Action(_)
            | InputError::OffScreen { .. }
            | InputError::CornerTarget { .. }
            | InputError::OwnWindow { .. }),
        ) => {
            return Err(bad_input(e));
        }
        Err(e @ InputError::Aborted(_)) => {
            return Err(Failure {
                code: ABORT_EXIT_CODE as u8,
                error: e.into(),
            });
        }
        Err(e) => return Err(e.into()),
    };
    if args.json {
        return print_json(&performed);
    }
    let on = performed
        .monitor
        .and_then(|i| monitors.get(i))
        .map(|m| format!(" on monitor {} '{}'", m.index, m.name))
        .unwrap_or_default();
    println!(
        "{}{on} ({} events, {:.1} ms)",
        performed.action, performed.events, performed.elapsed_ms
    );
    Ok(())
}
