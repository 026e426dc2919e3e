//! The HTML report: one self-contained file (inline CSS, SVG, a few lines of script for sorting,
//! images as data URIs; nothing fetched) that a person reads in any browser.
//!
//! What it shows, from a run's `score` outputs (and other runs' scores beside them): what the
//! numbers are of (provenance), score vs λ per split and field, the headline table, the best and
//! worst source words and relations, every breakdown as a sortable table with inline bars, and
//! contact sheets — a seeded sample of queries with the query image, the transformation, the
//! image retrieved at each λ marked by the oracle, and the target caption. Where the run has no
//! pixels (the official release without Visual Genome), the sheets show captions.

pub mod svg;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::path::{Path, PathBuf};

use base64::Engine as _;

use crate::error::{Error, Result};
use crate::tables::retrievals::{GroupScore, ScoreRow, ScoresFile};

/// HTML-escape text (element content and attribute values).
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One run's scores and what they are of.
#[derive(Debug, Clone)]
pub struct RunScores {
    /// The run's label (its directory's name).
    pub label: String,
    /// `scores.json`.
    pub file: ScoresFile,
    /// When its score stage ran (RFC 3339, UTC).
    pub scored_at: Option<String>,
}

/// What a query retrieved at one λ.
#[derive(Debug, Clone)]
pub struct Pick {
    /// λ.
    pub lam: f64,
    /// The oracle's verdict.
    pub success: bool,
    /// The oracle's value, when it has one.
    pub oracle_value: Option<f64>,
    /// The retrieved image's own caption.
    pub caption: String,
    /// Its thumbnail (a data URI), when the run has pixels.
    pub thumbnail: Option<String>,
}

/// One query of a contact sheet.
#[derive(Debug, Clone)]
pub struct SheetQuery {
    /// Its id.
    pub query_id: i64,
    /// dev or test.
    pub split: String,
    /// The slot it changes.
    pub field: String,
    /// The source word.
    pub value: String,
    /// The target word.
    pub target: String,
    /// The query image's caption.
    pub source_caption: String,
    /// The caption the retrieved image should show.
    pub target_caption: String,
    /// The query image's thumbnail.
    pub thumbnail: Option<String>,
    /// Per λ of the sheet.
    pub picks: Vec<Pick>,
}

/// Everything the report shows.
#[derive(Debug, Clone)]
pub struct Report {
    /// The run and the runs compared with it (the first is the run).
    pub runs: Vec<RunScores>,
    /// The run's breakdowns.
    pub breakdown: Vec<GroupScore>,
    /// Rows per breakdown table.
    pub max_rows: usize,
    /// The head set the breakdowns and sheets are of.
    pub heads: String,
    /// The sampled queries.
    pub sheets: Vec<SheetQuery>,
    /// Whether the sheets show images (else captions).
    pub has_pixels: bool,
}

/// A point of SIMAT against τ: τ, the test score, its interval.
pub type TauPoint = (f64, f64, Option<(f64, f64)>);

/// Colours of the plots' lines, distinguishable and print-safe.
const PALETTE: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
];

/// A breakdown group: its queries and its score per λ (by the λ's bits).
type Group = (i64, BTreeMap<u64, f64>);

fn fmt_lam(l: f64) -> String {
    let s = format!("{l}");
    s.strip_suffix(".0").map(str::to_string).unwrap_or(s)
}

impl Report {
    fn series_keys(&self) -> Vec<(usize, String)> {
        let mut keys = Vec::new();
        for (r, run) in self.runs.iter().enumerate() {
            let mut seen = BTreeSet::new();
            for row in &run.file.scores {
                if seen.insert(row.heads.clone()) {
                    keys.push((r, row.heads.clone()));
                }
            }
        }
        keys
    }

    fn series_name(&self, r: usize, heads: &str) -> String {
        let several_runs = self.runs.len() > 1;
        let text_only = crate::tables::retrievals::TEXT_ONLY;
        let set = match heads {
            "none" => None,
            h if h == text_only => Some("text only".to_string()),
            h => match h.strip_prefix(text_only).and_then(|r| r.strip_prefix(':')) {
                Some(inner) => Some(format!("text only, heads {inner}")),
                None => Some(format!("heads {h}")),
            },
        };
        match (several_runs, set) {
            (true, None) => self.runs[r].label.clone(),
            (true, Some(s)) => format!("{} · {s}", self.runs[r].label),
            (false, None) => "no heads".to_string(),
            (false, Some(s)) => s,
        }
    }

    /// The main series' (run's first head set) best λ on all queries, all fields.
    pub fn best_lambda(&self) -> Option<f64> {
        self.runs
            .first()?
            .file
            .scores
            .iter()
            .filter(|r| r.heads == self.heads && r.split == "all" && r.field == "all")
            .filter(|r| r.score.is_finite())
            .max_by(|a, b| {
                a.score
                    .total_cmp(&b.score)
                    .then(b.lambda.total_cmp(&a.lambda))
            })
            .map(|r| r.lambda)
    }

    /// The whole document.
    pub fn to_html(&self) -> String {
        let mut h = String::new();
        let title = format!(
            "SIMAT report: {}",
            self.runs
                .iter()
                .map(|r| r.label.as_str())
                .collect::<Vec<_>>()
                .join(" vs ")
        );
        let _ = write!(
            h,
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<header><h1>{}</h1><p class=\"lead\">The SIMAT score is the weighted share of transformation queries (image + λ·(target word − source word)) whose first retrieved image the oracle accepts, ×100.</p></header>\n",
            esc(&title),
            esc(&title)
        );
        self.provenance(&mut h);
        self.plots(&mut h);
        self.tau_plot(&mut h);
        self.headline(&mut h);
        self.leaderboard(&mut h);
        self.extremes(&mut h);
        self.breakdowns(&mut h);
        self.contact_sheets(&mut h);
        let _ = write!(h, "<script>{SCRIPT}</script>\n</body>\n</html>\n");
        h
    }

    fn provenance(&self, h: &mut String) {
        h.push_str("<section id=\"provenance\"><h2>What the numbers are of</h2><table class=\"prov\"><thead><tr><th>run</th><th>queries</th><th>model / embeddings</th><th>heads</th><th>oracle</th><th>threshold</th><th>simat</th><th>scored</th></tr></thead><tbody>");
        for run in &self.runs {
            let p = &run.file.provenance;
            let model = p["embeddings"]["model"]["name"]
                .as_str()
                .map(str::to_string)
                .or_else(|| {
                    p["embeddings"]["source"]
                        .as_str()
                        .map(|s| format!("from {s}"))
                })
                .unwrap_or_else(|| "?".into());
            let heads: Vec<String> = p["heads"]["sets"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s["name"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let oracle = p["oracle"]["file"]
                .as_str()
                .or(p["oracle"]["kind"].as_str())
                .unwrap_or("?");
            let oracle_model = p["oracle"]["model"]["name"]
                .as_str()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default();
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{} ({} queries)</td><td>{}</td><td>{}</td><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&run.label),
                esc(p["query_set"].as_str().unwrap_or("?")),
                p["queries"]["rows"],
                esc(&model),
                esc(&if heads.is_empty() { "none".to_string() } else { heads.join(", ") }),
                esc(oracle),
                esc(&oracle_model),
                p["threshold"],
                esc(p["simat_version"].as_str().unwrap_or("?")),
                esc(run.scored_at.as_deref().unwrap_or("?")),
            );
        }
        h.push_str("</tbody></table></section>\n");
    }

    fn plots(&self, h: &mut String) {
        let keys = self.series_keys();
        h.push_str("<section id=\"plots\"><h2>Score vs λ</h2><p>Shaded: each score's bootstrap interval.</p><ul class=\"legend\">");
        for (i, (r, heads)) in keys.iter().enumerate() {
            let _ = write!(
                h,
                "<li><span class=\"swatch\" style=\"background:{}\"></span>{}</li>",
                PALETTE[i % PALETTE.len()],
                esc(&self.series_name(*r, heads))
            );
        }
        h.push_str("</ul><div class=\"plots\">");
        let splits = self.splits();
        for split in &splits {
            for field in ["all", "subj", "rel", "obj"] {
                let series: Vec<svg::Series> = keys
                    .iter()
                    .enumerate()
                    .map(|(i, (r, heads))| {
                        let mut points: Vec<(f64, f64)> = self.runs[*r]
                            .file
                            .scores
                            .iter()
                            .filter(|s| s.heads == *heads && s.split == *split && s.field == field)
                            .map(|s| (s.lambda, s.score))
                            .collect();
                        points.sort_by(|a, b| a.0.total_cmp(&b.0));
                        let mut band: Vec<(f64, f64, f64)> = self.runs[*r]
                            .file
                            .scores
                            .iter()
                            .filter(|s| s.heads == *heads && s.split == *split && s.field == field)
                            .filter_map(|s| s.ci.map(|(lo, hi)| (s.lambda, lo, hi)))
                            .collect();
                        band.sort_by(|a, b| a.0.total_cmp(&b.0));
                        svg::Series {
                            name: self.series_name(*r, heads),
                            colour: PALETTE[i % PALETTE.len()].to_string(),
                            points,
                            band,
                        }
                    })
                    .collect();
                let field_name = match field {
                    "all" => "all fields",
                    "subj" => "subject changed",
                    "rel" => "relation changed",
                    _ => "object changed",
                };
                let title = format!("{split} queries, {field_name}");
                h.push_str(&svg::line_plot(
                    &svg::Plot {
                        title: &title,
                        x_label: "λ",
                        y_label: "SIMAT score (%)",
                        size: (300.0, 210.0),
                    },
                    &series,
                    &format!("plot-{split}-{field}"),
                ));
            }
        }
        h.push_str("</div></section>\n");
    }

    /// Per run, (τ, test score, its interval) of each head set `adapt` trained at τ
    /// (`head_tau{τ}`), at the λ of its best dev score (the smallest on a tie); without dev and
    /// test splits, the best λ on all queries. All fields.
    pub fn tau_points(&self) -> Vec<Vec<TauPoint>> {
        self.runs
            .iter()
            .map(|run| {
                let rows = &run.file.scores;
                let (pick, report) = if rows.iter().any(|r| r.split == "dev")
                    && rows.iter().any(|r| r.split == "test")
                {
                    ("dev", "test")
                } else {
                    ("all", "all")
                };
                let mut taus: Vec<(f64, &str)> = Vec::new();
                for r in rows {
                    if let Some(t) = r
                        .heads
                        .strip_prefix("head_tau")
                        .and_then(|t| t.parse().ok())
                    {
                        if !taus.iter().any(|(_, h)| *h == r.heads) {
                            taus.push((t, &r.heads));
                        }
                    }
                }
                taus.sort_by(|a, b| a.0.total_cmp(&b.0));
                taus.iter()
                    .filter_map(|(tau, heads)| {
                        let cell = |split: &'static str| {
                            rows.iter().filter(move |r| {
                                r.heads == *heads && r.split == split && r.field == "all"
                            })
                        };
                        let best = cell(pick).filter(|r| r.score.is_finite()).max_by(|a, b| {
                            a.score
                                .total_cmp(&b.score)
                                .then(b.lambda.total_cmp(&a.lambda))
                        })?;
                        let at = cell(report).find(|r| r.lambda == best.lambda)?;
                        Some((*tau, at.score, at.ci))
                    })
                    .collect()
            })
            .collect()
    }

    /// SIMAT against τ, a line per run (a text encoder's branch of a sweep), when runs scored
    /// heads of several τ.
    fn tau_plot(&self, h: &mut String) {
        let points = self.tau_points();
        if !points.iter().any(|p| p.len() > 1) {
            return;
        }
        let series: Vec<svg::Series> = points
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.is_empty())
            .map(|(r, p)| svg::Series {
                name: self.runs[r].label.clone(),
                colour: PALETTE[r % PALETTE.len()].to_string(),
                points: p.iter().map(|(t, s, _)| (t.log10(), *s)).collect(),
                band: p
                    .iter()
                    .filter_map(|(t, _, ci)| ci.map(|(lo, hi)| (t.log10(), lo, hi)))
                    .collect(),
            })
            .collect();
        h.push_str("<section id=\"tau\"><h2>Score vs τ</h2><p>Each head set `adapt` trained at temperature τ, scored on test at the λ of its best dev score; a line per run (per text encoder, in a sweep over text models).</p><ul class=\"legend\">");
        for s in &series {
            let _ = write!(
                h,
                "<li><span class=\"swatch\" style=\"background:{}\"></span>{}</li>",
                s.colour,
                esc(&s.name)
            );
        }
        h.push_str("</ul><div class=\"plots\">");
        h.push_str(&svg::line_plot(
            &svg::Plot {
                title: "test queries, all fields",
                x_label: "log₁₀ τ",
                y_label: "SIMAT score (%)",
                size: (420.0, 260.0),
            },
            &series,
            "plot-tau",
        ));
        h.push_str("</div></section>\n");
    }

    fn splits(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for run in &self.runs {
            for r in &run.file.scores {
                if !v.contains(&r.split) {
                    v.push(r.split.clone());
                }
            }
        }
        // all first: the headline.
        v.sort_by_key(|s| (s != "all", s.clone()));
        v
    }

    fn headline(&self, h: &mut String) {
        h.push_str("<section id=\"scores\"><h2>Scores</h2><table class=\"sortable\"><thead><tr><th>run</th><th>heads</th><th>λ</th><th>split</th><th>subj</th><th>rel</th><th>obj</th><th>all</th><th>interval (all)</th><th>queries</th></tr></thead><tbody>");
        for run in &self.runs {
            let mut keys: Vec<(&str, f64, &str)> = Vec::new();
            for r in &run.file.scores {
                let k = (r.heads.as_str(), r.lambda, r.split.as_str());
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
            for (heads, lam, split) in keys {
                let get = |f: &str| -> Option<&ScoreRow> {
                    run.file.scores.iter().find(|r| {
                        r.heads == heads && r.lambda == lam && r.split == split && r.field == f
                    })
                };
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td data-v=\"{lam}\">{}</td><td>{}</td>",
                    esc(&run.label),
                    esc(heads),
                    fmt_lam(lam),
                    esc(split)
                );
                for f in ["subj", "rel", "obj", "all"] {
                    match get(f) {
                        Some(r) if r.score.is_finite() => bar_cell(h, r.score),
                        _ => h.push_str("<td data-v=\"-1\">–</td>"),
                    }
                }
                match get("all").and_then(|r| r.ci) {
                    Some((lo, hi)) => {
                        let _ = write!(h, "<td data-v=\"{lo}\">[{lo:.2}, {hi:.2}]</td>");
                    }
                    None => h.push_str("<td data-v=\"-1\">–</td>"),
                }
                let n = get("all").map_or(0, |r| r.n_queries);
                let _ = write!(h, "<td data-v=\"{n}\">{n}</td></tr>");
            }
        }
        h.push_str("</tbody></table></section>\n");
    }

    /// One row per run × head set, λ chosen on dev and reported on test, with the test
    /// score's interval: `simat leaderboard`'s rows (protocol best-dev).
    fn leaderboard(&self, h: &mut String) {
        let mut rows = Vec::new();
        let mut without = Vec::new();
        for run in &self.runs {
            match crate::leaderboard::entries(
                &run.label,
                &run.file,
                &[],
                crate::leaderboard::Protocol::BestDev,
                std::path::Path::new("scores.json"),
            ) {
                Ok(e) => rows.extend(e),
                Err(_) => without.push(run.label.as_str()),
            }
        }
        rows.sort_by(|a, b| b.test.total_cmp(&a.test));
        h.push_str("<section id=\"leaderboard\"><h2>Leaderboard</h2><p>λ chosen on dev (the best dev score), reported on test, with the test score's bootstrap interval; best first. <code>simat leaderboard</code> gives the same rows.</p>");
        if !without.is_empty() {
            let _ = write!(
                h,
                "<p>Not ranked (no dev and test scores at one λ): {}.</p>",
                esc(&without.join(", "))
            );
        }
        h.push_str("<table class=\"sortable\"><thead><tr><th>run</th><th>model</th><th>heads</th><th>λ</th><th>dev</th><th>test</th><th>interval</th><th>subj</th><th>rel</th><th>obj</th><th>queries</th></tr></thead><tbody>");
        let opt = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.2}"));
        for e in &rows {
            let interval = match (e.test_ci_low, e.test_ci_high) {
                (Some(lo), Some(hi)) => format!("[{lo:.2}, {hi:.2}]"),
                _ => "–".into(),
            };
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td data-v=\"{}\">{}</td><td>{}</td><td data-v=\"{}\">{:.2}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&e.run),
                esc(&e.model),
                esc(&e.heads),
                e.lam,
                fmt_lam(e.lam),
                opt(e.dev),
                e.test,
                e.test,
                interval,
                opt(e.test_subj),
                opt(e.test_rel),
                opt(e.test_obj),
                e.test_queries
            );
        }
        h.push_str("</tbody></table></section>\n");
    }

    fn extremes(&self, h: &mut String) {
        let Some(best) = self.best_lambda() else {
            return;
        };
        let _ = write!(
            h,
            "<section id=\"extremes\"><h2>Best and worst at λ = {} ({}; all queries; groups of at least 5 queries)</h2><div class=\"extremes\">",
            fmt_lam(best),
            esc(&self.heads)
        );
        for (dim, label) in [("source_word", "source words"), ("relation", "relations")] {
            let mut rows: Vec<&GroupScore> = self
                .breakdown
                .iter()
                .filter(|g| {
                    g.dimension == dim
                        && g.lam == best
                        && g.split == "all"
                        && g.heads == self.heads
                        && g.queries >= 5
                })
                .collect();
            rows.sort_by(|a, b| a.score.total_cmp(&b.score).then(a.key.cmp(&b.key)));
            for (which, list) in [
                ("worst", rows.iter().take(8).collect::<Vec<_>>()),
                ("best", rows.iter().rev().take(8).collect::<Vec<_>>()),
            ] {
                let _ = write!(h, "<div><h3>{which} {label}</h3><table><thead><tr><th>{}</th><th>score</th><th>queries</th></tr></thead><tbody>", esc(dim));
                for g in list {
                    let _ = write!(h, "<tr><td>{}</td>", esc(&g.key));
                    bar_cell(h, g.score);
                    let _ = write!(h, "<td>{}</td></tr>", g.queries);
                }
                h.push_str("</tbody></table></div>");
            }
        }
        h.push_str("</div></section>\n");
    }

    fn breakdowns(&self, h: &mut String) {
        let lams: Vec<f64> = {
            let mut v: Vec<f64> = self
                .breakdown
                .iter()
                .filter(|g| g.heads == self.heads)
                .map(|g| g.lam)
                .collect();
            v.sort_by(f64::total_cmp);
            v.dedup();
            v
        };
        let _ = write!(
            h,
            "<section id=\"breakdowns\"><h2>Breakdowns</h2><p>Per group of queries, all splits, {}; click a column to sort.</p>",
            esc(&self.heads)
        );
        for (dim, label) in [
            ("source_word", "Source word"),
            ("target_word", "Target word"),
            ("relation", "Relation"),
            ("subject", "Subject"),
            ("object", "Object"),
            ("triplet", "Triplet"),
        ] {
            // key → (queries, score per λ)
            let mut groups: BTreeMap<&str, Group> = BTreeMap::new();
            for g in self
                .breakdown
                .iter()
                .filter(|g| g.dimension == dim && g.split == "all" && g.heads == self.heads)
            {
                let e = groups.entry(&g.key).or_insert((g.queries, BTreeMap::new()));
                e.1.insert(g.lam.to_bits(), g.score);
            }
            if groups.is_empty() {
                continue;
            }
            let mut order: Vec<(&str, &Group)> = groups.iter().map(|(k, v)| (*k, v)).collect();
            order.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.0.cmp(b.0)));
            let shown = order.len().min(self.max_rows);
            let _ = write!(
                h,
                "<details{}><summary>{label} ({} groups{})</summary><table class=\"sortable\"><thead><tr><th>{}</th><th>queries</th>",
                if dim == "relation" { " open" } else { "" },
                order.len(),
                if shown < order.len() {
                    format!(", the {shown} with the most queries shown")
                } else {
                    String::new()
                },
                esc(dim)
            );
            for l in &lams {
                let _ = write!(h, "<th>λ = {}</th>", fmt_lam(*l));
            }
            h.push_str("</tr></thead><tbody>");
            for (key, (n, by_lam)) in order.into_iter().take(shown) {
                let _ = write!(h, "<tr><td>{}</td><td data-v=\"{n}\">{n}</td>", esc(key));
                for l in &lams {
                    match by_lam.get(&l.to_bits()) {
                        Some(s) => bar_cell(h, *s),
                        None => h.push_str("<td data-v=\"-1\">–</td>"),
                    }
                }
                h.push_str("</tr>");
            }
            h.push_str("</tbody></table></details>");
        }
        h.push_str("</section>\n");
    }

    fn contact_sheets(&self, h: &mut String) {
        if self.sheets.is_empty() {
            return;
        }
        let _ = write!(
            h,
            "<section id=\"sheets\"><h2>Examples</h2><p>{} queries drawn at random (seeded), {}: the query image, the word swapped, the image retrieved at each λ (green: the oracle accepts it; red: it does not), and the caption it should show.{}</p>",
            self.sheets.len(),
            esc(&self.heads),
            if self.has_pixels {
                ""
            } else {
                " This run has no pixels (no crops): each image is shown by its caption."
            }
        );
        for q in &self.sheets {
            let _ = write!(
                h,
                "<div class=\"sheet\"><div class=\"cell query\">{}<div class=\"what\">query {} ({}, {})</div></div><div class=\"arrow\"><span class=\"swap\">{} → {}</span></div>",
                image_or_caption(q.thumbnail.as_deref(), &q.source_caption, &format!("query image: {}", q.source_caption)),
                q.query_id,
                esc(&q.split),
                esc(&q.field),
                esc(&q.value),
                esc(&q.target)
            );
            for p in &q.picks {
                let verdict = if p.success { "accepted" } else { "rejected" };
                let value = p
                    .oracle_value
                    .map(|v| format!(", oracle {v:.3}"))
                    .unwrap_or_default();
                let _ = write!(
                    h,
                    "<div class=\"cell pick {}\">{}<div class=\"what\"><span class=\"mark\">{}</span> λ = {}{}</div></div>",
                    if p.success { "ok" } else { "no" },
                    image_or_caption(
                        p.thumbnail.as_deref(),
                        &p.caption,
                        &format!("retrieved at λ = {} ({verdict}): {}", fmt_lam(p.lam), p.caption)
                    ),
                    if p.success { "✓" } else { "✗" },
                    fmt_lam(p.lam),
                    value
                );
            }
            let _ = write!(
                h,
                "<div class=\"target\">should show: <q>{}</q></div></div>",
                esc(&q.target_caption)
            );
        }
        h.push_str("</section>\n");
    }
}

fn image_or_caption(thumbnail: Option<&str>, caption: &str, alt: &str) -> String {
    match thumbnail {
        Some(uri) => format!("<img src=\"{uri}\" alt=\"{}\">", esc(alt)),
        None => format!("<div class=\"caption-box\">{}</div>", esc(caption)),
    }
}

fn bar_cell(h: &mut String, score: f64) {
    let _ = write!(
        h,
        "<td class=\"bar\" data-v=\"{score}\"><span style=\"width:{:.1}%\"></span><b>{score:.1}</b></td>",
        score.clamp(0.0, 100.0)
    );
}

/// A thumbnail of an image file as a JPEG data URI, its longest side at most `size` pixels.
pub fn thumbnail(path: &Path, size: u32) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("failed to read", path, e))?;
    let img = crate::model::preprocess::decode_rgb(&bytes, crate::model::preprocess::MAX_PIXELS)
        .map_err(|e| Error::data(path, format!("cannot decode: {e}")))?;
    let small = image::DynamicImage::ImageRgb8(img)
        .thumbnail(size, size)
        .to_rgb8();
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 82)
        .encode_image(&small)
        .map_err(|e| Error::data(path, format!("cannot encode a thumbnail: {e}")))?;
    Ok(format!(
        "data:image/jpeg;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&bytes)
    ))
}

const CSS: &str = r#"
:root { --fg: #1b1b1b; --muted: #5b5b5b; --line: #d9d9d9; --ok: #1a7f37; --no: #c62828; --bar: #cfe0f3; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: var(--fg); margin: 0 auto; max-width: 1280px; padding: 1.2em 1.6em 3em; }
h1 { font-size: 1.6em; margin: 0.2em 0; } h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid var(--line); padding-bottom: 0.2em; } h3 { font-size: 1em; margin: 0.6em 0 0.3em; }
.lead { color: var(--muted); max-width: 60em; }
table { border-collapse: collapse; margin: 0.4em 0 1em; font-variant-numeric: tabular-nums; }
th, td { padding: 0.18em 0.6em; border-bottom: 1px solid var(--line); text-align: left; white-space: nowrap; }
th { background: #f4f4f4; position: sticky; top: 0; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th.asc::after { content: " ▲"; } table.sortable th.desc::after { content: " ▼"; }
td.bar { position: relative; min-width: 7em; }
td.bar span { position: absolute; left: 0; top: 15%; height: 70%; background: var(--bar); z-index: 0; }
td.bar b { position: relative; z-index: 1; font-weight: normal; }
.legend { list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: 1.2em; }
.swatch { display: inline-block; width: 1.4em; height: 0.5em; margin-right: 0.4em; vertical-align: middle; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: 0.8em; }
svg.plot { background: #fff; border: 1px solid var(--line); }
svg .grid { stroke: #eee; } svg .axis { stroke: #444; } svg .tick { font-size: 10px; fill: var(--muted); }
svg .axis-label { font-size: 11px; fill: var(--fg); } svg .plot-title { font-size: 12px; font-weight: 600; }
.extremes { display: flex; flex-wrap: wrap; gap: 2em; }
details { margin: 0.4em 0; } summary { cursor: pointer; font-weight: 600; }
.sheet { display: flex; flex-wrap: wrap; align-items: flex-start; gap: 0.5em; padding: 0.6em 0; border-bottom: 1px solid var(--line); }
.cell { width: 132px; text-align: center; font-size: 12px; }
.cell img { width: 120px; height: 120px; object-fit: contain; background: #222; border: 4px solid transparent; display: block; margin: 0 auto; }
.cell.ok img, .cell.ok .caption-box { border-color: var(--ok); } .cell.no img, .cell.no .caption-box { border-color: var(--no); }
.caption-box { width: 120px; height: 120px; margin: 0 auto; display: flex; align-items: center; justify-content: center; padding: 6px; border: 4px solid var(--line); background: #fafafa; font-size: 12px; }
.mark { font-weight: 700; } .ok .mark { color: var(--ok); } .no .mark { color: var(--no); }
.arrow { align-self: center; font-size: 13px; padding: 0 0.4em; } .swap { font-weight: 600; }
.target { flex-basis: 100%; color: var(--muted); font-size: 12px; }
@media print { th { position: static; } }
"#;

/// Click a header to sort by its column: numbers by `data-v`, text otherwise.
const SCRIPT: &str = r#"
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      var desc = !th.classList.contains("desc");
      table.querySelectorAll("th").forEach(function (o) { o.classList.remove("asc", "desc"); });
      th.classList.add(desc ? "desc" : "asc");
      var key = function (row) {
        var cell = row.cells[col];
        var v = cell.getAttribute("data-v");
        return v === null ? cell.textContent : parseFloat(v);
      };
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        var c = (typeof x === "number" && typeof y === "number") ? x - y : String(x).localeCompare(String(y));
        return desc ? -c : c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"#;

/// Labels for run directories: their names, or the paths as given where names repeat.
pub fn labels(dirs: &[PathBuf]) -> Vec<String> {
    let name = |d: &PathBuf| {
        d.canonicalize()
            .ok()
            .and_then(|c| c.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| d.display().to_string())
    };
    let names: Vec<String> = dirs.iter().map(name).collect();
    names
        .iter()
        .zip(dirs)
        .map(|(n, d)| {
            if names.iter().filter(|m| *m == n).count() > 1 {
                d.display().to_string()
            } else {
                n.clone()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
