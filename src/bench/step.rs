//! `deskhand bench step`: whole agent steps with the tiny generated VLM on a private 1920x1080
//! Xvfb, through the real loop (settle, capture, prompt, llama.cpp, policy, executor, trace).
//! Reports the median of every stage and deskhand's own overhead as a share of the step without
//! settling: everything but the model's prefill, decode and image encoding, once with the time
//! the executor spends pacing the action's input events and once without it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::Args;
use serde::Serialize;

use crate::agent::{self, Guards, ImageWindow, RunOptions, Stages, Unattended};
use crate::cli::Failure;
use crate::input::Selection;
use crate::input::{AbortSignal, EnigoDevice, Executor};
use crate::model::Backend;
use crate::model::family::FamilyId;
use crate::model::llama::{EngineConfig, LlamaEngine, Reuse};
use crate::model::remote::{Constraint, RemoteConfig, RemoteEngine};
use crate::model::tiny::{TINY_IMAGE_SIZE, write_tiny_vlm};
use crate::policy::{Checker, Layer, PolicyEngine};
use crate::screen::{
    ActiveWindow, Frame, FrameTarget, MonitorInfo, Screen, ScreenError, ScreenPoint, SettleOptions,
    VirtualDisplay, X11Screen,
};
use crate::trace::{Outcome, Recorder, TraceLine, TraceWriter, read_trace};

#[derive(Debug, Args)]
pub struct StepBenchArgs {
    /// Steps to measure (after the warm-up steps).
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Steps run first and not counted (default: 1 with the tiny VLM, 0 with --model).
    #[arg(long)]
    pub warmup: Option<usize>,
    /// A model GGUF instead of the tiny VLM, e.g. a pair from `deskhand bench synth`.
    #[arg(long, value_name = "PATH", requires = "mmproj")]
    pub model: Option<PathBuf>,
    /// Its vision projector.
    #[arg(long, value_name = "PATH", requires = "model")]
    pub mmproj: Option<PathBuf>,
    /// The model's family (default: from the model's metadata).
    #[arg(long)]
    pub family: Option<FamilyId>,
    /// Screenshots always in the prompt: the current one and N-1 earlier ones.
    #[arg(long, default_value_t = 3)]
    pub images: usize,
    /// Older screenshots leave K at a time (see `deskhand run --help`).
    #[arg(long, default_value_t = crate::cli::run::DEFAULT_EVICT_EVERY, value_name = "K")]
    pub evict_every: usize,
    /// Run the same steps again as deskhand did before the conversation, in the same run:
    /// exactly N screenshots, each encoded and everything after the system prompt and task
    /// evaluated again at every step; the summary compares the two.
    #[arg(long)]
    pub compare_full_recompute: bool,
    /// Image tokens per frame the frames are sized for (default 1200; the tiny VLM's frame
    /// is fixed).
    #[arg(long, value_name = "N")]
    pub image_tokens: Option<i64>,
    /// CPU threads (default: the physical cores).
    #[arg(long)]
    pub threads: Option<i32>,
    /// Then run the same number of steps on a model server at URL (an OpenAI-compatible API,
    /// e.g. llama-server at http://127.0.0.1:8080/v1) that serves the same --model and
    /// --mmproj, and compare it with the model in this process: the summary's `engine` gives
    /// the time each step spends building its request and on HTTP. The screenshots sent are
    /// of the bench's own empty display.
    #[arg(long, value_name = "URL", requires = "model")]
    pub engine: Option<String>,
    /// How --engine holds the model to the family's reply syntax (see `deskhand run --help`).
    #[arg(
        long,
        value_name = "HOW",
        default_value = "grammar",
        requires = "engine"
    )]
    pub engine_constraint: Constraint,
    /// Print one JSON object instead of text: a `steps` array and a `summary`.
    #[arg(long)]
    pub json: bool,
}

/// One measured step, for `--json` and the per-step table.
#[derive(Debug, Serialize)]
struct StepFigures {
    step: u32,
    image_encodes: usize,
    image_tokens: usize,
    prefill_tokens: usize,
    /// Tokens that were not in the previous step's prompt.
    new_tokens: usize,
    decode_tokens: usize,
    settle_ms: f64,
    image_encode_ms: f64,
    prefill_ms: f64,
    decode_ms: f64,
    policy_ms: f64,
    act_ms: f64,
    record_ms: f64,
    step_ms: f64,
    /// A model server: building the request (PNG, base64, JSON); 0 in this process.
    request_encode_ms: f64,
    /// A model server: the answer's wall time less the server's own prompt and decode
    /// times; 0 in this process.
    http_overhead_ms: f64,
    /// What became of the step ("refused by policy: ...", "model error: ...").
    outcome: String,
}

impl StepFigures {
    fn of(s: &crate::trace::StepRecord) -> StepFigures {
        let t = s
            .model
            .as_ref()
            .map(|m| m.timings.clone())
            .unwrap_or_default();
        StepFigures {
            step: s.step,
            image_encodes: t.image_encodes,
            image_tokens: t.image_tokens,
            prefill_tokens: t.prefill_tokens,
            new_tokens: t.new_tokens,
            decode_tokens: t.decode_tokens,
            settle_ms: s.timings.settle_ms,
            image_encode_ms: t.image_encode_ms,
            prefill_ms: t.prefill_ms,
            decode_ms: t.decode_ms,
            policy_ms: s.timings.policy_ms,
            act_ms: s.timings.act_ms,
            record_ms: s.timings.record_ms,
            step_ms: s.timings.total_ms,
            request_encode_ms: t.request_encode_ms,
            http_overhead_ms: t.http_overhead_ms,
            outcome: s.outcome.to_string(),
        }
    }
}

/// Medians in milliseconds.
#[derive(Debug, Serialize)]
struct StageMedians {
    settle: f64,
    observe: f64,
    prompt: f64,
    model: f64,
    model_prefill: f64,
    model_decode: f64,
    model_image_encode: f64,
    model_other: f64,
    policy: f64,
    act: f64,
    record: f64,
    total: f64,
    /// Everything but prefill, decode, image encoding, settling and the action's own input.
    overhead: f64,
    /// The same plus the executor's time (moves, presses and the pauses between them).
    overhead_with_act: f64,
}

#[derive(Debug, Serialize)]
struct StepBenchReport {
    model: String,
    threads: i32,
    images: usize,
    frame: String,
    /// This process's peak resident memory over the whole benchmark.
    peak_rss_mb: f64,
    steps: usize,
    executed: usize,
    refused: usize,
    screen: String,
    medians_ms: StageMedians,
    /// Median over steps of overhead / (total - settle).
    overhead_share: f64,
    overhead_with_act_share: f64,
    target_share: f64,
    /// The fixed sleep other agents take after every action.
    fixed_sleep_ms: f64,
    settle_vs_fixed_sleep: f64,
}

const BENCH_POLICY: &str = r#"schema_version = 1
preset = "permissive"

[budgets]
steps_per_task = 1000000
actions_per_minute = 1000000
identical_actions = 1000000
task_timeout_s = 86400

[[rule]]
id = "bench-whole-steps"
decision = "deny"
reason = "this benchmark measures whole steps: keep acting"
action = ["done", "fail", "call_user", "wait"]
"#;

const TARGET_SHARE: f64 = 0.05;
const FIXED_SLEEP_MS: f64 = 2000.0;

pub fn step(args: &StepBenchArgs) -> Result<(), Failure> {
    let display = VirtualDisplay::start(1920, 1080)?;
    let work = Scratch::new()?;
    let (mut config, model_name) = match (&args.model, &args.mmproj) {
        (Some(model), Some(mmproj)) => {
            let family = super::family_of(model, args.family)?;
            let name = model.file_name().map_or_else(
                || model.display().to_string(),
                |n| n.to_string_lossy().into(),
            );
            (EngineConfig::new(model, Some(mmproj.clone()), family), name)
        }
        _ => {
            let tiny = write_tiny_vlm(&work.join("model"))?;
            let mut config = EngineConfig::new(&tiny.model, Some(tiny.mmproj), FamilyId::Gemma3);
            config.frame_target = Some(FrameTarget::Fixed {
                width: TINY_IMAGE_SIZE,
                height: TINY_IMAGE_SIZE,
            });
            (config, "the tiny VLM".to_owned())
        }
    };
    config.threads = args.threads;
    if let Some(n) = args.image_tokens {
        config
            .set_image_token_budget(n, &model_name)
            .map_err(crate::cli::bad_input)?;
    }
    config.fit_context(args.images.max(1) + args.evict_every);
    let engine = LlamaEngine::load(config)?;
    let mut session = engine.session()?;
    let mut screen = X11Screen::connect(Some(display.name()))?;
    let monitors = screen.monitors()?;
    let monitor = screen.monitor(None)?;
    let abort = AbortSignal::new();
    let mut hands = Executor::new(
        EnigoDevice::connect(Some(display.name()))?,
        monitors.clone(),
        abort.clone(),
        true,
    );
    let mut screen = ChangingScreen {
        inner: &mut screen,
        display: display.name().to_owned(),
        paints: std::cell::Cell::new(0),
    };
    let policy_engine = PolicyEngine::from_sources(vec![(
        Layer::User,
        PathBuf::from("bench-policy.toml"),
        // Everything the floor allows runs, and no budget pauses the run: the benchmark is
        // about the time each stage takes, so the actions must really execute. A model with
        // random weights would end the run (done, fail, a question nobody answers) or idle
        // (wait) as readily as act; those are refused, so every step is a whole step and the
        // history grows as in a long task. The model reads the refusal like any other.
        BENCH_POLICY.into(),
    )])?;
    let mut policy = Checker::new(policy_engine, None);
    let warmup = args
        .warmup
        .unwrap_or(if args.model.is_some() { 0 } else { 1 });
    let options = RunOptions {
        task: "Click the red button.".into(),
        system_prompt: engine.family().system_prompt().to_owned(),
        window: ImageWindow {
            images: args.images.max(1),
            evict_every: args.evict_every,
        },
        dry_run: false,
        yes: false,
        frame_target: engine.frame_target(),
        settle: SettleOptions::default(),
        guards: Guards {
            max_steps: u32::try_from(args.steps.max(1) + warmup).unwrap_or(u32::MAX),
            repeats: u32::MAX,
            unchanged: u32::MAX,
            refusals: u32::MAX,
            model_errors: u32::MAX,
            // A real-size model's full re-evaluation takes minutes a step: the bench counts
            // steps, not time, so no run of it may end on the clock.
            timeout: Duration::from_secs(7 * 24 * 3600),
        },
        engine: model_name.clone(),
        policy: "permissive preset, no budgets".into(),
        unlocks: Vec::new(),
        client: None,
    };
    let mut rig = Rig {
        screen: &mut screen,
        monitor: monitor.clone(),
        monitors: monitors.clone(),
        hands: &mut hands,
        policy: &mut policy,
        abort: abort.clone(),
        runs: work.join("runs"),
    };
    let measured = rig.steps(&options, &mut session, warmup, args.steps.max(1))?;
    let baseline = if args.compare_full_recompute {
        eprintln!("the same steps again, evaluating everything after the task at every step");
        session.set_reuse(Reuse::PrefixOnly);
        session.forget_cache();
        let options = RunOptions {
            window: ImageWindow {
                images: args.images.max(1),
                evict_every: 0,
            },
            ..options.clone()
        };
        let steps = rig.steps(&options, &mut session, warmup, args.steps.max(1))?;
        session.set_reuse(Reuse::Conversation);
        Some(steps)
    } else {
        None
    };
    let on_server = match &args.engine {
        Some(url) => {
            crate::cli::run::engine_url(url)?;
            eprintln!("the same steps on {url}");
            let mut config = RemoteConfig::new(url, &model_name, engine.family().id());
            config.constraint = args.engine_constraint;
            // As in this process, steps are counted, not timed.
            config.timeout = Duration::from_secs(3600);
            let mut server = RemoteEngine::new(config)?;
            let options = RunOptions {
                engine: format!("{model_name} on {url}"),
                ..options.clone()
            };
            Some(rig.steps(&options, &mut server, warmup, args.steps.max(1))?)
        }
        None => None,
    };
    let median_of = |f: &dyn Fn(&crate::trace::StepRecord) -> f64| {
        let mut values: Vec<f64> = measured.iter().map(f).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let model_core = |s: &crate::trace::StepRecord| {
        s.model.as_ref().map_or(0.0, |m| {
            m.timings.prefill_ms + m.timings.decode_ms + m.timings.image_encode_ms
        })
    };
    let overhead_with_act =
        |s: &crate::trace::StepRecord| s.timings.total_ms - s.timings.settle_ms - model_core(s);
    let overhead = |s: &crate::trace::StepRecord| overhead_with_act(s) - s.timings.act_ms;
    let medians = StageMedians {
        settle: median_of(&|s| s.timings.settle_ms),
        observe: median_of(&|s| s.timings.observe_ms),
        prompt: median_of(&|s| s.timings.prompt_ms),
        model: median_of(&|s| s.timings.model_ms),
        model_prefill: median_of(&|s| s.model.as_ref().map_or(0.0, |m| m.timings.prefill_ms)),
        model_decode: median_of(&|s| s.model.as_ref().map_or(0.0, |m| m.timings.decode_ms)),
        model_image_encode: median_of(&|s| {
            s.model.as_ref().map_or(0.0, |m| m.timings.image_encode_ms)
        }),
        model_other: median_of(&|s| s.timings.model_ms - model_core(s)),
        policy: median_of(&|s| s.timings.policy_ms),
        act: median_of(&|s| s.timings.act_ms),
        record: median_of(&|s| s.timings.record_ms),
        total: median_of(&|s| s.timings.total_ms),
        overhead: median_of(&overhead),
        overhead_with_act: median_of(&overhead_with_act),
    };
    let share = |part: &dyn Fn(&crate::trace::StepRecord) -> f64| {
        median_of(&|s| {
            let work = s.timings.total_ms - s.timings.settle_ms;
            if work > 0.0 { part(s) / work } else { 0.0 }
        })
    };
    let overhead_share = share(&overhead);
    let overhead_with_act_share = share(&overhead_with_act);
    let count = |f: &dyn Fn(&Outcome) -> bool| measured.iter().filter(|s| f(&s.outcome)).count();
    let frame_target = engine.frame_target();
    let frame = frame_target
        .frame_size(monitor.width, monitor.height)
        .map_or_else(|_| "?".to_owned(), |(w, h)| format!("{w}x{h}"));
    let report = StepBenchReport {
        model: model_name.clone(),
        threads: engine.threads(),
        images: args.images.max(1),
        frame,
        peak_rss_mb: super::model::own_peak_rss_mb(),
        steps: measured.len(),
        executed: count(&|o| matches!(o, Outcome::Executed { .. })),
        refused: count(&|o| matches!(o, Outcome::Refused { .. })),
        screen: format!("{}x{} Xvfb", monitor.width, monitor.height),
        settle_vs_fixed_sleep: medians.settle / FIXED_SLEEP_MS,
        medians_ms: medians,
        overhead_share,
        overhead_with_act_share,
        target_share: TARGET_SHARE,
        fixed_sleep_ms: FIXED_SLEEP_MS,
    };
    let per_step: Vec<StepFigures> = measured.iter().map(StepFigures::of).collect();
    let conversation = ConversationFigures::of(&per_step, baseline.as_deref());
    let server_steps: Option<Vec<StepFigures>> = on_server
        .as_ref()
        .map(|steps| steps.iter().map(StepFigures::of).collect());
    let server = args
        .engine
        .as_deref()
        .zip(server_steps.as_deref())
        .map(|(url, steps)| EngineFigures::of(url, &per_step, steps));
    if args.json {
        let mut summary = serde_json::to_value(&report)?;
        if let (Some(map), serde_json::Value::Object(more)) = (
            summary.as_object_mut(),
            serde_json::to_value(&conversation)?,
        ) {
            map.extend(more);
            if let Some(server) = &server {
                map.insert("engine".into(), serde_json::to_value(server)?);
            }
        }
        let baseline: Option<Vec<StepFigures>> = baseline
            .as_ref()
            .map(|b| b.iter().map(StepFigures::of).collect());
        let out = serde_json::json!({
            "steps": per_step,
            "steps_full_recompute": baseline,
            "steps_engine": server_steps,
            "summary": summary,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{} on a {}, frames {} ({} image tokens each), {} images in the prompt, {} threads",
        report.model,
        report.screen,
        report.frame,
        per_step
            .first()
            .map_or(0, |s| s.image_tokens / s.image_encodes.max(1)),
        report.images,
        report.threads
    );
    print_table(&per_step);
    println!("peak RSS {:.0} MB", report.peak_rss_mb);
    conversation.print();
    if let (Some(server), Some(steps)) = (&server, &server_steps) {
        println!("the same steps on {}:", server.url);
        print_table(steps);
        server.print();
    }
    let m = &report.medians_ms;
    println!("{} steps, medians:", report.steps);
    println!(
        "  settle        {:>8.1} ms  (includes its captures and downscales)",
        m.settle
    );
    println!(
        "  observe       {:>8.1} ms  (active window, frame bookkeeping)",
        m.observe
    );
    println!("  prompt        {:>8.2} ms", m.prompt);
    println!(
        "  model         {:>8.1} ms  (prefill {:.1}, decode {:.1}, image encode {:.1}, other {:.1})",
        m.model, m.model_prefill, m.model_decode, m.model_image_encode, m.model_other
    );
    println!("  policy        {:>8.3} ms", m.policy);
    println!("  act           {:>8.1} ms", m.act);
    println!("  record        {:>8.2} ms", m.record);
    println!("  step total    {:>8.1} ms", m.total);
    println!(
        "  outcomes: {} executed, {} refused, {} other (waits, done, fail, errors)",
        report.executed,
        report.refused,
        report.steps - report.executed - report.refused
    );
    let verdict = |share: f64| {
        if share < TARGET_SHARE {
            "met"
        } else {
            "NOT met"
        }
    };
    println!(
        "deskhand overhead (all but prefill, decode, image encode, input and settling): median {:.2} ms, {:.1}% of the step without settling (target < {:.0}%): {}",
        m.overhead,
        report.overhead_share * 100.0,
        TARGET_SHARE * 100.0,
        verdict(report.overhead_share)
    );
    println!(
        "  counting the executor's input pacing as overhead too: median {:.1} ms, {:.1}%: {}",
        m.overhead_with_act,
        report.overhead_with_act_share * 100.0,
        verdict(report.overhead_with_act_share)
    );
    println!(
        "settling took a median {:.0} ms, against the fixed {:.0} ms sleep other agents take: {:.1}x shorter",
        m.settle,
        FIXED_SLEEP_MS,
        FIXED_SLEEP_MS / m.settle.max(0.001)
    );
    Ok(())
}

/// One line per step; a step the model never got to (an error) in words.
fn print_table(steps: &[StepFigures]) {
    println!(
        "step  encodes  prefill tok  new tok  settle ms  encode ms  prefill ms  decode ms (tok)  request+http ms  policy+act+record ms  step ms"
    );
    for s in steps {
        if s.image_encodes == 0 && s.prefill_tokens == 0 {
            println!("{:>4}  {} after {:.0} ms", s.step, s.outcome, s.step_ms);
            continue;
        }
        println!(
            "{:>4}  {:>7}  {:>11}  {:>7}  {:>9.0}  {:>9.0}  {:>10.0}  {:>9.0} ({:>3})  {:>15.1}  {:>20.1}  {:>7.0}",
            s.step,
            s.image_encodes,
            s.prefill_tokens,
            s.new_tokens,
            s.settle_ms,
            s.image_encode_ms,
            s.prefill_ms,
            s.decode_ms,
            s.decode_tokens,
            s.request_encode_ms + s.http_overhead_ms,
            s.policy_ms + s.act_ms + s.record_ms,
            s.step_ms
        );
    }
}

/// The same steps on a model server, against the model in this process on the same files.
#[derive(Debug, Serialize)]
struct EngineFigures {
    url: String,
    steps: usize,
    median_step_ms: f64,
    median_step_ms_in_process: f64,
    /// Building each request: the screenshots as PNG and base64, the JSON.
    median_request_encode_ms: f64,
    /// Each answer's wall time less the server's own prompt and decode times: HTTP, the
    /// server reading the request and decoding its PNGs, queueing.
    median_http_overhead_ms: f64,
    /// The two together, per step: what the server costs a step beyond the model's work.
    median_overhead_ms: f64,
    /// Median over steps of that overhead ÷ the step without settling.
    overhead_share: f64,
    /// Evaluating the prompt: the server's prompt time (its image encoding included), and
    /// this process's image encoding plus prefill.
    median_prompt_ms: f64,
    median_prompt_ms_in_process: f64,
    /// Tokens evaluated per step (the rest came from each side's cache).
    median_prefill_tokens: f64,
    median_prefill_tokens_in_process: f64,
    median_decode_ms_per_token: f64,
    median_decode_ms_per_token_in_process: f64,
}

impl EngineFigures {
    fn of(url: &str, in_process: &[StepFigures], server: &[StepFigures]) -> EngineFigures {
        let median = |steps: &[StepFigures], f: &dyn Fn(&StepFigures) -> f64| {
            let mut v: Vec<f64> = steps.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
        };
        let overhead = |s: &StepFigures| s.request_encode_ms + s.http_overhead_ms;
        let prompt = |s: &StepFigures| s.image_encode_ms + s.prefill_ms;
        let per_token = |s: &StepFigures| s.decode_ms / s.decode_tokens.max(1) as f64;
        EngineFigures {
            url: url.to_owned(),
            steps: server.len(),
            median_step_ms: median(server, &|s| s.step_ms),
            median_step_ms_in_process: median(in_process, &|s| s.step_ms),
            median_request_encode_ms: median(server, &|s| s.request_encode_ms),
            median_http_overhead_ms: median(server, &|s| s.http_overhead_ms),
            median_overhead_ms: median(server, &overhead),
            overhead_share: median(server, &|s| {
                let work = s.step_ms - s.settle_ms;
                if work > 0.0 { overhead(s) / work } else { 0.0 }
            }),
            median_prompt_ms: median(server, &prompt),
            median_prompt_ms_in_process: median(in_process, &prompt),
            median_prefill_tokens: median(server, &|s| s.prefill_tokens as f64),
            median_prefill_tokens_in_process: median(in_process, &|s| s.prefill_tokens as f64),
            median_decode_ms_per_token: median(server, &per_token),
            median_decode_ms_per_token_in_process: median(in_process, &per_token),
        }
    }

    fn print(&self) {
        println!(
            "on the server: median step {:.0} ms against {:.0} ms in this process",
            self.median_step_ms, self.median_step_ms_in_process
        );
        println!(
            "  per step: building the request {:.1} ms, HTTP and the server's handling outside its model {:.1} ms; together {:.1} ms, {:.2}% of the step without settling",
            self.median_request_encode_ms,
            self.median_http_overhead_ms,
            self.median_overhead_ms,
            self.overhead_share * 100.0
        );
        println!(
            "  prompt {:.0} ms ({:.0} tokens evaluated) against {:.0} ms ({:.0}); decoding {:.1} ms a token against {:.1}",
            self.median_prompt_ms,
            self.median_prefill_tokens,
            self.median_prompt_ms_in_process,
            self.median_prefill_tokens_in_process,
            self.median_decode_ms_per_token,
            self.median_decode_ms_per_token_in_process
        );
    }
}

/// What the conversation's cache saves, over the measured steps.
#[derive(Debug, Serialize)]
struct ConversationFigures {
    /// Prefill tokens ÷ new tokens over all the steps: 1 when a step evaluates only what its
    /// prompt adds.
    amortized_prefill_ratio: f64,
    /// The most screenshots encoded in one step (1: each once).
    image_encodes_max: usize,
    median_step_ms: f64,
    median_step_ms_full_recompute: Option<f64>,
    speedup_vs_full_recompute: Option<f64>,
    /// The share of the median step spent decoding the reply.
    decode_share: f64,
    /// Evaluating the prompt (image encoding and prefill), the part of a step the cache
    /// changes: a model with random weights writes replies of other lengths when its prompt
    /// differs, so the two runs' step times also differ by their decoding.
    median_prompt_ms: f64,
    median_prompt_ms_full_recompute: Option<f64>,
    prompt_speedup_vs_full_recompute: Option<f64>,
    median_decode_tokens: f64,
    median_decode_tokens_full_recompute: Option<f64>,
}

impl ConversationFigures {
    fn of(steps: &[StepFigures], baseline: Option<&[crate::trace::StepRecord]>) -> Self {
        let prefill: usize = steps.iter().map(|s| s.prefill_tokens).sum();
        let new: usize = steps.iter().map(|s| s.new_tokens).sum();
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
        };
        let median_step_ms = median(steps.iter().map(|s| s.step_ms).collect());
        let baseline: Option<Vec<StepFigures>> =
            baseline.map(|b| b.iter().map(StepFigures::of).collect());
        let of_baseline = |f: &dyn Fn(&StepFigures) -> f64| {
            baseline.as_ref().map(|b| median(b.iter().map(f).collect()))
        };
        let median_step_ms_full_recompute = of_baseline(&|s| s.step_ms);
        let prompt_ms = |s: &StepFigures| s.image_encode_ms + s.prefill_ms;
        let median_prompt_ms = median(steps.iter().map(prompt_ms).collect());
        let median_prompt_ms_full_recompute = of_baseline(&prompt_ms);
        ConversationFigures {
            amortized_prefill_ratio: prefill as f64 / new.max(1) as f64,
            image_encodes_max: steps.iter().map(|s| s.image_encodes).max().unwrap_or(0),
            median_step_ms,
            median_step_ms_full_recompute,
            speedup_vs_full_recompute: median_step_ms_full_recompute.map(|b| b / median_step_ms),
            decode_share: median(
                steps
                    .iter()
                    .map(|s| s.decode_ms / s.step_ms.max(f64::MIN_POSITIVE))
                    .collect(),
            ),
            median_prompt_ms,
            median_prompt_ms_full_recompute,
            prompt_speedup_vs_full_recompute: median_prompt_ms_full_recompute
                .map(|b| b / median_prompt_ms),
            median_decode_tokens: median(steps.iter().map(|s| s.decode_tokens as f64).collect()),
            median_decode_tokens_full_recompute: of_baseline(&|s| s.decode_tokens as f64),
        }
    }

    fn print(&self) {
        println!(
            "conversation cache: prefill tokens / new tokens {:.2} over the steps, at most {} image encode(s) in a step, decoding {:.0}% of the median step",
            self.amortized_prefill_ratio,
            self.image_encodes_max,
            self.decode_share * 100.0
        );
        if let (Some(full), Some(speedup)) = (
            self.median_step_ms_full_recompute,
            self.speedup_vs_full_recompute,
        ) {
            println!(
                "median step {:.0} ms, against {full:.0} ms evaluating everything after the task each step: {speedup:.2}x faster",
                self.median_step_ms
            );
        }
        if let (Some(full), Some(speedup), Some(tokens)) = (
            self.median_prompt_ms_full_recompute,
            self.prompt_speedup_vs_full_recompute,
            self.median_decode_tokens_full_recompute,
        ) {
            println!(
                "median prompt evaluation {:.0} ms against {full:.0} ms: {speedup:.2}x faster (replies: median {:.0} tokens against {tokens:.0})",
                self.median_prompt_ms, self.median_decode_tokens
            );
        }
    }
}

/// The bench's desktop changes at every step, as a desktop with work going on does: each time
/// the loop reads the active window (once a step, after the screenshot, and again before an
/// action runs), the root window takes the next colour of a cycle. On an empty display that
/// never changes, every screenshot would be the same pixels, which the engine encodes once for
/// the whole run, and the steps would measure no image encoding at all.
struct ChangingScreen<'s> {
    inner: &'s mut dyn Screen,
    display: String,
    paints: std::cell::Cell<u32>,
}

impl ChangingScreen<'_> {
    fn repaint(&self) {
        let n = self.paints.get().wrapping_add(1);
        self.paints.set(n);
        let colour = format!("#{:06x}", n.wrapping_mul(0x9E37_79B1) & 0xFF_FFFF);
        let painted = std::process::Command::new("xsetroot")
            .args(["-display", &self.display, "-solid", &colour])
            .status();
        if !matches!(&painted, Ok(status) if status.success()) {
            tracing::warn!(
                "xsetroot (Debian's x11-xserver-utils) could not repaint the bench's display \
                 ({painted:?}): its screenshots stay the same from step to step"
            );
        }
    }
}

impl Screen for ChangingScreen<'_> {
    fn monitors(&self) -> Result<Vec<MonitorInfo>, ScreenError> {
        self.inner.monitors()
    }

    fn capture(
        &mut self,
        monitor: &MonitorInfo,
        target: FrameTarget,
    ) -> Result<Frame, ScreenError> {
        self.inner.capture(monitor, target)
    }

    fn active_window(&self) -> Result<Option<ActiveWindow>, ScreenError> {
        let active = self.inner.active_window();
        self.repaint();
        active
    }

    fn window_at(&self, point: ScreenPoint) -> Result<Option<ActiveWindow>, ScreenError> {
        self.inner.window_at(point)
    }

    fn selection_text(&self, selection: Selection) -> Result<Option<String>, ScreenError> {
        self.inner.selection_text(selection)
    }
}

/// What the benchmark runs steps with.
struct Rig<'a> {
    screen: &'a mut dyn Screen,
    monitor: crate::screen::MonitorInfo,
    monitors: Vec<crate::screen::MonitorInfo>,
    hands: &'a mut dyn crate::input::Hands,
    policy: &'a mut dyn crate::policy::Policy,
    abort: AbortSignal,
    runs: PathBuf,
}

impl Rig<'_> {
    /// `warmup` uncounted steps, then `count` measured ones. A random model may say done
    /// early: runs start again until enough steps are recorded.
    fn steps(
        &mut self,
        options: &RunOptions,
        backend: &mut dyn Backend,
        warmup: usize,
        count: usize,
    ) -> Result<Vec<crate::trace::StepRecord>, Failure> {
        let wanted = warmup + count;
        let mut steps = Vec::new();
        for _ in 0..50 {
            if steps.len() >= wanted {
                break;
            }
            let mut recorder = TraceWriter::create(&self.runs)?;
            let dir = recorder
                .dir()
                .map(|d| d.to_path_buf())
                .ok_or_else(|| anyhow!("the trace writer has no folder"))?;
            eprintln!("running steps {}..{wanted}", steps.len() + 1);
            // A run that ended early is followed by one for the steps still missing, no more.
            let mut options = options.clone();
            options.guards.max_steps =
                u32::try_from(wanted - steps.len()).unwrap_or(options.guards.max_steps);
            agent::run(
                &options,
                Stages {
                    screen: &mut *self.screen,
                    monitor: self.monitor.clone(),
                    monitors: self.monitors.clone(),
                    backend: &mut *backend,
                    policy: &mut *self.policy,
                    hands: &mut *self.hands,
                    recorder: &mut recorder,
                    user: &mut Unattended,
                    abort: self.abort.clone(),
                },
            );
            drop(recorder);
            let (lines, _) = read_trace(&dir.join("trace.jsonl"))?;
            steps.extend(lines.into_iter().filter_map(|l| match l {
                TraceLine::Step(s) => Some(*s),
                _ => None,
            }));
        }
        // The first steps load caches and warm the projector; they are not typical steps.
        let measured: Vec<_> = steps.into_iter().skip(warmup).take(count).collect();
        if measured.is_empty() {
            return Err(anyhow!("no steps were recorded").into());
        }
        Ok(measured)
    }
}

/// A scratch folder for the tiny model and the traces, removed when the bench ends.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Scratch, Failure> {
        let dir = std::env::temp_dir().join(format!("deskhand-bench-step-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Scratch(dir))
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
