//! `simat compare A B`: the difference of two runs' SIMAT scores, its paired bootstrap interval
//! and a permutation test's p-value (see [`crate::compare`]).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::compare::{compare as compare_runs, CompareOptions, Outcomes};
use crate::ui::Ui;

/// How `simat compare` writes its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns, for reading.
    Table,
    /// Comma-separated values with a header.
    Csv,
    /// A JSON array of objects.
    Json,
}

/// `simat compare A B`.
pub fn compare(
    a: &Path,
    b: &Path,
    opts: &CompareOptions,
    format: Format,
    ui: &Ui,
) -> Result<ExitCode> {
    anyhow::ensure!(
        opts.confidence > 0.0 && opts.confidence < 1.0,
        "--confidence {}: must be between 0 and 1, as 0.95",
        opts.confidence
    );
    let start = std::time::Instant::now();
    let (oa, ob) = (Outcomes::read(a)?, Outcomes::read(b)?);
    let rows = compare_runs(&oa, &ob, opts)?;
    anyhow::ensure!(
        !rows.is_empty(),
        "no head set and λ that both runs scored{}",
        match (&opts.heads, opts.lambda) {
            (None, None) => String::new(),
            _ => " among those asked for (--heads, --lam)".into(),
        }
    );
    let mut out = std::io::stdout().lock();
    match format {
        Format::Json | Format::Csv => {
            super::write_records(&mut out, &rows, format == Format::Json)?
        }
        Format::Table => {
            writeln!(
                out,
                "A = {}\nB = {}\n{} resamples for the {:.0} % interval, {} permutations (seed {})",
                oa.path.display(),
                ob.path.display(),
                opts.bootstrap,
                100.0 * opts.confidence,
                opts.permutations,
                opts.seed
            )?;
            let width = rows.iter().map(|r| r.heads.len()).max().unwrap_or(5).max(5);
            writeln!(
                out,
                "{:<width$} {:>6} {:>5} {:>8} {:>8} {:>8} {:>19} {:>8} {:>8} {:>10}",
                "heads",
                "lambda",
                "split",
                "A",
                "B",
                "A − B",
                "interval",
                "p",
                "queries",
                "discordant"
            )?;
            for r in &rows {
                writeln!(
                    out,
                    "{:<width$} {:>6} {:>5} {:>8.2} {:>8.2} {:>+8.2} {:>19} {:>8} {:>8} {:>10}",
                    r.heads,
                    r.lam,
                    r.split,
                    r.a,
                    r.b,
                    r.difference,
                    format!("[{:+.2}, {:+.2}]", r.ci_low, r.ci_high),
                    format_p(r.p_value, opts.permutations),
                    r.n_queries,
                    r.discordant
                )?;
            }
        }
    }
    out.flush().context("failed to write to stdout")?;
    ui.status(
        "Compared",
        format!(
            "{} rows in {:.2}s",
            rows.len(),
            start.elapsed().as_secs_f64()
        ),
    );
    Ok(ExitCode::SUCCESS)
}

/// A p-value to the precision its permutations allow (`< 1/(R+1)` never shows as 0).
fn format_p(p: f64, permutations: usize) -> String {
    if p.is_nan() {
        return "-".into();
    }
    if permutations > 0 && p <= 1.0 / (permutations + 1) as f64 + 1e-15 {
        return format!("≤{:.1e}", p);
    }
    format!("{p:.4}")
}
