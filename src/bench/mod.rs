//! `deskhand bench …`: figures measured against a baseline in the same run, because the
//! machines this runs on are shared and noisy.

mod capture;
mod model;
mod policy;
mod step;
mod synth;

pub use capture::{CaptureBenchArgs, capture};
pub use model::{ModelBenchArgs, default_llama_tools, model};
pub use policy::{PolicyBenchArgs, policy};
pub use step::{StepBenchArgs, step};
pub use synth::{SynthArgs, synth};

use std::path::Path;
use std::time::Duration;

use crate::cli::Failure;
use crate::model::FamilyId;

/// The family given, or the one the model's own metadata names.
fn family_of(model: &Path, given: Option<FamilyId>) -> Result<FamilyId, Failure> {
    if let Some(family) = given {
        return Ok(family);
    }
    let gguf = crate::model::gguf::read_file(model)?;
    crate::model::compat::guess_family(&gguf, model).ok_or_else(|| {
        crate::cli::bad_input(anyhow::anyhow!(
            "cannot tell the family of {} from its metadata; pass --family ({})",
            model.display(),
            crate::model::family::known_family_names()
        ))
    })
}

/// Median and 95th percentile of a set of timings, in milliseconds.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Summary {
    pub runs: usize,
    pub median_ms: f64,
    pub p95_ms: f64,
    pub min_ms: f64,
}

impl Summary {
    pub fn of(samples: &[Duration]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
        Some(Summary {
            runs: ms.len(),
            median_ms: at(0.5),
            p95_ms: at(0.95),
            min_ms: ms[0],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_picks_median_and_p95() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let s = Summary::of(&samples).unwrap();
        assert_eq!(s.runs, 100);
        assert!((s.median_ms - 51.0).abs() < 1e-9 || (s.median_ms - 50.0).abs() < 1e-9);
        assert!((s.p95_ms - 95.0).abs() <= 1.0);
        assert_eq!(s.min_ms, 1.0);
        assert!(Summary::of(&[]).is_none());
    }
}
