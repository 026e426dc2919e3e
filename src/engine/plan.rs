//! The planner: which stage provides each table a stage needs.
//!
//! **The rule.** A need is met by a stage that provides the table
//!
//! 1. as the stage's config chooses explicitly (e.g. `retrieve --queries release` takes the
//!    queries of `import`), or among the stages named by `--from STAGE` (`from = [...]`);
//! 2. otherwise, earlier in the same pipeline;
//! 3. otherwise, finished in the run directory.
//!
//! When two stages could (two earlier in the pipeline, or two finished), nothing is guessed: the
//! planner stops and says which flag or key chooses. A provider that comes *later* in the
//! pipeline than the stage that needs it is an error too (it would be read before it is
//! rewritten). Every stage of a run is planned before the first one runs.

use std::collections::BTreeMap;

use super::manifest::Manifest;
use super::stage::{Need, Stage};
use crate::error::{Error, Result};

/// For each stage (by position), each needed table that has a provider → the providing stage.
pub type Providers = Vec<BTreeMap<&'static str, String>>;

/// The stages that can provide a table, by its name.
pub type Catalogue = fn(&str) -> Vec<&'static str>;

/// Resolve the needs of `stages` (a pipeline, in order) against each other and the finished
/// stages of `manifest`.
///
/// `catalogue` names the stages that can provide a table (the registry), for the message when
/// none is at hand.
pub fn resolve(
    stages: &[&dyn Stage],
    manifest: &Manifest,
    catalogue: Catalogue,
) -> Result<Providers> {
    let mut out = Vec::with_capacity(stages.len());
    for (i, stage) in stages.iter().enumerate() {
        let mut providers = BTreeMap::new();
        for need in stage.needs() {
            if let Some(p) = provider(stages, i, &need, manifest, catalogue)? {
                providers.insert(need.table.name, p);
            }
        }
        out.push(providers);
    }
    Ok(out)
}

fn provides(stage: &dyn Stage, table: &str) -> bool {
    stage.provides().iter().any(|t| t.name == table)
}

fn provider(
    stages: &[&dyn Stage],
    at: usize,
    need: &Need,
    manifest: &Manifest,
    catalogue: Catalogue,
) -> Result<Option<String>> {
    let me = stages[at];
    let table = need.table.name;
    let finished: Vec<&str> = manifest
        .finished()
        .filter(|(name, rec)| *name != me.name() && rec.provides.iter().any(|t| t == table))
        .map(|(name, _)| name)
        .collect();
    let earlier: Vec<&str> = stages[..at]
        .iter()
        .filter(|s| provides(**s, table))
        .map(|s| s.name())
        .collect();
    let later: Vec<&str> = stages[at + 1..]
        .iter()
        .filter(|s| provides(**s, table))
        .map(|s| s.name())
        .collect();
    let err = |message: String| Error::Upstream {
        stage: me.name().to_string(),
        message,
    };
    let how = || {
        need.choose
            .map(|c| format!("say which with {c}"))
            .unwrap_or_else(|| {
                "say which with --from STAGE (`from = [\"STAGE\"]` in a pipeline)".into()
            })
    };
    // 1. An explicit choice.
    let chosen: Vec<&str> = match need.from {
        Some(s) => vec![s],
        None => me
            .prefer()
            .iter()
            .map(String::as_str)
            .filter(|s| earlier.contains(s) || finished.contains(s) || later.contains(s))
            .collect(),
    };
    if let Some(&c) = chosen.first() {
        if chosen.len() > 1 {
            return Err(err(format!(
                "--from names {} stages that provide `{table}`: {}",
                chosen.len(),
                chosen.join(", ")
            )));
        }
        if later.contains(&c) && !earlier.contains(&c) {
            return Err(err(format!(
                "needs `{table}` from `{c}`, which comes later in this pipeline"
            )));
        }
        if earlier.contains(&c) || finished.contains(&c) {
            return Ok(Some(c.to_string()));
        }
        return if need.optional {
            Ok(None)
        } else {
            Err(err(format!(
                "needs `{table}` from `{c}`, which is not in this pipeline and has not finished in the run directory; run `simat {c}` first"
            )))
        };
    }
    // 2. Earlier in the pipeline.
    match earlier.as_slice() {
        [one] => return Ok(Some(one.to_string())),
        [] => {}
        many => {
            return Err(err(format!(
                "needs `{table}`, which {} all provide in this pipeline: {}",
                many.join(" and "),
                how()
            )))
        }
    }
    if let Some(l) = later.first() {
        if !need.optional {
            return Err(err(format!(
                "needs `{table}`, which `{l}` provides only later in this pipeline: put `[{l}]` before `[{}]`",
                me.name()
            )));
        }
        return Ok(None);
    }
    // 3. Finished in the run directory.
    match finished.as_slice() {
        [one] => Ok(Some(one.to_string())),
        [] if need.optional => Ok(None),
        [] => {
            let by: Vec<String> = catalogue(table)
                .into_iter()
                .map(|s| format!("`simat {s}`"))
                .collect();
            Err(err(format!(
                "needs `{table}` ({}), which no stage of this pipeline provides and no finished stage of the run directory has{}{}",
                need.table.about,
                if by.is_empty() {
                    String::new()
                } else {
                    format!("; {} (or its section in a pipeline) writes it", by.join(" or "))
                },
                need.choose.map(|c| format!("; or give {c}")).unwrap_or_default()
            )))
        }
        many => Err(err(format!(
            "needs `{table}`, which {} have all finished in the run directory: {}",
            many.join(" and "),
            how()
        ))),
    }
}
