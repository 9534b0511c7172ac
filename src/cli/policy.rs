//! `deskhand policy ...`: write, check, explain and replay the policy, and manage grants.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use clap::{Args, Subcommand};

use crate::cli::{Failure, bad_input, print_json};
use crate::input::Action;
use crate::policy::{
    Decision, GrantStore, Intent, Layer, PolicyEngine, PolicyPaths, Preset, Request, Verdict,
    starter_policy,
};
use crate::screen::{Screen, X11Screen};
use crate::trace::{printable, read_jsonl};

#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// The policy file to use instead of ~/.config/deskhand/policy.toml (or $DESKHAND_POLICY).
    #[arg(long, global = true, value_name = "FILE")]
    pub policy: Option<PathBuf>,

    #[command(subcommand)]
    pub command: PolicyCommand,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Write a commented starter policy file.
    ///
    /// The file explains every section and carries working example rules with inline
    /// examples. It refuses to replace an existing file unless --force is given.
    #[command(after_help = "Example:\n  deskhand policy init --preset strict")]
    Init {
        /// strict asks before every click and key; balanced allows clicking and typing but
        /// asks for held keys and sensitive text; permissive allows what the floor and your
        /// rules do not stop.
        #[arg(long, default_value = "balanced", value_name = "PRESET")]
        preset: Preset,
        /// Replace an existing file (its contents are lost).
        #[arg(long)]
        force: bool,
    },
    /// Check a policy file: every error with file:line:column, exit 1 if there is any.
    ///
    /// Checks syntax, unknown keys, regexes, rule ids, the schema version and every inline
    /// example, together with the system file (/etc/deskhand/policy.toml) if there is one.
    /// A policy that fails this check locks deskhand: it may only observe and abort.
    Check {
        /// The file to check (default: the policy in use).
        file: Option<PathBuf>,
    },
    /// Show how the policy decides one action, and why.
    #[command(after_help = EXPLAIN_EXAMPLES)]
    Explain(ExplainArgs),
    /// Replay the requests of a run's trace.jsonl against the current policy files.
    ///
    /// Prints every step whose decision would change. Exits 1 if any deny or ask would
    /// become allow. Grants and budgets are not replayed unless --with-grants is given.
    Test {
        /// A run's trace.jsonl.
        trace: PathBuf,
        /// Count remembered grants too, as a live run would.
        #[arg(long)]
        with_grants: bool,
    },
    /// List or revoke remembered "always" answers (~/.local/share/deskhand/grants.toml).
    #[command(subcommand)]
    Grants(GrantsCommand),
}

const EXPLAIN_EXAMPLES: &str = r#"Examples:
  deskhand policy explain '{"action":"type","text":"rm -rf ~"}' --app xterm
  deskhand policy explain '{"action":"click","x":900,"y":500}' --app thunderbird --title 'Write: hello'
  deskhand policy explain '{"action":"key","chord":"ctrl+q"}' --json

Region rules need monitor geometry: it is read from the X display when one is reachable."#;

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The action as JSON, in screen pixels (the same form `deskhand act` takes).
    #[arg(value_name = "ACTION_JSON")]
    pub action: String,
    /// The active program's name, as `deskhand window` shows it.
    #[arg(long, value_name = "APP")]
    pub app: Option<String>,
    /// The active window's title.
    #[arg(long, value_name = "TITLE")]
    pub title: Option<String>,
    /// The intent the model declared.
    #[arg(long, value_name = "INTENT", default_value = "other")]
    pub intent: Intent,
    /// Print one JSON object (keys include "decision" and "rule").
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum GrantsCommand {
    /// List remembered grants.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a grant by id: the rule that asked will ask again.
    Revoke {
        /// The grant's id, as `deskhand policy grants list` shows it.
        id: String,
    },
}

pub fn run(args: &PolicyArgs, display: Option<&str>) -> Result<(), Failure> {
    let mut paths = PolicyPaths::from_env()?;
    if let Some(file) = &args.policy {
        paths.user = file.clone();
    }
    match &args.command {
        PolicyCommand::Init { preset, force } => init(&paths.user, *preset, *force),
        PolicyCommand::Check { file } => {
            if let Some(file) = file {
                paths.user = file.clone();
            }
            check(&paths)
        }
        PolicyCommand::Explain(explain_args) => explain(&paths, explain_args, display),
        PolicyCommand::Test { trace, with_grants } => replay(&paths, trace, *with_grants),
        PolicyCommand::Grants(GrantsCommand::List { json }) => grants_list(&paths, *json),
        PolicyCommand::Grants(GrantsCommand::Revoke { id }) => grants_revoke(&paths, id),
    }
}

fn init(path: &Path, preset: Preset, force: bool) -> Result<(), Failure> {
    if path.exists() && !force {
        return Err(anyhow!(
            "{} already exists; pass --force to replace it (its contents would be lost)",
            path.display()
        )
        .into());
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the directory {}", dir.display()))?;
    }
    // Atomically: an interrupted init never leaves half a policy, which would lock deskhand.
    crate::files::write_bytes_atomically(path, starter_policy(preset).as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!(
        "wrote {} (preset {preset}); edit it, then run `deskhand policy check`",
        path.display()
    );
    Ok(())
}

fn check(paths: &PolicyPaths) -> Result<(), Failure> {
    if !paths.user.exists() {
        return Err(anyhow!(
            "{}: no such file; write one with `deskhand policy init`",
            paths.user.display()
        )
        .into());
    }
    match PolicyEngine::try_load(paths) {
        Ok(engine) => {
            for (path, preset) in engine.files() {
                println!("ok: {} (preset {preset})", path.display());
            }
            println!(
                "{} rules, {} inline examples passed, {} detectors",
                engine.rule_count(),
                engine.example_count(),
                engine.detectors().names().len()
            );
            for note in engine.notes() {
                println!("note: {note}");
            }
            for unlock in engine.unlocks() {
                println!("{unlock}");
            }
            Ok(())
        }
        Err(errors) => {
            for error in &errors.0 {
                eprintln!("{error}");
            }
            if !errors
                .0
                .iter()
                .any(|e| e.message.starts_with("example of rule"))
            {
                eprintln!("(inline examples are checked once these errors are fixed)");
            }
            Err(anyhow!(
                "{} error(s): until they are fixed deskhand is locked and may only observe and abort",
                errors.0.len()
            )
            .into())
        }
    }
}

fn explain(paths: &PolicyPaths, args: &ExplainArgs, display: Option<&str>) -> Result<(), Failure> {
    let action = Action::from_json(&args.action).map_err(bad_input)?;
    let engine = PolicyEngine::load(paths);
    let mut request = Request::new(action)
        .with_window(args.app.clone(), args.title.clone())
        .with_intent(args.intent);
    let mut notes: Vec<String> = engine.notes().to_vec();
    if !request.action.points().is_empty() {
        match X11Screen::connect(display).and_then(|s| s.monitors()) {
            Ok(monitors) => request = request.with_monitors(&monitors),
            Err(e) => notes.push(format!(
                "no display to read monitors from ({e}); region rules cannot match"
            )),
        }
    }
    let decision = engine.decide(&request);
    if args.json {
        return print_json(&decision);
    }
    if let Some(errors) = engine.locked_by() {
        println!("The policy is broken, so deskhand is locked:");
        for error in &errors.0 {
            println!("  {error}");
        }
    }
    print_decision(&decision);
    for note in notes {
        println!("note: {note}");
    }
    Ok(())
}

fn print_decision(decision: &Decision) {
    let deciding = match &decision.rule {
        Some(rule) => format!("rule '{rule}'"),
        None => layer_name(decision.layer).to_owned(),
    };
    println!("decision:  {}", decision.decision.name().to_uppercase());
    println!("by:        {deciding} at {}", decision.source);
    println!("reason:    {}", decision.reason);
    if decision.decision == Verdict::Ask {
        println!(
            "remember:  {}",
            if decision.rememberable {
                "an \"always\" answer may be remembered"
            } else {
                "never: this asks every time"
            }
        );
    }
    let intents: Vec<&str> = decision.intents.iter().map(|i| i.name()).collect();
    println!("intents:   {}", intents.join(", "));
    if !decision.detector_hits.is_empty() {
        let hits: Vec<String> = decision
            .detector_hits
            .iter()
            .map(|h| {
                format!(
                    "{} ×{}{}",
                    h.name,
                    h.count,
                    if h.secret { " (secret)" } else { "" }
                )
            })
            .collect();
        println!("detectors: {}", hits.join(", "));
    }
    if !decision.grants.is_empty() {
        println!("grants:    {}", decision.grants.join(", "));
    }
    for unlock in &decision.unlocked {
        println!("floor:     {unlock}");
    }
    println!("matched:");
    for m in &decision.matched {
        println!(
            "  {:<5} {:<28} {:<8} {}  {}",
            m.decision.name(),
            m.id,
            layer_name(m.layer),
            m.source,
            m.reason
        );
    }
}

fn layer_name(layer: Layer) -> &'static str {
    match layer {
        Layer::Floor => "floor",
        Layer::System => "system",
        Layer::User => "user",
        Layer::Defaults => "defaults",
        Layer::Preset => "preset",
        Layer::Grants => "grant",
        Layer::Session => "session",
        Layer::Budget => "budget",
        Layer::Locked => "locked",
    }
}

/// One replayable line of a trace: the request and what was decided then.
struct Recorded {
    step: String,
    request: Request,
    verdict: Verdict,
    rule: Option<String>,
}

fn read_trace(path: &Path) -> Result<Vec<Recorded>, Failure> {
    let (lines, warnings) = read_jsonl::<serde_json::Value>(path).map_err(bad_input)?;
    for warning in warnings {
        eprintln!("warning: {warning}; skipped");
    }
    let mut recorded = Vec::new();
    for (number, value) in lines {
        let (Some(request), Some(decision)) = (value.get("request"), value.get("decision")) else {
            continue; // run headers, aborts and notes carry no request
        };
        let parse = || -> Result<Recorded, serde_json::Error> {
            Ok(Recorded {
                step: value
                    .get("step")
                    .map_or_else(|| format!("line {number}"), |s| format!("step {s}")),
                request: serde_json::from_value(request.clone())?,
                verdict: serde_json::from_value(decision["decision"].clone())?,
                rule: decision["rule"].as_str().map(str::to_owned),
            })
        };
        recorded.push(parse().map_err(|e| {
            bad_input(anyhow!(
                "{}:{number}: the request or decision does not parse: {e}",
                path.display()
            ))
        })?);
    }
    Ok(recorded)
}

fn replay(paths: &PolicyPaths, trace: &Path, with_grants: bool) -> Result<(), Failure> {
    let recorded = read_trace(trace)?;
    let engine = PolicyEngine::try_load(paths).map_err(|errors| {
        anyhow!("{errors}\nthe policy is broken; fix it before replaying (deskhand policy check)")
    })?;
    let engine = if with_grants {
        engine
    } else {
        engine.with_grants(Vec::new())
    };
    let mut changed = 0;
    let mut relaxed = 0;
    for step in &recorded {
        let now = engine.decide(&step.request);
        if now.decision == step.verdict {
            continue;
        }
        changed += 1;
        let looser = now.decision < step.verdict;
        if looser && now.decision == Verdict::Allow {
            relaxed += 1;
        }
        let by = |rule: &Option<String>| rule.clone().unwrap_or_else(|| "no rule".into());
        // The trace's requests hold what the model typed and what windows called themselves.
        let line = format!(
            "{}: {}{}: {} ({}) -> {} ({}: {}){}",
            step.step,
            step.request.action,
            step.request
                .app
                .as_ref()
                .map(|a| format!(" in {a}"))
                .unwrap_or_default(),
            step.verdict,
            by(&step.rule),
            now.decision,
            now.rule.clone().unwrap_or_else(|| now.source.clone()),
            now.reason,
            if looser { "  [LOOSER]" } else { "" }
        );
        println!("{}", printable(&line));
    }
    println!(
        "{} steps replayed against {}: {changed} would change, {relaxed} would become allow",
        recorded.len(),
        paths.user.display()
    );
    if relaxed > 0 {
        return Err(
            anyhow!("{relaxed} step(s) that were denied or asked would now be allowed").into(),
        );
    }
    Ok(())
}

fn grants_list(paths: &PolicyPaths, json: bool) -> Result<(), Failure> {
    let store = GrantStore::new(&paths.grants);
    let grants = store.load()?;
    if json {
        return print_json(&grants);
    }
    if grants.is_empty() {
        println!("no grants in {}", store.path().display());
        return Ok(());
    }
    let now = std::time::SystemTime::now();
    let mut by_rule: BTreeMap<&str, usize> = BTreeMap::new();
    println!(
        "{:<12} {:<24} {:<16} {:<12} {:<12} {:<21} EXPIRES",
        "ID", "RULE", "APP", "ACTION", "INTENT", "CREATED"
    );
    for g in &grants {
        *by_rule.entry(&g.rule).or_default() += 1;
        let expires = match (&g.expires, g.is_live(now)) {
            (None, _) => "never".to_owned(),
            (Some(at), true) => at.clone(),
            (Some(at), false) => format!("{at} (expired)"),
        };
        println!(
            "{:<12} {:<24} {:<16} {:<12} {:<12} {:<21} {expires}",
            g.id,
            g.rule,
            g.app.as_deref().unwrap_or("-"),
            g.action,
            g.intent,
            g.created
        );
    }
    println!("{} grants in {}", grants.len(), store.path().display());
    Ok(())
}

fn grants_revoke(paths: &PolicyPaths, id: &str) -> Result<(), Failure> {
    let store = GrantStore::new(&paths.grants);
    let grant = store.revoke(id)?;
    println!(
        "revoked {} (rule {}, {} in {}); that rule will ask again",
        grant.id,
        grant.rule,
        grant.action,
        grant.app.as_deref().unwrap_or("any window without a name")
    );
    Ok(())
}
