//! `deskhand models ...`: the catalog, downloads and the models installed on this machine.

use std::path::PathBuf;

use anyhow::anyhow;
use clap::Subcommand;

use crate::cli::{BAD_INPUT_EXIT_CODE, Failure};
use crate::model::family::FamilyId;
use crate::model::store::{
    AddRequest, FileAction, FileStatus, Sha256Origin, Source, Store, StoreConfig, StoreError,
};

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// List the catalog's models, whether each is installed, and the models you added.
    List,
    /// Download a catalog model (GGUF + mmproj) from the Hugging Face Hub and install it.
    ///
    /// Files go to <data dir>/models/<name>/ (DESKHAND_MODELS_DIR overrides the directory).
    /// An interrupted download is resumed by running the same command again. Every file is
    /// checked against the sha256 the catalog pins before it is installed; a file the catalog
    /// has no sha256 for is reported as unverified and its computed sha256 is recorded.
    /// DESKHAND_HF_ENDPOINT replaces https://huggingface.co; HF_TOKEN is sent for gated repos.
    #[command(after_help = "Example:\n  deskhand models pull qwen3-vl-4b")]
    Pull {
        /// The model's name, as `deskhand models list` shows it.
        name: String,
    },
    /// Register a vision model you already have (from LM Studio, llama.cpp, ...).
    ///
    /// The files stay where they are. deskhand checks that PATH is a language-model GGUF,
    /// that --mmproj is a vision projector whose output width equals the model's
    /// embedding_length, and records the sha256 of both.
    #[command(
        after_help = "Example:\n  deskhand models add ~/.lmstudio/models/lmstudio-community/Qwen2.5-VL-7B-Instruct-GGUF/Qwen2.5-VL-7B-Instruct-Q4_K_M.gguf \\\n    --mmproj ~/.lmstudio/models/lmstudio-community/Qwen2.5-VL-7B-Instruct-GGUF/mmproj-model-f16.gguf"
    )]
    Add {
        /// The language model's GGUF file.
        path: PathBuf,
        /// The model's vision projector (mmproj) GGUF file.
        #[arg(long, value_name = "FILE")]
        mmproj: Option<PathBuf>,
        /// The model family (ui-tars, qwen25-vl, qwen3-vl, gemma3); guessed from the GGUF
        /// metadata when left out.
        #[arg(long, value_name = "FAMILY")]
        family: Option<FamilyId>,
        /// The name to register it under (default: from the file name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Re-hash every installed file and report OK, MISSING or CHANGED for each.
    ///
    /// Exits with status 1 when any file is missing or changed.
    Verify,
}

fn fail(error: StoreError) -> Failure {
    Failure {
        code: if error.is_bad_input() {
            BAD_INPUT_EXIT_CODE
        } else {
            1
        },
        error: anyhow!(error),
    }
}

pub fn run(cmd: &ModelsCommand) -> Result<(), Failure> {
    let store = Store::open(StoreConfig::from_env().map_err(fail)?).map_err(fail)?;
    match cmd {
        ModelsCommand::List => list(&store),
        ModelsCommand::Pull { name } => pull(&store, name),
        ModelsCommand::Add {
            path,
            mmproj,
            family,
            name,
        } => add(
            &store,
            AddRequest {
                model: path.clone(),
                mmproj: mmproj.clone(),
                family: *family,
                name: name.clone(),
            },
        ),
        ModelsCommand::Verify => verify(&store),
    }
}

fn gigabytes(bytes: u64) -> String {
    format!("{:.1} GB", bytes as f64 / 1e9)
}

fn list(store: &Store) -> Result<(), Failure> {
    let rows = store.list().map_err(fail)?;
    println!(
        "{:<16} {:<10} {:>9} {:>7}  installed",
        "name", "family", "download", "ram"
    );
    for row in rows.iter().filter(|r| r.in_catalog) {
        let installed = match &row.installed {
            None => "no".to_string(),
            Some(_) if !row.files_present => "files missing (run `deskhand models verify`)".into(),
            Some(m) if m.sha256_origin == Sha256Origin::Computed => "yes (unverified)".into(),
            Some(_) => "yes".into(),
        };
        println!(
            "{:<16} {:<10} {:>9} {:>7}  {installed}",
            row.name,
            FamilyId::name(row.family),
            row.download_size.map_or_else(|| "?".into(), gigabytes),
            row.ram_gb
                .map_or_else(|| "?".into(), |r| format!("{r:.1} GB")),
        );
    }
    let added: Vec<_> = rows.iter().filter(|r| !r.in_catalog).collect();
    if !added.is_empty() {
        println!("\nadded by you:");
        for row in added {
            let Some(m) = &row.installed else { continue };
            println!(
                "{:<16} {:<10} {:>9}  {}{}",
                row.name,
                FamilyId::name(row.family),
                row.download_size.map_or_else(|| "?".into(), gigabytes),
                m.model_path.display(),
                if row.files_present {
                    ""
                } else {
                    "  (files missing)"
                }
            );
        }
    }
    println!("\nmodels directory: {}", store.models_dir().display());
    Ok(())
}

fn pull(store: &Store, name: &str) -> Result<(), Failure> {
    let outcome = store.pull(name).map_err(fail)?;
    for (file, action) in &outcome.files {
        match action {
            FileAction::Downloaded => eprintln!("downloaded {file}"),
            FileAction::Resumed { from } => eprintln!("downloaded {file} (resumed at byte {from})"),
            FileAction::AlreadyPresent => eprintln!("{file} was already in place"),
        }
    }
    let m = &outcome.model;
    for (_, path, sha, _) in m.files() {
        let file = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        if outcome.unverified.contains(&file) {
            eprintln!(
                "UNVERIFIED: {file} has no sha256 in the catalog; recorded the computed sha256 {sha}\n  (compare it with the sha256 on the file's Hugging Face page)"
            );
        }
    }
    println!(
        "installed {} ({}): {} and {}",
        m.name,
        FamilyId::name(m.family),
        m.model_path.display(),
        m.mmproj_path.display()
    );
    Ok(())
}

fn add(store: &Store, request: AddRequest) -> Result<(), Failure> {
    let m = store.add(&request).map_err(fail)?;
    println!(
        "added {} ({}): {} with {}",
        m.name,
        FamilyId::name(m.family),
        m.model_path.display(),
        m.mmproj_path.display()
    );
    println!("  sha256 {}  {}", m.model_sha256, m.model_path.display());
    println!("  sha256 {}  {}", m.mmproj_sha256, m.mmproj_path.display());
    Ok(())
}

fn verify(store: &Store) -> Result<(), Failure> {
    let installed = store.installed().map_err(fail)?;
    if installed.is_empty() {
        println!(
            "no models installed in {} (see `deskhand models list`)",
            store.models_dir().display()
        );
        return Ok(());
    }
    let checks = store.verify().map_err(fail)?;
    let mut bad = 0;
    for check in &checks {
        let source = installed
            .iter()
            .find(|m| m.name == check.name)
            .map_or("", |m| match m.source {
                Source::Pulled => "",
                Source::Added => " (added)",
            });
        match &check.status {
            FileStatus::Ok => println!(
                "OK       {} {}{source}: {}",
                check.name,
                check.role,
                check.path.display()
            ),
            FileStatus::Missing => {
                bad += 1;
                println!(
                    "MISSING  {} {}{source}: {}",
                    check.name,
                    check.role,
                    check.path.display()
                );
            }
            FileStatus::Changed { expected, actual } => {
                bad += 1;
                println!(
                    "CHANGED  {} {}{source}: {}\n         sha256 {actual}, recorded {expected}",
                    check.name,
                    check.role,
                    check.path.display()
                );
            }
        }
    }
    if bad > 0 {
        return Err(Failure {
            code: 1,
            error: anyhow!(
                "{bad} of {} installed files are missing or changed: `deskhand models pull NAME` downloads a catalog model again; `deskhand models add` registers your own files again",
                checks.len()
            ),
        });
    }
    Ok(())
}
