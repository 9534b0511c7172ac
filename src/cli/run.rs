//! `deskhand run "TASK"`: the main job. Wires the real stages together and hands them to the
//! loop in `crate::agent`. Opens no network sockets unless `--engine` names a model server:
//! models come from disk.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::anyhow;
use clap::Args;

use crate::agent::{
    self, Guards, ImageWindow, LOCKED_EXIT_CODE, RunOptions, ScriptBackend, Stages, TerminalUser,
};
use crate::cli::{Failure, bad_input};
use crate::input::{
    AbortReason, AbortSignal, EnigoDevice, Executor, Hands, Releaser, in_corner_zone,
    stop_on_signals,
};
use crate::model::Backend;
use crate::model::compat::{check_pair, guess_family};
use crate::model::family::FamilyId;
use crate::model::llama::{EngineConfig, LlamaEngine};
use crate::model::remote::{Constraint, RemoteConfig, RemoteEngine};
use crate::model::store::{Catalog, InstalledModel, Source, Store, StoreConfig};
use crate::policy::{
    Checker, GrantStore, PolicyEngine, PolicyPaths, SEEN_FILE, changed_since_last_run,
};
use crate::screen::{FrameTarget, Screen, SettleOptions, X11Screen};
use crate::trace::{TraceWriter, runs_dir};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// What to do, in plain words.
    pub task: String,
    /// An installed model's name (`deskhand models list`) or a GGUF file (with --mmproj).
    #[arg(long, value_name = "NAME|PATH")]
    pub model: Option<String>,
    /// The vision projector for a --model given as a path.
    #[arg(long, value_name = "PATH")]
    pub mmproj: Option<PathBuf>,
    /// The model family for a --model given as a path (guessed from the GGUF otherwise).
    #[arg(long, value_name = "FAMILY")]
    pub family: Option<FamilyId>,
    /// Take actions from a JSONL file of actions instead of a model (replays, tests).
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = ["model", "mmproj", "family", "image_tokens", "engine"]
    )]
    pub script: Option<PathBuf>,
    /// Think on a model server instead of in this process: an OpenAI-compatible API
    /// (llama-server, vLLM, LM Studio) at URL, e.g. http://127.0.0.1:8080/v1. --model names the
    /// model on the server and --family its family. Screenshots go to that server: only
    /// loopback unless a policy file lists the host in [engine] allowed_hosts.
    #[arg(long, value_name = "URL", conflicts_with = "mmproj", requires_all = ["model", "family"])]
    pub engine: Option<String>,
    /// How --engine holds the model to the family's reply syntax: `grammar` (llama-server's
    /// GBNF field), `vllm` (vLLM's structured outputs) or `none`.
    #[arg(
        long,
        value_name = "HOW",
        default_value = "grammar",
        requires = "engine"
    )]
    pub engine_constraint: Constraint,
    /// The server's model has no vision (llama-server started without --mmproj): send the
    /// conversation without screenshots, as a local model without a projector runs.
    #[arg(long, requires = "engine")]
    pub engine_text_only: bool,
    /// Seconds --engine may take for one answer before the step fails.
    #[arg(long, value_name = "SECS", default_value_t = 300, requires = "engine")]
    pub engine_timeout: u64,
    /// Image tokens per frame: more shows the model finer detail and costs more time.
    /// Default: the most the model takes (from the catalog), or 1200 for a --model given as
    /// a path. Must lie in the catalog model's range.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub image_tokens: Option<i64>,
    /// The policy file (default ~/.config/deskhand/policy.toml or $DESKHAND_POLICY).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Stop after this many steps.
    #[arg(long, default_value_t = 30, value_name = "N")]
    pub max_steps: u32,
    /// Screenshots the model always sees: the current one and the N-1 before it.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub images: usize,
    /// Older screenshots leave the conversation K at a time: it grows to N+K screenshots, then
    /// the oldest K leave together. Each leaving re-evaluates everything after the first one
    /// that left, so a larger K pays that rarely, for a longer prompt (0: every step).
    #[arg(long, default_value_t = DEFAULT_EVICT_EVERY, value_name = "K")]
    pub evict_every: usize,
    /// Lay the conversation out with the family's built-in layout even where the model file
    /// carries its own chat template (by default the file's template is used when it renders
    /// the conversation faithfully).
    #[arg(long)]
    pub builtin_layout: bool,
    /// The monitor to work on (default: the primary one); see `deskhand monitors`.
    #[arg(long, value_name = "N")]
    pub monitor: Option<usize>,
    /// Decide every action but execute none.
    #[arg(long)]
    pub dry_run: bool,
    /// Answer the policy's asks with "once", except the floor's and the budgets' (those still
    /// ask you).
    #[arg(long)]
    pub yes: bool,
    /// Without a terminal, deny every ask instead of showing it in a window on the display
    /// (also set by DESKHAND_NO_DIALOG=1).
    #[arg(long, env = "DESKHAND_NO_DIALOG", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_dialog: bool,
    /// End the run when the model proposes the same action this many times in a row
    /// (waits excepted). Raise it for tasks that scroll a long page step by step.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub max_repeats: u32,
    /// End the run when this many executed actions in a row left the screen unchanged.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub max_unchanged: u32,
    /// Stop the run after this many seconds.
    #[arg(long, default_value_t = 1800, value_name = "SECS")]
    pub timeout: u64,
    /// Do not abort when the pointer is parked in a screen corner.
    #[arg(long)]
    pub no_failsafe: bool,
}

pub const RUN_EXAMPLES: &str = r#"Examples:
  deskhand run "open the calculator and compute 7 times 6"
  deskhand run "rename the file on the desktop to notes.txt" --dry-run
  deskhand run "fill in the form" --script steps.jsonl --policy ./policy.toml

Exit codes: 0 done; 1 failed or stopped by a guard; 2 bad input (no model, bad script);
3 the policy is broken (deskhand is locked); 130 aborted (Ctrl-C, SIGTERM, pointer in a
screen corner). Each run is recorded under ~/.local/share/deskhand/runs/ (DESKHAND_RUNS_DIR):
trace.jsonl, the frames and report.html."#;

/// A catalog model worth suggesting to someone with none installed.
const RECOMMENDED_MODEL: &str = "ui-tars-1.5-7b";

pub fn run(args: &RunArgs, display: Option<&str>) -> Result<(), Failure> {
    if args.images == 0 {
        return Err(bad_input(anyhow!("--images must be at least 1")));
    }
    // Policy first: a broken one stops everything before a model is loaded.
    let Loaded {
        mut checker,
        label: policy_label,
        unlocks,
        ..
    } = load_policy(args.policy.as_deref())?;
    let abort = AbortSignal::new();

    // The engine: a script, a model server, or a model from disk.
    let loaded;
    let mut session;
    let mut script;
    let mut remote;
    let (backend, system_prompt, frame_target, engine_label): (
        &mut dyn Backend,
        String,
        FrameTarget,
        String,
    ) = match (&args.script, &args.engine) {
        (None, Some(url)) => {
            let (engine, label) = remote_engine(args, url, checker.policy())?;
            remote = engine;
            let family = remote.family();
            let budget = args.image_tokens.map_or(Ok(1200), |n| {
                u32::try_from(n)
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| bad_input(anyhow!("--image-tokens {n}: give a positive number")))
            })?;
            (
                &mut remote,
                family.system_prompt().to_owned(),
                family.frame_target(budget),
                label,
            )
        }
        (Some(path), _) => {
            script = ScriptBackend::load(path).map_err(|e| bad_input(anyhow!(e)))?;
            (
                &mut script,
                String::new(),
                // A script reads no pixels; the frames are for the record only.
                FrameTarget::Original,
                format!("script {}", path.display()),
            )
        }
        (None, None) => {
            let (config, label) = engine_config(args)?;
            eprintln!("loading {label}...");
            loaded = LlamaEngine::load(config)?;
            session = loaded.session()?;
            // The loop stops between prompt chunks and tokens when the run is aborted.
            session.set_abort(abort.clone());
            (
                &mut session,
                loaded.family().system_prompt().to_owned(),
                loaded.frame_target(),
                label,
            )
        }
    };

    let mut screen = X11Screen::connect(display)?;
    let monitors = screen.monitors()?;
    let monitor = screen.monitor(args.monitor)?;
    let device = EnigoDevice::connect(display)?;
    let mut hands = Executor::new(device, monitors.clone(), abort.clone(), !args.no_failsafe);
    let mut recorder = TraceWriter::create(&runs_dir()?)?;

    // Ctrl-C, SIGTERM and the corner failsafe act from their own threads, even mid-decode:
    // they release everything held and signal. The loop notices, and its one trace writer
    // ends the trace, saves the queued frames and writes the report; the exit code is 130.
    stop_on_signals(abort.clone(), hands.releaser())?;
    if !args.no_failsafe {
        watch_corners(display, monitors.clone(), abort.clone(), hands.releaser());
    }

    let options = RunOptions {
        task: args.task.clone(),
        system_prompt,
        window: ImageWindow {
            images: args.images,
            evict_every: args.evict_every,
        },
        dry_run: args.dry_run,
        yes: args.yes,
        frame_target,
        settle: SettleOptions::default(),
        guards: Guards {
            max_steps: args.max_steps,
            repeats: args.max_repeats.max(1),
            unchanged: args.max_unchanged.max(1),
            timeout: Duration::from_secs(args.timeout),
            ..Guards::default()
        },
        engine: engine_label,
        unlocks,
        policy: policy_label,
        client: None,
    };
    let dialog_display = if args.no_dialog {
        None
    } else {
        display
            .map(str::to_owned)
            .or_else(|| std::env::var("DISPLAY").ok())
    };
    let mut user = TerminalUser::new()
        .with_abort(abort.clone())
        .with_dialog_on(dialog_display);
    let result = agent::run(
        &options,
        Stages {
            screen: &mut screen,
            monitor,
            monitors,
            backend,
            policy: &mut checker,
            hands: &mut hands,
            recorder: &mut recorder,
            user: &mut user,
            abort,
        },
    );
    hands.release_all();
    drop(user);
    println!("{}", result.message);
    if let Some(dir) = &result.run_dir {
        println!(
            "recorded {} steps in {} (report.html)",
            result.steps,
            dir.display()
        );
    }
    match result.exit_code {
        0 => Ok(()),
        code => Err(Failure {
            code: u8::try_from(code).unwrap_or(1),
            error: anyhow!("run ended: {}", result.status),
        }),
    }
}

/// The policy a run (or an MCP session) decides with, and what its start says about it.
pub(crate) struct Loaded {
    pub checker: Checker,
    /// The files in force, for the trace's header.
    pub label: String,
    /// The floor entries the policy unlocks (and the refused unlocks).
    pub unlocks: Vec<String>,
    /// Where the files are, for a later session's own checker.
    pub paths: PolicyPaths,
}

/// Loads the policy (`policy` names the user's file instead of the default), stops on a broken
/// one, and says on stderr what every start says: its notes, its unlocks of the floor, and the
/// policy files that changed since the last run.
pub(crate) fn load_policy(policy: Option<&Path>) -> Result<Loaded, Failure> {
    let mut paths = PolicyPaths::from_env()?;
    if let Some(policy) = policy {
        // A policy named on the command line that is not there is a typo, not a wish for the
        // built-in preset.
        if !policy.is_file() {
            return Err(bad_input(anyhow!(
                "--policy {}: no such file; write one with `deskhand policy init --policy {0}`",
                policy.display()
            )));
        }
        paths.user = policy.to_path_buf();
    }
    let engine = PolicyEngine::load(&paths);
    if let Some(errors) = engine.locked_by() {
        for error in &errors.0 {
            eprintln!("{error}");
        }
        return Err(Failure {
            code: LOCKED_EXIT_CODE as u8,
            error: anyhow!(
                "the policy is broken, so deskhand is locked and will not act; fix it (`deskhand policy check`)"
            ),
        });
    }
    for note in engine.notes() {
        eprintln!("note: {note}");
    }
    // Every unlock of the floor is said at every start, refused ones too.
    let unlocks: Vec<String> = engine.unlocks().iter().map(ToString::to_string).collect();
    for unlock in &unlocks {
        eprintln!("{unlock}");
    }
    // Said at every start, so that an edit nobody meant (or one the agent got past the floor)
    // does not pass unnoticed. The grants count: an "always" answer loosens the policy too.
    let seen = paths.grants.with_file_name(SEEN_FILE);
    let policy_files: Vec<PathBuf> = paths
        .system
        .iter()
        .chain([&paths.user, &paths.grants])
        .cloned()
        .collect();
    match changed_since_last_run(&seen, &policy_files) {
        Ok(changed) => {
            for change in changed {
                eprintln!("note: {change}");
            }
        }
        Err(e) => eprintln!(
            "note: cannot tell which policy files changed since the last run ({}: {e})",
            seen.display()
        ),
    }
    let label = engine
        .files()
        .iter()
        .map(|(p, preset)| format!("{} (preset {preset})", p.display()))
        .collect::<Vec<_>>()
        .join(", ");
    let checker = Checker::new(engine, Some(GrantStore::new(&paths.grants)));
    Ok(Loaded {
        checker,
        label: if label.is_empty() {
            "no policy file: built-in strict preset".into()
        } else {
            label
        },
        unlocks,
        paths,
    })
}

/// `--engine URL`: a model server, once the policy lets screenshots go to its host. Nothing
/// is sent anywhere before that check.
fn remote_engine(
    args: &RunArgs,
    url: &str,
    policy: &PolicyEngine,
) -> Result<(RemoteEngine, String), Failure> {
    let parsed = engine_url(url)?;
    let host = parsed.host_str().unwrap_or_default();
    let allowed = policy
        .engine_host(host)
        .map_err(|why| bad_input(anyhow!("--engine {url}: refused before any request: {why}")))?;
    eprintln!("note: screenshots go to {url}: {allowed}");
    let (Some(model), Some(family)) = (&args.model, args.family) else {
        return Err(bad_input(anyhow!(
            "--engine needs --model (the model's name on the server) and --family (ui-tars, qwen25-vl, qwen3-vl, gemma3)"
        )));
    };
    let mut config = RemoteConfig::new(url, model, family);
    config.constraint = args.engine_constraint;
    config.timeout = Duration::from_secs(args.engine_timeout.max(1));
    config.images = !args.engine_text_only;
    let label = format!(
        "{model} ({family}{}) on {}",
        if config.images { "" } else { ", text only" },
        config.url
    );
    Ok((RemoteEngine::new(config)?, label))
}

/// `--engine URL`, checked to be an http or https URL.
pub(crate) fn engine_url(url: &str) -> Result<reqwest::Url, Failure> {
    let parsed = reqwest::Url::parse(url).map_err(|e| {
        bad_input(anyhow!(
            "--engine {url}: not a URL ({e}); for example --engine http://127.0.0.1:8080/v1"
        ))
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad_input(anyhow!(
            "--engine {url}: deskhand talks to model servers over http or https, not {}",
            parsed.scheme()
        )));
    }
    Ok(parsed)
}

/// Which model to load, from --model or the installed ones, with its image-token budget;
/// never downloads.
fn engine_config(args: &RunArgs) -> Result<(EngineConfig, String), Failure> {
    let (config, name, label) = model_config(args)?;
    let mut config = with_image_tokens(config, args.image_tokens, &name)?;
    config.fit_context(args.images + args.evict_every);
    config.model_template = !args.builtin_layout;
    Ok((config, label))
}

/// See `--evict-every`: with 3 screenshots always shown and 6 more before they leave, a long
/// run re-evaluates, by the README's estimate ("The conversation and the KV cache"), about 0.4
/// tokens for each new one, for a prompt of at most 9 screenshots.
pub const DEFAULT_EVICT_EVERY: usize = 6;

/// `--image-tokens`, checked against the model's range.
fn with_image_tokens(
    mut config: EngineConfig,
    tokens: Option<i64>,
    model: &str,
) -> Result<EngineConfig, Failure> {
    if let Some(tokens) = tokens {
        config
            .set_image_token_budget(tokens, model)
            .map_err(|e| bad_input(anyhow!(e)))?;
    }
    Ok(config)
}

/// The model to load: (its engine config, its name for errors, its label for the user).
fn model_config(args: &RunArgs) -> Result<(EngineConfig, String, String), Failure> {
    let store = Store::open(StoreConfig::from_env()?)?;
    let pull_hint = |name: &str| {
        let ram = store
            .catalog()
            .get(name)
            .map(|m| format!(" (about {} GB of memory)", m.ram_gb))
            .unwrap_or_default();
        format!("`deskhand models pull {name}`{ram}")
    };
    if let Some(model) = &args.model {
        let path = Path::new(model);
        if path.is_file() {
            let mmproj = args.mmproj.clone().ok_or_else(|| {
                bad_input(anyhow!(
                    "--model {model} is a file, so --mmproj must name its vision projector"
                ))
            })?;
            let (gguf, projector) = check_pair(path, &mmproj).map_err(|e| bad_input(anyhow!(e)))?;
            let family = match args.family.or_else(|| guess_family(&gguf, path)) {
                Some(family) => family,
                None => {
                    return Err(bad_input(anyhow!(
                        "cannot tell the model family of {model}; pass --family (ui-tars, qwen25-vl, qwen3-vl, gemma3)"
                    )));
                }
            };
            let mut config = EngineConfig::new(path, Some(mmproj), family);
            if family == FamilyId::Gemma3 {
                // Gemma 3 projectors take one fixed square; fit frames to this projector's
                // size, so that mtmd never resizes or letterboxes them itself.
                if let Some(size) = projector
                    .get_u64("clip.vision.image_size")
                    .and_then(|s| u32::try_from(s).ok())
                {
                    config.frame_target = Some(FrameTarget::Fixed {
                        width: size,
                        height: size,
                    });
                }
            }
            return Ok((
                config,
                model.clone(),
                format!("{model} ({})", family.name()),
            ));
        }
        return match store.find_installed(model)? {
            Some(installed) => Ok(installed_config(installed, store.catalog())),
            None if store.catalog().get(model).is_some() => Err(bad_input(anyhow!(
                "the model {model} is not installed; download it first with {}",
                pull_hint(model)
            ))),
            None => Err(bad_input(anyhow!(
                "no installed model and no file named {model}; `deskhand models list` shows the catalog"
            ))),
        };
    }
    match store.installed()?.into_iter().next() {
        Some(installed) => Ok(installed_config(installed, store.catalog())),
        None => Err(bad_input(anyhow!(
            "no vision model is installed. Download the recommended one with {}, register files you have with `deskhand models add`, or replay actions with --script FILE. deskhand run never downloads anything itself.",
            pull_hint(RECOMMENDED_MODEL)
        ))),
    }
}

/// An installed model's config: a pulled one takes its image-token range from the catalog.
fn installed_config(
    installed: InstalledModel,
    catalog: &Catalog,
) -> (EngineConfig, String, String) {
    let mut config = EngineConfig::new(
        &installed.model_path,
        Some(installed.mmproj_path),
        installed.family,
    );
    // An added model is the user's own file, even where a later catalog gained its name.
    let entry = catalog
        .get(&installed.name)
        .filter(|_| installed.source == Source::Pulled);
    if let Some(entry) = entry {
        config = config.with_image_token_range(entry.image_min_tokens, entry.image_max_tokens);
    }
    (config, installed.name.clone(), installed.name)
}

/// Polls the real pointer every 50 ms on a connection of its own, so parking it in a screen
/// corner stops the run even while the model is decoding. A watcher that loses its X
/// connection ends the run too: a failsafe that silently stopped watching is worse than none.
pub(crate) fn watch_corners(
    display: Option<&str>,
    monitors: Vec<crate::screen::MonitorInfo>,
    abort: AbortSignal,
    release: Releaser,
) {
    let display = display.map(str::to_owned);
    let spawned = std::thread::Builder::new()
        .name("deskhand-corners".into())
        .spawn(move || match X11Screen::connect(display.as_deref()) {
            Ok(screen) => watch_pointer(
                || screen.pointer().map_err(|e| e.to_string()),
                &monitors,
                &abort,
                &release,
                Duration::from_millis(50),
            ),
            Err(e) => stop_watching(AbortReason::FailsafeLost, &e.to_string(), &abort, &release),
        });
    if let Err(e) = spawned {
        tracing::warn!("the corner failsafe watcher did not start: {e}");
    }
}

/// Reads the pointer every `every` until the run ends: a pointer in a corner stops the run,
/// and so does a pointer that can no longer be read.
fn watch_pointer(
    mut pointer: impl FnMut() -> Result<crate::screen::ScreenPoint, String>,
    monitors: &[crate::screen::MonitorInfo],
    abort: &AbortSignal,
    release: &Releaser,
    every: Duration,
) {
    while abort.reason().is_none() {
        std::thread::sleep(every);
        match pointer() {
            Ok(p) if in_corner_zone(monitors, p) => {
                return stop_watching(AbortReason::CornerFailsafe, "", abort, release);
            }
            Ok(_) => {}
            Err(e) => return stop_watching(AbortReason::FailsafeLost, &e, abort, release),
        }
    }
}

fn stop_watching(reason: AbortReason, why: &str, abort: &AbortSignal, release: &Releaser) {
    abort.trigger(reason);
    let released = release();
    let why = if why.is_empty() {
        String::new()
    } else {
        format!(" ({why})")
    };
    eprintln!("deskhand: {reason}{why}; released {released} held key(s)/button(s); stopping");
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::BAD_INPUT_EXIT_CODE;
    use crate::model::store::Sha256Origin;

    fn installed(name: &str, source: Source) -> InstalledModel {
        InstalledModel {
            name: name.to_string(),
            family: FamilyId::Qwen25Vl,
            source,
            sha256_origin: Sha256Origin::Computed,
            model_path: PathBuf::from("/m/model.gguf"),
            model_sha256: "a".repeat(64),
            model_size: 1,
            mmproj_path: PathBuf::from("/m/mmproj.gguf"),
            mmproj_sha256: "b".repeat(64),
            mmproj_size: 1,
        }
    }

    #[test]
    fn a_failsafe_that_cannot_read_the_pointer_stops_the_run() {
        let monitors = vec![crate::screen::MonitorInfo::single("m", 800, 600)];
        let abort = AbortSignal::new();
        let released = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = released.clone();
        let release: Releaser = std::sync::Arc::new(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            0
        });
        let mut reads = 0;
        watch_pointer(
            || {
                reads += 1;
                if reads < 3 {
                    Ok(crate::screen::ScreenPoint::new(400, 300))
                } else {
                    Err("the X server connection broke".into())
                }
            },
            &monitors,
            &abort,
            &release,
            Duration::from_millis(1),
        );
        assert_eq!(abort.reason(), Some(AbortReason::FailsafeLost));
        assert_eq!(released.load(std::sync::atomic::Ordering::SeqCst), 1);

        // A pointer parked in a corner stops it too.
        let abort = AbortSignal::new();
        watch_pointer(
            || Ok(crate::screen::ScreenPoint::new(0, 0)),
            &monitors,
            &abort,
            &release,
            Duration::from_millis(1),
        );
        assert_eq!(abort.reason(), Some(AbortReason::CornerFailsafe));
    }

    #[test]
    fn a_pulled_model_takes_its_image_token_range_from_the_catalog() {
        let catalog = Catalog::load(None).unwrap();
        let entry = catalog.get("qwen2.5-vl-3b").unwrap();
        let (min, max) = (entry.image_min_tokens, entry.image_max_tokens);
        assert!(min < max, "the test needs a range with room inside");
        let (config, name, _) =
            installed_config(installed("qwen2.5-vl-3b", Source::Pulled), &catalog);
        assert_eq!(config.image_token_budget, max);
        assert_eq!(
            (config.image_min_tokens, config.image_max_tokens),
            (Some(min), Some(max))
        );

        let inside = i64::from(min) + 1;
        let chosen = with_image_tokens(config.clone(), Some(inside), &name)
            .unwrap_or_else(|f| panic!("{}", f.error));
        assert_eq!(i64::from(chosen.image_token_budget), inside);
        assert_eq!(
            chosen.image_max_tokens,
            Some(max),
            "mtmd keeps the model's range"
        );

        for outside in [0, i64::from(min) - 1, i64::from(max) + 1] {
            let err = with_image_tokens(config.clone(), Some(outside), &name).unwrap_err();
            assert_eq!(err.code, BAD_INPUT_EXIT_CODE);
            let text = err.error.to_string();
            assert!(
                text.contains(&format!("--image-tokens {outside}:")),
                "{text}"
            );
            assert!(text.contains(&format!("{min} to {max}")), "{text}");
            assert!(text.contains("qwen2.5-vl-3b"), "{text}");
        }
    }

    #[test]
    fn an_added_model_keeps_the_default_budget_whatever_its_name() {
        let catalog = Catalog::load(None).unwrap();
        for name in ["qwen2.5-vl-3b", "my-own-model"] {
            let (config, _, _) = installed_config(installed(name, Source::Added), &catalog);
            assert_eq!(config.image_token_budget, 1200);
            assert_eq!(
                (config.image_min_tokens, config.image_max_tokens),
                (None, None)
            );
            let config = with_image_tokens(config, Some(4000), name)
                .unwrap_or_else(|f| panic!("{}", f.error));
            assert_eq!(config.image_token_budget, 4000);
        }
    }

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    #[test]
    fn image_tokens_reach_the_range_check_even_when_negative() {
        let cli = Cli::try_parse_from(["deskhand", "task", "--image-tokens", "-3"]).unwrap();
        assert_eq!(cli.run.image_tokens, Some(-3));
        let cli = Cli::try_parse_from(["deskhand", "task"]).unwrap();
        assert_eq!(cli.run.image_tokens, None);
        // A script shows the model nothing, so a budget there is a mistake.
        let err = Cli::try_parse_from([
            "deskhand",
            "task",
            "--script",
            "s.jsonl",
            "--image-tokens",
            "300",
        ])
        .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }
}
