//! `simat knn`: the retrieval kernel as a general exact inner-product k-NN tool for offline
//! scoring jobs. Output: Parquet with `query, rank, id, score`.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float32Array, Int32Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::error::Result;
use crate::io::TableWriter;
use crate::linalg::Hit;
use crate::ui::Ui;

/// Schema of the k-NN output.
pub fn knn_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("query", DataType::Int64, false),
        Field::new("rank", DataType::Int32, false),
        Field::new("id", DataType::Int64, false),
        Field::new("similarity", DataType::Float32, false),
    ]))
}

/// Write `hits[query]` to `path` (atomically), in batches; returns the row count.
pub fn write_hits(path: &Path, hits: &[Vec<Hit>]) -> Result<u64> {
    let mut w = TableWriter::create(path, knn_schema())?;
    for (c, chunk) in hits.chunks(64 * 1024).enumerate() {
        let base = c * 64 * 1024;
        let (mut q, mut r, mut id, mut s) = (vec![], vec![], vec![], vec![]);
        for (i, list) in chunk.iter().enumerate() {
            for (rank, h) in list.iter().enumerate() {
                q.push((base + i) as i64);
                r.push(rank as i32);
                id.push(h.id as i64);
                s.push(h.score);
            }
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(q)),
            Arc::new(Int32Array::from(r)),
            Arc::new(Int64Array::from(id)),
            Arc::new(Float32Array::from(s)),
        ];
        w.write(&RecordBatch::try_new(knn_schema(), cols).expect("knn batch matches its schema"))?;
    }
    w.finish()
}

/// `simat knn`: read, check, search, write.
pub fn knn(
    db: &Path,
    queries: &Path,
    k: usize,
    exclude: Option<&Path>,
    out: &Path,
    precision: crate::linalg::Precision,
    ui: &Ui,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(k >= 1, "-k must be at least 1");
    let start = std::time::Instant::now();
    let db_m = crate::io::store::read_matrix(db)?;
    let q_m = crate::io::store::read_matrix(queries)?;
    for (m, p, what) in [(&db_m, db, "database"), (&q_m, queries, "queries")] {
        anyhow::ensure!(m.rows > 0, "`{}` ({what}) has no rows", p.display());
        anyhow::ensure!(
            m.cols > 0,
            "`{}` ({what}) has vectors of dimension 0",
            p.display()
        );
    }
    anyhow::ensure!(
        k <= db_m.rows,
        "-k {k} asks for more neighbours than the {} rows of the database `{}`",
        db_m.rows,
        db.display()
    );
    anyhow::ensure!(
        db_m.cols == q_m.cols,
        "`{}` has dimension {} but `{}` has {}",
        db.display(),
        db_m.cols,
        queries.display(),
        q_m.cols
    );
    for (m, p) in [(&db_m, db), (&q_m, queries)] {
        if let Some(row) = crate::linalg::first_non_finite(m) {
            anyhow::bail!("`{}`: row {row} holds NaN or infinity", p.display());
        }
    }
    let exclude = match exclude {
        Some(p) => {
            let ids = crate::io::store::read_npy_ids(p)?;
            anyhow::ensure!(
                ids.len() == q_m.rows,
                "`{}` has {} ids for {} queries",
                p.display(),
                ids.len(),
                q_m.rows
            );
            if let Some((row, id)) = ids
                .iter()
                .enumerate()
                .find(|(_, &id)| id >= db_m.rows as i64)
            {
                anyhow::bail!(
                    "`{}`: row {row} excludes database row {id}, but the database `{}` has {} rows (ids 0..{}; negative excludes none)",
                    p.display(),
                    db.display(),
                    db_m.rows,
                    db_m.rows - 1
                );
            }
            Some(ids)
        }
        None => None,
    };
    let loaded = start.elapsed().as_secs_f64();
    let t = std::time::Instant::now();
    let (hits, path) =
        crate::linalg::knn_with(db_m.view(), q_m.view(), k, exclude.as_deref(), precision)?;
    let search = t.elapsed().as_secs_f64();
    let rows = write_hits(out, &hits)?;
    let gflop = 2.0 * db_m.rows as f64 * q_m.rows as f64 * db_m.cols as f64 / 1e9;
    ui.status(
        "Finished",
        format!(
            "{} queries × {} database rows (d = {}), k = {k}: search {search:.2}s ({:.0} GFLOP/s, {path}), load {loaded:.2}s, {rows} rows in `{}`",
            q_m.rows,
            db_m.rows,
            db_m.cols,
            gflop / search.max(1e-9),
            out.display()
        ),
    );
    Ok(ExitCode::SUCCESS)
}
