//! `simat leaderboard RUN...`: one row per run × head set (see [`crate::leaderboard`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::leaderboard::{clip_benchmark_json, leaderboard as rows_of, Entry, Protocol};
use crate::ui::Ui;

/// How `simat leaderboard` writes its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns, for reading.
    Table,
    /// Comma-separated values with a header.
    Csv,
    /// A JSON array of objects.
    Json,
    /// A Markdown table, for a paper's README.
    Markdown,
}

fn num(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2}"))
}

fn interval(e: &Entry) -> String {
    match (e.test_ci_low, e.test_ci_high) {
        (Some(lo), Some(hi)) => format!("[{lo:.2}, {hi:.2}]"),
        _ => "-".into(),
    }
}

/// `simat leaderboard RUN...`.
pub fn leaderboard(
    runs: &[PathBuf],
    protocol: Protocol,
    format: Format,
    clip_benchmark: Option<&Path>,
    ui: &Ui,
) -> Result<ExitCode> {
    // A sweep's run stands for its models.
    let runs = &crate::sweep::expand_runs(runs)?;
    let labels = crate::report::labels(runs);
    let runs: Vec<(PathBuf, String)> = runs.iter().cloned().zip(labels).collect();
    let rows = rows_of(&runs, protocol)?;
    if let Some(dir) = clip_benchmark {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
        for e in &rows {
            let name = format!(
                "simat_{}_{}_{}_{}.json",
                e.run, e.model, e.heads, e.protocol
            )
            .replace(['/', ' '], "_");
            let text = serde_json::to_string_pretty(&clip_benchmark_json(e))? + "\n";
            crate::io::atomic::write_atomic(dir.join(&name), text.as_bytes())?;
        }
        ui.status(
            "Wrote",
            format!(
                "{} CLIP_benchmark files under {}",
                rows.len(),
                dir.display()
            ),
        );
    }
    let mut out = std::io::stdout().lock();
    let header = [
        "run", "model", "heads", "protocol", "lambda", "dev", "test", "interval", "test@5", "subj",
        "rel", "obj", "queries",
    ];
    let cells = |e: &Entry| -> Vec<String> {
        vec![
            e.run.clone(),
            e.model.clone(),
            e.heads.clone(),
            e.protocol.into(),
            e.lam.to_string(),
            num(e.dev),
            format!("{:.2}", e.test),
            interval(e),
            num(e.test_at5),
            num(e.test_subj),
            num(e.test_rel),
            num(e.test_obj),
            e.test_queries.to_string(),
        ]
    };
    match format {
        Format::Json | Format::Csv => {
            super::write_records(&mut out, &rows, format == Format::Json)?
        }
        Format::Markdown => {
            writeln!(out, "| {} |", header.join(" | "))?;
            writeln!(out, "|{}", "---|".repeat(header.len()))?;
            for e in &rows {
                writeln!(out, "| {} |", cells(e).join(" | "))?;
            }
        }
        Format::Table => {
            let table: Vec<Vec<String>> = std::iter::once(header.map(String::from).to_vec())
                .chain(rows.iter().map(cells))
                .collect();
            let widths: Vec<usize> = (0..header.len())
                .map(|c| {
                    table
                        .iter()
                        .map(|r| r[c].chars().count())
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            for r in &table {
                let line: Vec<String> = r
                    .iter()
                    .zip(&widths)
                    .enumerate()
                    .map(|(c, (v, w))| {
                        if c < 4 {
                            format!("{v:<w$}")
                        } else {
                            format!("{v:>w$}")
                        }
                    })
                    .collect();
                writeln!(out, "{}", line.join("  ").trim_end())?;
            }
        }
    }
    out.flush().context("failed to write to stdout")?;
    Ok(ExitCode::SUCCESS)
}
