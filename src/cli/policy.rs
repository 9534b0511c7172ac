//! `deskhand policy ...`: write, check, explain and replay the policy, learn from recorded
//! runs, and manage grants.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use clap::{Args, Subcommand};

use crate::cli::trace::find_run;
use crate::cli::{Failure, bad_input, print_json};
use crate::input::Action;
use crate::policy::tune::{
    self, DEFAULT_MIN_ANSWERS, RecordedStep, SuggestContext, diff_table, layer_name, read_recorded,
};
use crate::policy::{
    Decision, GrantStore, Intent, PolicyEngine, PolicyPaths, Preset, Request, Verdict,
    starter_policy,
};
use crate::screen::{Screen, X11Screen};
use crate::trace::{TRACE_FILE, printable, run_folders, runs_dir};

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
    /// Suggest rules from how you answered asks in recorded runs.
    ///
    /// Groups the asks you answered by the rule that asked, the program, the action (and
    /// chord) and the intents, and prints a candidate rule as TOML for each group whose
    /// answers agree: allow where you always said yes, deny where you always said no. Each
    /// carries [[rule.example]] entries from the traces and has been checked against your
    /// policy file, so `policy check` verifies it once pasted in. A floor item is only ever
    /// suggested as a commented-out, scoped unlock, and only when every answer was yes. Asks
    /// answered by --yes or by nobody (no terminal) are not learned from, and text the
    /// detectors flag never appears.
    #[command(after_help = SUGGEST_EXAMPLES)]
    Suggest {
        /// Run folders, or run names from `deskhand trace list`, or `last` (default: the
        /// latest runs, see --last).
        #[arg(value_name = "RUN")]
        runs: Vec<String>,
        /// Read the N latest runs [default: 20 when no RUN is named].
        #[arg(long, value_name = "N")]
        last: Option<usize>,
        /// Fewest answers a group needs before a rule is suggested for it.
        #[arg(long, value_name = "N", default_value_t = DEFAULT_MIN_ANSWERS)]
        min_answers: usize,
    },
    /// Replay every recorded run against the current policy files, and count what changes.
    ///
    /// Prints a table of how many decisions each change of deciding rule makes stricter or
    /// looser, then lists the looser ones. Exits 1 if any deny or ask would become allow, as
    /// `policy test` does for one trace. Grants are not replayed unless --with-grants is
    /// given.
    Diff {
        /// The folder holding the runs (default: $DESKHAND_RUNS_DIR or
        /// ~/.local/share/deskhand/runs).
        #[arg(long, value_name = "DIR")]
        runs: Option<PathBuf>,
        /// Count remembered grants too, as a live run would.
        #[arg(long)]
        with_grants: bool,
    },
    /// List or revoke remembered "always" answers (~/.local/share/deskhand/grants.toml).
    #[command(subcommand)]
    Grants(GrantsCommand),
}

const SUGGEST_EXAMPLES: &str = "Examples:
  deskhand policy suggest                  # the 20 latest runs
  deskhand policy suggest --last 100 >> ~/.config/deskhand/policy.toml   # then edit, and:
  deskhand policy check
  deskhand policy diff                     # what the new rules change in past runs";

/// Runs `policy suggest` reads when none are named.
const DEFAULT_SUGGEST_RUNS: usize = 20;

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
        PolicyCommand::Suggest {
            runs,
            last,
            min_answers,
        } => suggest(&paths, runs, *last, *min_answers),
        PolicyCommand::Diff { runs, with_grants } => diff(&paths, runs.as_deref(), *with_grants),
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
    print!("{}", decision_text(&decision));
    for note in notes {
        println!("note: {note}");
    }
    Ok(())
}

/// What `policy explain` prints about a decision: the verdict, what decided and why, and every
/// entry that matched.
pub(crate) fn decision_text(decision: &Decision) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let deciding = decision.decider();
    let _ = writeln!(
        out,
        "decision:  {}",
        decision.decision.name().to_uppercase()
    );
    let _ = writeln!(out, "by:        {deciding} at {}", decision.source);
    let _ = writeln!(out, "reason:    {}", decision.reason);
    if decision.decision == Verdict::Ask {
        let _ = writeln!(
            out,
            "remember:  {}",
            if decision.rememberable {
                "an \"always\" answer may be remembered"
            } else {
                "never: this asks every time"
            }
        );
    }
    let intents: Vec<&str> = decision.intents.iter().map(|i| i.name()).collect();
    let _ = writeln!(out, "intents:   {}", intents.join(", "));
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
        let _ = writeln!(out, "detectors: {}", hits.join(", "));
    }
    if !decision.grants.is_empty() {
        let _ = writeln!(out, "grants:    {}", decision.grants.join(", "));
    }
    for unlock in &decision.unlocked {
        let _ = writeln!(out, "floor:     {unlock}");
    }
    let _ = writeln!(out, "matched:");
    for m in &decision.matched {
        let _ = writeln!(
            out,
            "  {:<5} {:<28} {:<8} {}  {}",
            m.decision.name(),
            m.id,
            layer_name(m.layer),
            m.source,
            m.reason
        );
    }
    out
}

/// The current files, loaded for a replay: broken files are an error, grants count only when
/// asked for.
fn replay_engine(paths: &PolicyPaths, with_grants: bool) -> Result<PolicyEngine, Failure> {
    let engine = PolicyEngine::try_load(paths).map_err(|errors| {
        anyhow!("{errors}\nthe policy is broken; fix it before replaying (deskhand policy check)")
    })?;
    Ok(if with_grants {
        engine
    } else {
        engine.with_grants(Vec::new())
    })
}

/// The recorded steps of `trace`; skipped lines are warned about.
fn recorded(trace: &Path) -> Result<Vec<RecordedStep>, Failure> {
    let (steps, warnings) = read_recorded(trace).map_err(bad_input)?;
    for warning in warnings {
        eprintln!("warning: {warning}; skipped");
    }
    Ok(steps)
}

fn replay(paths: &PolicyPaths, trace: &Path, with_grants: bool) -> Result<(), Failure> {
    let recorded = recorded(trace)?;
    let engine = replay_engine(paths, with_grants)?;
    let changes = tune::replay(&engine, &recorded);
    for change in &changes {
        // The trace's requests hold what the model typed and what windows called themselves.
        println!("{}", printable(&change.describe()));
    }
    let relaxed = changes.iter().filter(|c| c.relaxed()).count();
    println!(
        "{} steps replayed against {}: {} would change, {relaxed} would become allow",
        recorded.len(),
        paths.user.display(),
        changes.len()
    );
    if relaxed > 0 {
        return Err(
            anyhow!("{relaxed} step(s) that were denied or asked would now be allowed").into(),
        );
    }
    Ok(())
}

/// The run folders `policy suggest` reads: those named, else the `last` latest.
fn suggest_runs(named: &[String], last: Option<usize>) -> Result<Vec<PathBuf>, Failure> {
    let mut folders = Vec::new();
    for name in named {
        folders.push(find_run(name)?);
    }
    if named.is_empty() || last.is_some() {
        let all = run_folders(&runs_dir()?)?;
        let keep = last.unwrap_or(DEFAULT_SUGGEST_RUNS);
        folders.extend(all.into_iter().rev().take(keep).rev());
    }
    folders.sort();
    folders.dedup();
    Ok(folders)
}

fn suggest(
    paths: &PolicyPaths,
    named: &[String],
    last: Option<usize>,
    min_answers: usize,
) -> Result<(), Failure> {
    let folders = suggest_runs(named, last)?;
    if folders.is_empty() {
        return Err(bad_input(anyhow!(
            "no recorded runs in {}; run deskhand first, or name run folders",
            runs_dir()?.display()
        )));
    }
    let mut steps = Vec::new();
    for folder in &folders {
        steps.extend(recorded(&folder.join(TRACE_FILE))?);
    }
    let current = replay_engine(paths, false)?;
    let verify = |candidate: &str| -> Result<(), String> {
        PolicyEngine::try_load_with(paths, Some(candidate))
            .map(|_| ())
            .map_err(|errors| errors.to_string())
    };
    let found = tune::suggest(
        &steps,
        &SuggestContext {
            current: &current,
            verify: &verify,
            min_answers,
        },
    );
    println!(
        "# deskhand policy suggest: {} run(s), {} ask(s) you answered{}.\n# Review each rule, paste the ones you want into {}, then run `deskhand policy check`\n# and `deskhand policy diff` to see what they change in past runs.\n",
        folders.len(),
        found.answered,
        if found.not_by_a_person > 0 {
            format!(
                " ({} answered by --yes or by nobody, not learned from)",
                found.not_by_a_person
            )
        } else {
            String::new()
        },
        paths.user.display()
    );
    // Program names come from other programs' windows.
    for line in found.toml.lines() {
        println!("{}", printable(line));
    }
    println!(
        "# {} rule(s) suggested, {} floor unlock(s) suggested commented out.",
        found.rules, found.unlocks
    );
    Ok(())
}

fn diff(paths: &PolicyPaths, runs: Option<&Path>, with_grants: bool) -> Result<(), Failure> {
    let dir = match runs {
        Some(dir) => dir.to_path_buf(),
        None => runs_dir()?,
    };
    let folders = run_folders(&dir)?;
    if folders.is_empty() {
        return Err(bad_input(anyhow!(
            "no recorded runs in {}; name the folder with --runs DIR",
            dir.display()
        )));
    }
    let mut steps = Vec::new();
    for folder in &folders {
        steps.extend(recorded(&folder.join(TRACE_FILE))?);
    }
    let engine = replay_engine(paths, with_grants)?;
    let changes = tune::replay(&engine, &steps);
    println!(
        "{} decisions from {} run(s) in {} replayed against the current policy ({})",
        steps.len(),
        folders.len(),
        dir.display(),
        paths.user.display()
    );
    let table = diff_table(&changes);
    if !table.is_empty() {
        let then_width = table.iter().map(|r| r.then.len()).max().unwrap_or(0).max(4);
        let now_width = table.iter().map(|r| r.now.len()).max().unwrap_or(0).max(3);
        println!(
            "\n{:<then_width$}  {:<now_width$}  {:>8}  {:>6}",
            "THEN", "NOW", "STRICTER", "LOOSER"
        );
        for row in &table {
            let line = format!(
                "{:<then_width$}  {:<now_width$}  {:>8}  {:>6}",
                row.then, row.now, row.stricter, row.looser
            );
            println!("{}", printable(&line));
        }
    }
    let looser: Vec<_> = changes.iter().filter(|c| c.looser()).collect();
    if !looser.is_empty() {
        println!("\nlooser:");
        for change in &looser {
            println!("  {}", printable(&change.describe()));
        }
    }
    let relaxed = changes.iter().filter(|c| c.relaxed()).count();
    println!(
        "\n{} would change: {} stricter, {} looser, {relaxed} would become allow",
        changes.len(),
        changes.len() - looser.len(),
        looser.len()
    );
    if relaxed > 0 {
        return Err(anyhow!(
            "{relaxed} decision(s) that were denied or asked would now be allowed"
        )
        .into());
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
