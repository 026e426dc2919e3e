//! SQL over finished runs, on polars: every Parquet or Arrow table that a finished stage provides
//! is a table by its name (only the tables a query names are read), and several runs are
//! unioned under a `run` column so that models compare in one query.
//!
//! A sweep's run (`RUN/models/NAME/` for each model) is one run whose branch tables are the
//! union of the models' under a `model` column. A table name is qualified as `stage_table` only
//! when two finished stages of one run directory provide it. The run's label is its directory's
//! name, or the path as given when two runs share a name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arrow::record_batch::RecordBatch;
use polars::prelude::*;
use polars::sql::SQLContext;
use polars_io::ipc::{IpcReader, IpcWriter};
use polars_io::{SerReader, SerWriter};

use crate::engine::{Manifest, StageStatus, TableDecl, TableKind};
use crate::error::{Error, Result};

/// One table of one run: where it is and who wrote it.
#[derive(Debug, Clone)]
pub struct TableSource {
    /// The name it is registered under (`results`, or `retrieve_results` when ambiguous).
    pub name: String,
    /// The stage that wrote it.
    pub stage: String,
    /// Its declaration.
    pub table: &'static TableDecl,
    /// The file.
    pub path: PathBuf,
    /// The model whose branch of a sweep wrote it (`RUN/models/NAME/`): its rows carry a `model`
    /// column.
    pub model: Option<String>,
}

/// A run directory's queryable tables.
#[derive(Debug, Clone)]
pub struct RunTables {
    /// The value of the `run` column for this run's rows.
    pub label: String,
    /// The run directory.
    pub dir: PathBuf,
    /// Its tables, by registered name.
    pub tables: Vec<TableSource>,
}

/// The tables of a run directory: those of its finished stages whose file is there, and, for a
/// sweep's run, those of each model's branch, with the model's name.
pub fn run_tables(dir: &Path, label: &str) -> Result<RunTables> {
    if !Manifest::path(dir).is_file() {
        return Err(Error::data(
            dir,
            "no manifest.json: not a simat run directory (or nothing has run in it yet)",
        ));
    }
    let mut tables = scope_tables(dir, None)?;
    for (name, branch) in crate::sweep::branches_of(dir)? {
        tables.extend(scope_tables(&branch, Some(&name))?);
    }
    tables.sort_by(|a, b| a.name.cmp(&b.name).then(a.model.cmp(&b.model)));
    Ok(RunTables {
        label: label.to_string(),
        dir: dir.to_path_buf(),
        tables,
    })
}

/// The tables of one run directory's own finished stages (a sweep's branch: `model`).
fn scope_tables(dir: &Path, model: Option<&str>) -> Result<Vec<TableSource>> {
    let manifest = Manifest::load(dir)?;
    let mut found: Vec<(String, &'static TableDecl, PathBuf)> = Vec::new();
    for (stage, record) in &manifest.stages {
        if record.status != StageStatus::Done {
            continue;
        }
        // Manifests written before `provides` was recorded: the stage's declared tables.
        let names: Vec<String> = if record.provides.is_empty() {
            crate::stages::find(stage)
                .map(|e| e.provides().iter().map(|t| t.name.to_string()).collect())
                .unwrap_or_default()
        } else {
            record.provides.clone()
        };
        for name in names {
            let Some(table) = crate::tables::ALL_TABLES.iter().find(|t| t.name == name) else {
                continue;
            };
            if !matches!(table.kind, TableKind::Parquet | TableKind::Arrow) {
                continue;
            }
            let path = dir.join(stage).join(table.file);
            if path.is_file() {
                found.push((stage.clone(), table, path));
            }
        }
    }
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, t, _) in &found {
        *count.entry(t.name).or_default() += 1;
    }
    Ok(found
        .iter()
        .map(|(stage, table, path)| TableSource {
            name: if count[table.name] > 1 {
                format!("{stage}_{}", table.name)
            } else {
                table.name.to_string()
            },
            stage: stage.clone(),
            table,
            path: path.clone(),
            model: model.map(str::to_string),
        })
        .collect())
}

pub use crate::report::labels;

/// A registered table: its name, the runs that have it and its columns (name, type).
#[derive(Debug, Clone)]
pub struct Registered {
    /// The SQL name.
    pub name: String,
    /// The runs that have it, by label.
    pub runs: Vec<String>,
    /// The columns, `run` first.
    pub columns: Vec<(String, String)>,
    /// What it holds.
    pub about: &'static str,
}

/// SQL over runs. Opening reads only the tables' schemas; a query reads the tables it names
/// (with arrow-rs), hands them to polars as Arrow, and polars' SQL runs in memory.
///
/// Why not polars' own lazy file scans: in polars 0.55 those execute only in its streaming
/// engine, which also brings an HTTP and cloud-storage stack (tokio, hyper, rustls, ring,
/// object_store) that more than doubles simat's clean build; what it would save — reading only
/// the columns a query uses — does not matter at the size of a run's tables.
pub struct Catalog {
    tables: Vec<Registered>,
    sources: BTreeMap<String, Vec<(String, TableSource)>>,
}

fn polars_error(what: &str, e: PolarsError) -> Error {
    // Polars appends the plan it resolved; the first paragraph is the message.
    let text = e.to_string();
    let first = text
        .split("\n\n")
        .next()
        .unwrap_or(&text)
        .trim()
        .to_string();
    Error::Query(format!("{what}: {first}"))
}

/// A table file as a polars frame: an Arrow IPC file as it is; a Parquet file read with arrow-rs
/// and handed over as Arrow IPC in memory.
fn load(source: &TableSource) -> Result<DataFrame> {
    let polars_read = |e| polars_error(&format!("`{}`", source.path.display()), e);
    if crate::io::sniff(&source.path)? == crate::io::FileKind::ArrowIpc {
        let file = std::fs::File::open(&source.path)
            .map_err(|e| Error::io("failed to open", &source.path, e))?;
        return IpcReader::new(file).finish().map_err(polars_read);
    }
    let batch = crate::io::read_all(&source.path)?;
    let mut buf = Vec::new();
    {
        let mut w = arrow::ipc::writer::FileWriter::try_new(&mut buf, &batch.schema())
            .map_err(|e| Error::columnar(&source.path, e))?;
        w.write(&batch)
            .and_then(|_| w.finish())
            .map_err(|e| Error::columnar(&source.path, e))?;
    }
    IpcReader::new(std::io::Cursor::new(buf))
        .finish()
        .map_err(polars_read)
}

/// The identifiers of a SQL text, lower-cased (to find the tables it names).
fn words(sql: &str) -> Vec<String> {
    sql.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(|w| w.to_ascii_lowercase())
        .collect()
}

impl Catalog {
    /// The tables of `runs`, by name; a table several runs have is their union (by column name;
    /// a column a run lacks is null there).
    pub fn open(runs: &[RunTables]) -> Result<Catalog> {
        let mut sources: BTreeMap<String, Vec<(String, TableSource)>> = BTreeMap::new();
        for run in runs {
            for t in &run.tables {
                sources
                    .entry(t.name.clone())
                    .or_default()
                    .push((run.label.clone(), t.clone()));
            }
        }
        let mut tables = Vec::new();
        for (name, parts) in &sources {
            let mut columns = vec![("run".to_string(), "Utf8".to_string())];
            if parts.iter().any(|(_, t)| t.model.is_some()) {
                columns.push(("model".to_string(), "Utf8".to_string()));
            }
            for (_, t) in parts {
                for f in crate::io::read_schema(&t.path)?.fields() {
                    if !columns.iter().any(|(c, _)| c == f.name()) {
                        columns.push((f.name().clone(), f.data_type().to_string()));
                    }
                }
            }
            tables.push(Registered {
                name: name.clone(),
                runs: parts.iter().map(|(r, _)| r.clone()).collect(),
                columns,
                about: parts[0].1.table.about,
            });
        }
        Ok(Catalog { tables, sources })
    }

    /// The registered tables, by name.
    pub fn tables(&self) -> &[Registered] {
        &self.tables
    }

    /// The frame of table `name`: every run's rows, `run` first.
    fn frame(&self, name: &str) -> Result<LazyFrame> {
        let mut frames = Vec::new();
        for (label, source) in &self.sources[name] {
            let df = load(source)?;
            let mut cols: Vec<Expr> = vec![lit(label.as_str()).alias("run")];
            if let Some(m) = &source.model {
                cols.push(lit(m.as_str()).alias("model"));
            }
            cols.extend(
                df.get_column_names()
                    .into_iter()
                    .filter(|n| n.as_str() != "run")
                    .filter(|n| source.model.is_none() || n.as_str() != "model")
                    .map(|n| col(n.clone())),
            );
            frames.push(df.lazy().select(cols));
        }
        if frames.len() == 1 {
            return Ok(frames.pop().expect("one"));
        }
        concat_lf_diagonal(
            frames,
            UnionArgs {
                to_supertypes: true,
                ..Default::default()
            },
        )
        .map_err(|e| polars_error(&format!("cannot union table `{name}` across runs"), e))
    }

    /// Run `sql`; the result as Arrow record batches. An unknown table or column is an error
    /// that lists the tables, or the columns of the tables the query names.
    pub fn execute(&mut self, sql: &str) -> Result<Vec<RecordBatch>> {
        let words = words(sql);
        let mut ctx = SQLContext::new();
        for t in &self.tables {
            if words.contains(&t.name) {
                ctx.register(&t.name, self.frame(&t.name)?);
            }
        }
        let mut df = ctx
            .execute(sql)
            .and_then(|lf| lf.collect())
            .map_err(|e| self.explain(&words, e))?;
        to_arrow(&mut df)
    }

    fn explain(&self, words: &[String], e: PolarsError) -> Error {
        let listed = |names: Vec<&Registered>| -> String {
            names
                .iter()
                .map(|t| {
                    let cols: Vec<&str> = t.columns.iter().map(|(c, _)| c.as_str()).collect();
                    format!("  {}: {}", t.name, cols.join(", "))
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        let base = polars_error("SQL", e);
        let Error::Query(message) = &base else {
            return base;
        };
        if message.contains("relation '") && message.contains("was not found") {
            let names: Vec<&str> = self.tables.iter().map(|t| t.name.as_str()).collect();
            return Error::Query(format!(
                "{message}\nthe tables are: {}\n(`simat query RUN --tables` lists their columns)",
                names.join(", ")
            ));
        }
        if message.contains("not found") || message.contains("unable to find column") {
            let named: Vec<&Registered> = self
                .tables
                .iter()
                .filter(|t| words.contains(&t.name))
                .collect();
            let list = if named.is_empty() {
                listed(self.tables.iter().collect())
            } else {
                listed(named)
            };
            return Error::Query(format!("{message}\nthe columns are:\n{list}"));
        }
        base
    }
}

/// A polars frame as Arrow record batches (through an in-memory Arrow IPC file, the format both
/// sides share).
pub fn to_arrow(df: &mut DataFrame) -> Result<Vec<RecordBatch>> {
    let mut buf: Vec<u8> = Vec::new();
    IpcWriter::new(&mut buf)
        .with_compat_level(CompatLevel::oldest())
        .finish(df)
        .map_err(|e| polars_error("cannot hand the result over", e))?;
    let reader = arrow::ipc::reader::FileReader::try_new(std::io::Cursor::new(buf), None)
        .map_err(|e| Error::Internal(format!("reading polars' IPC: {e}")))?;
    reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Internal(format!("reading polars' IPC: {e}")))
}
