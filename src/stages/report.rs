//! `report`: one self-contained HTML file of a run's scores (see [`crate::report`]), with other
//! runs' scores drawn beside them: `simat report RUN [OTHER_RUN...] [--out report.html]`.
//!
//! The contact sheets sample `sheet_queries` queries with a seeded generator, so a report is the
//! same file for the same run and settings; thumbnails are downscaled JPEGs inside the page.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::engine::{Checks, PathKind, StageDef};
use crate::engine::{Manifest, Need, StageContext, StageReport, TableDecl};
use crate::error::{Error, Result};
use crate::report::{self, Pick, Report, RunScores, SheetQuery};
use crate::tables;
use crate::tables::retrievals::ScoresFile;

/// Configuration of the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct ReportConfig {
    /// Other runs whose scores are drawn beside this one's (their score stage must have run).
    #[arg(value_name = "OTHER_RUN")]
    pub compare: Vec<PathBuf>,
    /// Also write the report to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Queries on the contact sheets (drawn at random, seeded).
    #[arg(long, default_value_t = 12)]
    pub sheet_queries: usize,
    /// Seed of the contact sheets' draw.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Longest side of a thumbnail, in pixels.
    #[arg(long, default_value_t = 120)]
    pub thumbnail: u32,
    /// Rows per breakdown table (the groups with the most queries).
    #[arg(long, default_value_t = 200)]
    pub max_rows: usize,
}

impl Default for ReportConfig {
    fn default() -> Self {
        crate::config::clap_default()
    }
}

/// The report stage.
#[derive(Debug, Clone)]
pub struct ReportStage {
    /// Its configuration.
    pub config: ReportConfig,
}

/// The scores of a finished run, found through its manifest.
fn scores_of(run: &Path) -> Option<PathBuf> {
    Manifest::load(run)
        .ok()?
        .table_path(run, &tables::SCORES_JSON)
}

/// The label of a run directory: its name.
fn label_of(run: &Path) -> String {
    crate::report::labels(&[run.to_path_buf()]).remove(0)
}

fn scored_at(run: &Path) -> Option<String> {
    let m = Manifest::load(run).ok()?;
    let scores = m.table_path(run, &tables::SCORES_JSON)?;
    let stage = scores.parent()?.file_name()?.to_str()?;
    let started = m.stages.get(stage)?.started_unix;
    Some(
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(started),
        )
        .to_string(),
    )
}

impl StageDef for ReportStage {
    const NAME: &'static str = "report";
    const VERSION: u32 = 1;
    const ABOUT: &'static str =
        "An HTML report of the run's scores (and other runs' beside them): RUN/report/report.html";
    const PROVIDES: &'static [&'static TableDecl] = &[&tables::REPORT];
    type Config = ReportConfig;
    fn resolve_paths(c: &mut ReportConfig, base: &Path) {
        for p in &mut c.compare {
            crate::config::resolve(p, base);
        }
        if let Some(p) = &mut c.out {
            crate::config::resolve(p, base);
        }
    }
    fn build(config: ReportConfig) -> Result<Self> {
        if config.thumbnail < 16 || config.thumbnail > 1024 {
            return Err(crate::engine::bad::<Self>(
                "thumbnail",
                format!("{} pixels: expected 16 to 1024", config.thumbnail),
            ));
        }
        if config.sheet_queries > 1000 {
            return Err(crate::engine::bad::<Self>(
                "sheet_queries",
                format!(
                    "{}: at most 1000 (the page embeds every image)",
                    config.sheet_queries
                ),
            ));
        }
        let mut checks = Checks::<Self>::new();
        for run in &config.compare {
            if checks.path("compare", run, PathKind::Folder) && scores_of(run).is_none() {
                checks.bad(
                    "compare",
                    format!(
                        "`{}` has no scores: run its score stage first",
                        run.display()
                    ),
                );
            }
        }
        if let Some(parent) = config.out.as_deref().and_then(Path::parent) {
            if !parent.as_os_str().is_empty() {
                checks.path("out", parent, PathKind::Folder);
            }
        }
        checks.finish(ReportStage { config })
    }
    fn summary(run_dir: &Path) -> Result<Option<String>> {
        // The scores the page shows, then where it is.
        let scores = match scores_of(run_dir) {
            Some(p) => ScoresFile::read(&p)?.summary(),
            None => String::new(),
        };
        Ok(Some(format!(
            "{scores}\nreport: {}",
            run_dir.join(Self::NAME).join(tables::REPORT.file).display()
        )))
    }
    fn needs(&self) -> Vec<Need> {
        vec![
            Need::of(&tables::SCORES_JSON),
            Need::of(&tables::RESULTS),
            Need::of(&tables::BREAKDOWN),
            Need::of(&tables::DATASET),
            Need::of(&tables::TRIPLETS),
            Need::optional(&tables::CROPS),
        ]
    }
    fn fingerprint(&self) -> serde_json::Value {
        let mut c = serde_json::to_value(&self.config).expect("config serialises");
        // The compared runs' scores are inputs (hashed); their labels are what the page shows.
        c["compare"] = serde_json::json!(self
            .config
            .compare
            .iter()
            .map(|p| label_of(p))
            .collect::<Vec<_>>());
        c["out"] = serde_json::json!(self.config.out.is_some());
        c
    }
    fn inputs(&self) -> Result<Vec<(String, PathBuf)>> {
        self.config
            .compare
            .iter()
            .enumerate()
            .map(|(i, run)| match scores_of(run) {
                Some(p) if p.is_file() => Ok((format!("compare{i}"), p)),
                p => Err(Error::input_missing(
                    Self::NAME,
                    "the compared run's scores",
                    &p.unwrap_or_else(|| run.to_path_buf()),
                    "run its score stage first",
                )),
            })
            .collect()
    }
    fn run(&self, ctx: &StageContext) -> Result<StageReport> {
        let c = &self.config;
        let mut runs = vec![RunScores {
            label: label_of(ctx.run_dir),
            file: ScoresFile::read(&ctx.input(&tables::SCORES_JSON)?)?,
            scored_at: scored_at(ctx.run_dir),
        }];
        for run in &c.compare {
            runs.push(RunScores {
                label: label_of(run),
                file: ScoresFile::read(&scores_of(run).unwrap_or_else(|| run.to_path_buf()))?,
                scored_at: scored_at(run),
            });
        }
        let breakdown = tables::retrievals::read_breakdown(&ctx.input(&tables::BREAKDOWN)?)?;
        let results = tables::retrievals::read_results(&ctx.input(&tables::RESULTS)?)?;
        let heads = results
            .first()
            .map(|r| r.heads.clone())
            .unwrap_or_else(|| "none".into());
        let dataset = tables::dataset::Dataset::read(&ctx.input(&tables::DATASET)?)?;
        let captions = tables::regions::captions(&ctx.input(&tables::TRIPLETS)?)?;
        let crops = match ctx.maybe(&tables::CROPS) {
            Some(p) if p.is_file() => Some(tables::crops::crop_files(&p)?.0),
            _ => None,
        };
        let caption_of = |triplet: i64| {
            captions
                .get(&triplet)
                .cloned()
                .unwrap_or_else(|| format!("triplet {triplet}"))
        };
        let mut thumbnails = 0u64;
        let mut missing_pixels = 0u64;
        // A region retrieved at several λ is decoded once.
        let mut made: HashMap<i64, String> = HashMap::new();
        let mut thumb = |region: i64| -> Result<Option<String>> {
            let Some(files) = &crops else {
                return Ok(None);
            };
            let Some(p) = files.get(&region) else {
                missing_pixels += 1;
                return Ok(None);
            };
            thumbnails += 1;
            if let Some(uri) = made.get(&region) {
                return Ok(Some(uri.clone()));
            }
            let uri = report::thumbnail(p, c.thumbnail)?;
            made.insert(region, uri.clone());
            Ok(Some(uri))
        };

        // The sheets: queries of the first head set, drawn with the seed; one pick per λ.
        let mut by_query: BTreeMap<i64, Vec<&tables::retrievals::ResultRow>> = BTreeMap::new();
        for r in results.iter().filter(|r| r.heads == heads) {
            by_query.entry(r.query_id).or_default().push(r);
        }
        let mut query_ids: Vec<i64> = by_query.keys().copied().collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(c.seed);
        query_ids.shuffle(&mut rng);
        query_ids.truncate(c.sheet_queries);
        query_ids.sort_unstable();
        let mut sheets = Vec::new();
        for qid in query_ids {
            let mut rows = by_query.remove(&qid).expect("a drawn query");
            rows.sort_by(|a, b| a.lam.total_cmp(&b.lam));
            let first = rows[0];
            let source_triplet = dataset.triplet_id[first.dataset_id as usize];
            let mut picks = Vec::new();
            for r in &rows {
                let t = dataset.triplet_id[r.retrieved_dataset_id as usize];
                picks.push(Pick {
                    lam: r.lam,
                    success: r.success,
                    oracle_value: r.oracle_value,
                    caption: caption_of(t),
                    thumbnail: thumb(r.retrieved_region_id)?,
                });
            }
            sheets.push(SheetQuery {
                query_id: qid,
                split: first.split.clone(),
                field: first.field.clone(),
                value: first.value.clone(),
                target: first.target.clone(),
                source_caption: caption_of(source_triplet),
                target_caption: caption_of(first.target_triplet_id),
                thumbnail: thumb(first.region_id)?,
                picks,
            });
        }
        let report = Report {
            runs,
            breakdown,
            max_rows: c.max_rows,
            heads,
            sheets,
            has_pixels: crops.is_some(),
        };
        let html = report.to_html();
        let out = ctx.output(&tables::REPORT)?;
        crate::io::atomic::write_atomic(&out, html.as_bytes())?;
        if let Some(copy) = &c.out {
            crate::io::atomic::write_atomic(copy, html.as_bytes())?;
        }
        let mut r = StageReport::default();
        r.table(&tables::REPORT, None);
        r.count("bytes", html.len() as u64);
        r.count("runs", report.runs.len() as u64);
        r.count("sheet_queries", report.sheets.len() as u64);
        r.count("thumbnails", thumbnails);
        r.count("images_without_crop", missing_pixels);
        Ok(r)
    }
}
