//! `simat query` (SQL over runs) and `simat export` (an embedding store for other tools).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::query::{labels, run_tables, Catalog, RunTables};
use crate::ui::Ui;

/// How `simat query` writes its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns, for reading.
    Table,
    /// Comma-separated values with a header.
    Csv,
    /// A JSON array of objects.
    Json,
    /// A Parquet file (needs --out).
    Parquet,
}

/// `simat query RUN... SQL` (or `--tables`).
pub fn query(
    args: &[String],
    list_tables: bool,
    format: Option<Format>,
    out: Option<&Path>,
    max_rows: usize,
    ui: &Ui,
) -> Result<ExitCode> {
    let (runs, sql) = if list_tables {
        (args, None)
    } else {
        anyhow::ensure!(
            args.len() >= 2,
            "give one or more run directories, then the SQL (or --tables): simat query RUN... \"SELECT ...\""
        );
        (&args[..args.len() - 1], Some(args[args.len() - 1].as_str()))
    };
    anyhow::ensure!(!runs.is_empty(), "give one or more run directories");
    let dirs: Vec<PathBuf> = runs.iter().map(PathBuf::from).collect();
    let labels = labels(&dirs);
    let runs: Vec<RunTables> = dirs
        .iter()
        .zip(&labels)
        .map(|(d, l)| run_tables(d, l))
        .collect::<crate::error::Result<_>>()?;
    let mut catalog = Catalog::open(&runs)?;
    let Some(sql) = sql else {
        print_tables(&catalog, &runs)?;
        return Ok(ExitCode::SUCCESS);
    };
    let start = std::time::Instant::now();
    let batches = catalog.execute(sql)?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let format = format.unwrap_or(if out.is_some_and(is_parquet_path) {
        Format::Parquet
    } else {
        Format::Table
    });
    match out {
        Some(path) => {
            write_file(path, format, &batches)?;
            ui.status(
                "Wrote",
                format!(
                    "{rows} rows to {} in {:.2}s",
                    path.display(),
                    start.elapsed().as_secs_f64()
                ),
            );
        }
        None => {
            anyhow::ensure!(
                format != Format::Parquet,
                "--format parquet writes a file: give --out FILE"
            );
            let stdout = std::io::stdout();
            let mut w = std::io::BufWriter::new(stdout.lock());
            match format {
                Format::Table => {
                    write_aligned(&mut w, &batches, max_rows)?;
                    if rows > max_rows {
                        w.flush()?;
                        ui.warn(format!(
                            "{} more rows not shown (--max-rows, or --format csv / --out FILE for all)",
                            rows - max_rows
                        ));
                    }
                }
                _ => write_text(&mut w, format, &batches)?,
            }
            w.flush()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn is_parquet_path(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "parquet")
}

fn print_tables(catalog: &Catalog, runs: &[RunTables]) -> Result<()> {
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::new(stdout.lock());
    for t in catalog.tables() {
        let from: Vec<String> = runs
            .iter()
            .flat_map(|r| r.tables.iter().filter(|s| s.name == t.name))
            .map(|s| s.stage.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        writeln!(
            w,
            "{} ({}; from {} in {}): {}",
            t.name,
            t.about,
            from.join(", "),
            t.runs.join(", "),
            t.columns
                .iter()
                .map(|(c, d)| format!("{c} {d}"))
                .collect::<Vec<_>>()
                .join(", ")
        )?;
    }
    w.flush()?;
    Ok(())
}

fn write_text(w: &mut impl Write, format: Format, batches: &[RecordBatch]) -> Result<()> {
    match format {
        Format::Csv => {
            let mut cw = arrow::csv::WriterBuilder::new().with_header(true).build(w);
            for b in batches {
                cw.write(b)?;
            }
        }
        Format::Json => {
            let mut jw = arrow::json::ArrayWriter::new(&mut *w);
            for b in batches {
                jw.write(b)?;
            }
            jw.finish()?;
            writeln!(w)?;
        }
        Format::Table | Format::Parquet => unreachable!("handled by the caller"),
    }
    Ok(())
}

fn write_file(path: &Path, format: Format, batches: &[RecordBatch]) -> Result<()> {
    if format == Format::Parquet {
        let schema = batches
            .first()
            .map(|b| b.schema())
            .unwrap_or_else(|| Arc::new(Schema::empty()));
        let mut tw = crate::io::TableWriter::create(path, schema)?;
        for b in batches {
            tw.write(b)?;
        }
        tw.finish()?;
        return Ok(());
    }
    let mut f = crate::io::atomic::AtomicFile::create(path)?;
    match format {
        Format::Table => write_aligned(f.writer(), batches, usize::MAX)?,
        _ => write_text(f.writer(), format, batches)?,
    }
    f.commit()?;
    Ok(())
}

/// Aligned columns: numbers to the right, text to the left, long cells cut with `…`.
fn write_aligned(w: &mut impl Write, batches: &[RecordBatch], max_rows: usize) -> Result<()> {
    const MAX_CELL: usize = 48;
    let Some(first) = batches.first() else {
        writeln!(w, "(no rows)")?;
        return Ok(());
    };
    let schema = first.schema();
    let opts = FormatOptions::default().with_null("null");
    let mut cells: Vec<Vec<String>> = vec![Vec::new(); schema.fields().len()];
    'outer: for b in batches {
        let formatters: Vec<ArrayFormatter> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts))
            .collect::<std::result::Result<_, _>>()?;
        for row in 0..b.num_rows() {
            if cells[0].len() >= max_rows {
                break 'outer;
            }
            for (c, f) in formatters.iter().enumerate() {
                let mut s = f.value(row).to_string();
                if s.chars().count() > MAX_CELL {
                    s = s.chars().take(MAX_CELL - 1).collect::<String>() + "…";
                }
                cells[c].push(s);
            }
        }
    }
    let numeric: Vec<bool> = schema
        .fields()
        .iter()
        .map(|f| f.data_type().is_numeric())
        .collect();
    let widths: Vec<usize> = schema
        .fields()
        .iter()
        .zip(&cells)
        .map(|(f, col)| {
            col.iter()
                .map(|s| s.chars().count())
                .chain([f.name().chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |w: &mut dyn Write, values: Vec<&str>| -> std::io::Result<()> {
        let mut parts = Vec::new();
        for (c, v) in values.iter().enumerate() {
            let pad = widths[c] - v.chars().count();
            parts.push(if numeric[c] {
                format!("{}{v}", " ".repeat(pad))
            } else {
                format!("{v}{}", " ".repeat(pad))
            });
        }
        writeln!(w, "{}", parts.join("  ").trim_end())
    };
    line(
        w,
        schema.fields().iter().map(|f| f.name().as_str()).collect(),
    )?;
    line(
        w,
        widths
            .iter()
            .map(|&n| "─".repeat(n))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
    )?;
    let rows = cells.first().map_or(0, Vec::len);
    for r in 0..rows {
        line(w, cells.iter().map(|c| c[r].as_str()).collect())?;
    }
    Ok(())
}

/// `simat export STORE --out FILE`: an embedding store (`.arrow`) as `.npy` (float32 N × D) with
/// its keys beside it (`<stem>.keys.csv`), or as Parquet with the vectors in a `FLOAT[D]`
/// column (a list column DuckDB, polars and pandas read).
pub fn export(store: &Path, out: &Path, ui: &Ui) -> Result<ExitCode> {
    let (batch, m) = crate::io::store::read_table_embeddings(store)
        .with_context(|| format!("`{}`: not an embedding store", store.display()))?;
    let vec_index = crate::io::store::embedding_column(&batch.schema()).expect("read as a store");
    let (rows, dim) = (m.rows, m.cols);
    let ext = out.extension().and_then(|e| e.to_str()).unwrap_or("");
    match ext {
        "npy" => {
            crate::io::store::write_npy(out, &m)?;
            let keys_path = out.with_extension("keys.csv");
            // `row`, then every column but the vectors.
            let keys = batch.project(
                &(0..batch.num_columns())
                    .filter(|&i| i != vec_index)
                    .collect::<Vec<_>>(),
            )?;
            let mut fields = vec![Arc::new(Field::new("row", DataType::UInt64, false))];
            fields.extend(keys.schema().fields().iter().cloned());
            let mut cols: Vec<ArrayRef> = vec![Arc::new(
                arrow::array::UInt64Array::from_iter_values(0..rows as u64),
            )];
            cols.extend(keys.columns().iter().cloned());
            let keys_batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?;
            let mut f = crate::io::atomic::AtomicFile::create(&keys_path)?;
            write_text(f.writer(), Format::Csv, &[keys_batch])?;
            f.commit()?;
            ui.status(
                "Exported",
                format!(
                    "{rows} × {dim} float32 to {} (keys by row in {})",
                    out.display(),
                    keys_path.display()
                ),
            );
        }
        "parquet" => {
            // FixedSizeList becomes a Parquet LIST; the Arrow schema kept in its metadata
            // restores FLOAT[D] where the reader honours it.
            crate::io::write_table(out, &batch)?;
            ui.status(
                "Exported",
                format!("{rows} rows (D = {dim}) to {}", out.display()),
            );
        }
        _ => anyhow::bail!(
            "`{}`: give a .npy (vectors, keys beside it in .keys.csv) or a .parquet output",
            out.display()
        ),
    }
    Ok(ExitCode::SUCCESS)
}
