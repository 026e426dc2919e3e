//! Linear algebra: row-major f32 matrices, linear heads, L2 normalisation, and exact
//! inner-product top-k search by blocked GEMM with the selection fused per block.
//!
//! The search never materialises the full query × database score matrix: queries are cut into
//! blocks of [`Q_BLOCK`] rows and the database into blocks of [`DB_BLOCK`] rows; each task
//! multiplies one query block by one database block with the score kernel ([`kernel`],
//! single-threaded, so that rayon parallelises across tasks) into a buffer of `Q_BLOCK ×
//! DB_BLOCK` floats, and folds it into per-query top-k lists. Memory is bounded by one buffer
//! per thread.
//!
//! A pair's f32 score is one defined number (the fused multiply-add chain in dimension order,
//! [`kernel::chain`]) whatever the CPU, block or batch, and results are ordered by score
//! (descending), ties by lower database id: they equal a scalar brute force exactly. The bf16
//! path ([`bf16`], [`knn_with`]) scores in bf16 and re-scores in f32 every row a rigorous bound
//! cannot rule out, so it returns the same ids and scores.

pub mod bf16;
pub mod kernel;
pub mod topk;

use std::collections::HashMap;

use rayon::prelude::*;

use crate::error::{Error, Result};
pub use topk::{Hit, TopK};

/// Queries per block.
pub const Q_BLOCK: usize = 256;
/// Database rows per block.
pub const DB_BLOCK: usize = 2048;
/// Largest database the blocked search packs once for all its tasks (bytes of f32 values).
const PREPACK_BYTES: usize = 64 << 20;

/// A dense row-major f32 matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// `rows × cols` values, row-major.
    pub data: Vec<f32>,
}

impl Matrix {
    /// A matrix from row-major data; fails when the length does not match.
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(Error::Internal(format!(
                "matrix of {rows}×{cols} given {} values",
                data.len()
            )));
        }
        Ok(Matrix { rows, cols, data })
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// Rows gathered by index, copied.
    pub fn gather(&self, idx: &[usize]) -> Matrix {
        self.view().gather(idx)
    }
}

/// A borrowed row-major f32 matrix (e.g. a memory-mapped embedding store).
#[derive(Debug, Clone, Copy)]
pub struct MatrixView<'a> {
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// `rows × cols` values, row-major.
    pub data: &'a [f32],
}

impl<'a> MatrixView<'a> {
    /// A view of `data` as `rows × cols`.
    pub fn new(rows: usize, cols: usize, data: &'a [f32]) -> Self {
        assert_eq!(data.len(), rows * cols, "view shape");
        MatrixView { rows, cols, data }
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &'a [f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// The rows `idx`, in that order, copied in parallel (official SIMAT's 3,137 source images,
    /// 6.4 MB, took 4.5 ms on one thread).
    pub fn gather(&self, idx: &[usize]) -> Matrix {
        let mut data = vec![0f32; idx.len() * self.cols];
        if self.cols > 0 {
            data.par_chunks_mut(self.cols)
                .zip(idx)
                .for_each(|(out, &i)| out.copy_from_slice(self.row(i)));
        }
        Matrix {
            rows: idx.len(),
            cols: self.cols,
            data,
        }
    }
}

impl<'a> From<&'a Matrix> for MatrixView<'a> {
    fn from(m: &'a Matrix) -> Self {
        m.view()
    }
}

impl Matrix {
    /// Borrow as a view.
    pub fn view(&self) -> MatrixView<'_> {
        MatrixView {
            rows: self.rows,
            cols: self.cols,
            data: &self.data,
        }
    }
}

/// `C (m×n) = A (m×k) · Bᵀ` where `B` is `n×k`, all row-major; single-threaded.
pub fn matmul_nt(a: &[f32], m: usize, b: &[f32], n: usize, k: usize, c: &mut [f32]) {
    assert!(a.len() >= m * k && b.len() >= n * k && c.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: the asserts above bound every index the strides can reach.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            k as isize,
            1,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// A linear head as PyTorch's `Linear`: `y = x·Wᵀ + b`, `W` of shape `out × in`.
#[derive(Debug, Clone)]
pub struct LinearHead {
    /// Weight, `out × in`.
    pub weight: Matrix,
    /// Bias, `out`.
    pub bias: Vec<f32>,
}

impl LinearHead {
    /// Apply to every row of `x`, in parallel blocks.
    pub fn apply<'a>(&self, x: impl Into<MatrixView<'a>>) -> Result<Matrix> {
        let x = x.into();
        if x.cols != self.weight.cols {
            return Err(Error::Internal(format!(
                "head expects {} inputs, embeddings have {}",
                self.weight.cols, x.cols
            )));
        }
        let (d_in, d_out) = (self.weight.cols, self.weight.rows);
        let mut out = vec![0f32; x.rows * d_out];
        out.par_chunks_mut(Q_BLOCK * d_out)
            .zip(x.data.par_chunks(Q_BLOCK * d_in))
            .for_each(|(o, xi)| {
                let m = xi.len() / d_in;
                matmul_nt(xi, m, &self.weight.data, d_out, d_in, o);
                for row in o.chunks_mut(d_out) {
                    for (v, b) in row.iter_mut().zip(&self.bias) {
                        *v += b;
                    }
                }
            });
        Matrix::new(x.rows, d_out, out)
    }
}

/// Divide each row by its L2 norm (rows of norm 0 stay 0).
pub fn normalize_rows(m: &mut Matrix) {
    let cols = m.cols;
    m.data.par_chunks_mut(cols.max(1)).for_each(|row| {
        let norm = l2_norm(row);
        if norm > 0.0 {
            row.iter_mut().for_each(|v| *v /= norm);
        }
    });
}

/// A copy of `m` with each row divided by its L2 norm, as [`normalize_rows`] divides it, in
/// one pass (a memory-mapped store is read once, not copied first).
pub fn normalised(m: MatrixView) -> Matrix {
    let cols = m.cols.max(1);
    let mut data = vec![0f32; m.data.len()];
    data.par_chunks_mut(cols)
        .zip(m.data.par_chunks(cols))
        .for_each(|(out, row)| {
            let norm = l2_norm(row);
            if norm > 0.0 {
                out.iter_mut().zip(row).for_each(|(o, v)| *o = v / norm);
            } else {
                out.copy_from_slice(row);
            }
        });
    Matrix {
        rows: m.rows,
        cols: m.cols,
        data,
    }
}

/// A row's L2 norm, summed in f64.
fn l2_norm(row: &[f32]) -> f32 {
    row.iter()
        .map(|v| (*v as f64) * (*v as f64))
        .sum::<f64>()
        .sqrt() as f32
}

/// The inner product of two rows (one pair at a time; many pairs go through [`matmul_nt`]).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The first row holding a NaN or an infinity, if any.
pub fn first_non_finite<'a>(m: impl Into<MatrixView<'a>>) -> Option<usize> {
    let m = m.into();
    // Rows are checked in parallel, each without an early exit so that the check vectorises
    // (an `any` that stops at the first NaN ran at 1–2 GB/s on a 2 GB database).
    m.data
        .par_chunks(m.cols.max(1))
        .position_first(|row| !row.iter().fold(true, |ok, v| ok & v.is_finite()))
}

/// Which arithmetic scores a [`knn_with`] search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// bf16 with the certified re-rank where the CPU has bf16 units, f32 elsewhere.
    #[default]
    Auto,
    /// The f32 kernel only.
    F32,
    /// bf16 with the certified re-rank; an error where the CPU lacks bf16 units.
    Bf16,
}

/// How a search ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchPath {
    /// The f32 kernel on this instruction set.
    F32(kernel::Isa),
    /// bf16 scores on this unit, then `rescored` rows scored in f32.
    Bf16(bf16::Unit, bf16::Stats),
}

impl std::fmt::Display for SearchPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SearchPath::F32(isa) => write!(f, "f32 ({isa:?})"),
            SearchPath::Bf16(unit, stats) => {
                write!(
                    f,
                    "{} + f32 re-rank of {} rows",
                    unit.name(),
                    stats.rescored
                )
            }
        }
    }
}

/// [`knn`] with the arithmetic chosen: every precision returns the same ids and scores (the
/// bf16 path re-scores in f32 every row its bound cannot rule out, see [`bf16`]).
pub fn knn_with(
    db: MatrixView,
    queries: MatrixView,
    k: usize,
    exclude: Option<&[i64]>,
    precision: Precision,
) -> Result<(Vec<Vec<Hit>>, SearchPath)> {
    let f32_path = || {
        Ok((
            knn(db, queries, k, exclude),
            SearchPath::F32(kernel::Isa::detect()),
        ))
    };
    if precision == Precision::F32 {
        return f32_path();
    }
    let unit = match bf16::Unit::detect() {
        Some(unit) => unit,
        None if precision == Precision::Bf16 => {
            return Err(Error::Unsupported(
                "this CPU has neither AMX-BF16 nor AVX-512 BF16 (or the kernel refused the \
                 process AMX tiles); bf16 scoring needs one of them: use f32"
                    .into(),
            ));
        }
        None => return f32_path(),
    };
    match bf16::prepare(db, queries, unit) {
        Some(prepared) => {
            let (hits, stats) = bf16::knn(&prepared, k, exclude);
            Ok((hits, SearchPath::Bf16(unit, stats)))
        }
        None if precision == Precision::Bf16 => Err(Error::Unsupported(format!(
            "bf16 scoring needs finite vectors of norm at most {:e}; use f32",
            bf16::MAX_NORM
        ))),
        None => f32_path(),
    }
}

/// Exact inner-product top-k: for each query row, the `k` database rows of highest `q·d`,
/// skipping `exclude[q]` when given (a negative value excludes nothing).
pub fn knn(
    db: MatrixView,
    queries: MatrixView,
    k: usize,
    exclude: Option<&[i64]>,
) -> Vec<Vec<Hit>> {
    knn_packed(
        &PackedDb::new(kernel::Isa::detect(), db),
        queries,
        k,
        exclude,
    )
}

/// [`knn`] against a database packed already.
fn knn_packed(
    packed_db: &PackedDb,
    queries: MatrixView,
    k: usize,
    exclude: Option<&[i64]>,
) -> Vec<Vec<Hit>> {
    let own_row: Vec<usize> = (0..queries.rows).collect();
    let rows = Rows {
        of: queries,
        pick: None,
    };
    blocked_search(packed_db, rows, &own_row, k, 1, |qi, scores, b0, tops| {
        tops[0].push_row(scores, b0, exclude.map(|e| e[qi]).unwrap_or(-1));
    })
}

/// The λ sweep of SIMAT: for query `i` and each `λ`, the top-k database rows by
/// `(db[source_i] + λ·(word[target_i] − word[value_i]))·d`, skipping `exclude[i]`.
/// [`Sweep::new`] then [`Sweep::search`] for every query at once; returns `hits[λ][query]`.
#[allow(clippy::too_many_arguments)]
pub fn sweep(
    db: MatrixView,
    source: &[usize],
    words: MatrixView,
    value: &[usize],
    target: &[usize],
    lambdas: &[f32],
    k: usize,
    exclude: &[i64],
) -> Vec<Vec<Vec<Hit>>> {
    Sweep::new(db, words).search(source, value, target, lambdas, k, exclude)
}

/// A database and a vocabulary ready for the λ sweep, so that queries can be answered block by
/// block (a block's memory is its own; the results do not depend on the blocks).
///
/// A query's image part is a database row, so `img·dᵀ` is computed once per distinct source
/// image of a block (official SIMAT: 3,137 rows for 17,996 queries), block by block of the
/// database, and shared by every query of that image; the word part is `words·dbᵀ`, one
/// [`product`] for the whole vocabulary (131 words for the official set), made once here. Per λ
/// only a fused add and selection remain, so a score is the number
/// `chain(img, d) + λ·(chain(w_target, d) − chain(w_value, d))` on every CPU. At λ = 0 that is
/// `chain(img, d)` whatever the words: the queries of one image (and one excluded row) share
/// that list.
pub struct Sweep<'a> {
    db: MatrixView<'a>,
    packed_db: PackedDb<'a>,
    /// word · dbᵀ, n_words × n_db.
    word_scores: Vec<f32>,
    n_words: usize,
}

impl std::fmt::Debug for Sweep<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sweep")
            .field("database", &self.db.rows)
            .field("words", &self.n_words)
            .finish()
    }
}

impl<'a> Sweep<'a> {
    /// [`knn`] of other query vectors against the sweep's database, packed once for both.
    pub fn knn(&self, queries: MatrixView, k: usize, exclude: &[i64]) -> Vec<Vec<Hit>> {
        knn_packed(&self.packed_db, queries, k, Some(exclude))
    }

    /// Pack the database (when small enough) and score every word against it.
    pub fn new(db: MatrixView<'a>, words: MatrixView) -> Self {
        assert_eq!(
            words.cols, db.cols,
            "words and database differ in dimension"
        );
        let packed_db = PackedDb::new(kernel::Isa::detect(), db);
        let word_scores = product_packed(words, &packed_db);
        Sweep {
            db,
            packed_db,
            word_scores,
            n_words: words.rows,
        }
    }

    /// The sweep for queries with source rows `source`, words `value` → `target` (rows of the
    /// vocabulary): `hits[λ][query]`.
    pub fn search(
        &self,
        source: &[usize],
        value: &[usize],
        target: &[usize],
        lambdas: &[f32],
        k: usize,
        exclude: &[i64],
    ) -> Vec<Vec<Vec<Hit>>> {
        let (db, packed_db, word_scores) = (self.db, &self.packed_db, &self.word_scores);
        let n_db = db.rows;
        assert!(
            value.iter().chain(target).all(|&w| w < self.n_words),
            "a word is outside the vocabulary"
        );
        // The distinct source images, and each query's row among them.
        let mut distinct: Vec<usize> = source.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        let source_row: Vec<usize> = source
            .iter()
            .map(|s| distinct.binary_search(s).expect("every source is listed"))
            .collect();
        let n_l = lambdas.len();
        // At λ = 0 a query's score is `img·d + 0·δ`, the image's score whatever the words: queries
        // of one source image (and one excluded row) share that list. Only the first of them, the
        // representative, ranks it, by `img·d` alone; the others copy it at the end.
        let zero = lambdas.iter().position(|&l| l == 0.0);
        let representative: Vec<usize> = {
            let mut first: HashMap<(usize, i64), usize> = HashMap::new();
            (0..source.len())
                .map(|q| *first.entry((source[q], exclude[q])).or_insert(q))
                .collect()
        };
        let flat = blocked_search(
            packed_db,
            Rows {
                of: db,
                pick: Some(&distinct),
            },
            &source_row,
            k,
            n_l,
            |qi, img, b0, tops| {
                let n = img.len();
                let wt = &word_scores[target[qi] * n_db + b0..][..n];
                let wv = &word_scores[value[qi] * n_db + b0..][..n];
                // Every λ but the zero one (if any) ranks its own list.
                let z = zero.unwrap_or(n_l);
                let (before, rest) = tops.split_at_mut(z);
                topk::push_sweep(before, img, wt, wv, &lambdas[..z], b0, exclude[qi]);
                if let Some((at_zero, after)) = rest.split_first_mut() {
                    topk::push_sweep(after, img, wt, wv, &lambdas[z + 1..], b0, exclude[qi]);
                    if representative[qi] == qi {
                        at_zero.push_row(img, b0, exclude[qi]);
                    }
                }
            },
        );
        // flat[query * n_l + λ] → hits[λ][query]
        let mut hits: Vec<Vec<Vec<Hit>>> =
            (0..n_l).map(|_| Vec::with_capacity(source.len())).collect();
        for (idx, list) in flat.into_iter().enumerate() {
            hits[idx % n_l].push(list);
        }
        if let Some(z) = zero {
            // The representative's list holds `img·d` (`push_row` adds `0·(img·d)`). That is each
            // query's own score `img·d + λ·δ` at λ = ±0 for every finite δ: the chain starts from
            // +0, so `img·d` is never −0, and adding ±0 changes no other value.
            let shared: Vec<Vec<Hit>> =
                representative.iter().map(|&r| hits[z][r].clone()).collect();
            hits[z] = shared;
        }
        hits
    }
}

/// `a·bᵀ`, `a.rows × b.rows` row-major, each value the [`kernel::chain`] of its pair (so the
/// same on every CPU, as the search's scores are): the kernel, in parallel over blocks of `b`.
pub fn product(a: MatrixView, b: MatrixView) -> Vec<f32> {
    product_packed(a, &PackedDb::new(kernel::Isa::detect(), b))
}

/// [`product`] against a database already packed (or not, when it is large: then each part
/// packs its own rows).
fn product_packed(a: MatrixView, b: &PackedDb) -> Vec<f32> {
    let (isa, db) = (b.isa, b.db);
    assert_eq!(a.cols, db.cols, "the two sides differ in dimension");
    // Parts of a few hundred rows of `b`, so that both cores stay busy; whole panels, so that
    // a part of a packed block is packed data of its own.
    let part_rows = 256usize.next_multiple_of(isa.nr());
    let (m, n, d) = (a.rows, db.rows, a.cols);
    let a_blocks = packed_row_blocks(isa, Rows { of: a, pick: None });
    let parts: Vec<usize> = (0..n.div_ceil(DB_BLOCK))
        .flat_map(|blk| {
            let (b0, b1) = (blk * DB_BLOCK, ((blk + 1) * DB_BLOCK).min(n));
            (b0..b1).step_by(part_rows)
        })
        .collect();
    let mut out = vec![0f32; m * n];
    let buf_len = Q_BLOCK.min(m) * kernel::out_stride(part_rows, isa);
    let scored: Vec<(usize, usize, Vec<f32>)> = parts
        .into_par_iter()
        // Each thread reuses its buffer: a fresh one per part costs page faults.
        .map_init(
            || vec![0f32; buf_len],
            |buf, j0| {
                let block_end = ((j0 / DB_BLOCK + 1) * DB_BLOCK).min(n);
                let j1 = (j0 + part_rows).min(block_end);
                let nb = j1 - j0;
                let mut own = Vec::new();
                let packed = match b.blocks.get(j0 / DB_BLOCK) {
                    Some(block) => {
                        let at = (j0 % DB_BLOCK) * d;
                        &block[at..at + nb.next_multiple_of(isa.nr()) * d]
                    }
                    None => {
                        kernel::pack_block(isa, &db.data[j0 * d..j1 * d], nb, d, &mut own);
                        &own[..]
                    }
                };
                let ldo = kernel::out_stride(nb, isa);
                let mut scores = vec![0f32; m * nb];
                for (r0, r1, qp) in &a_blocks {
                    kernel::scores_packed(isa, qp, r1 - r0, packed, nb, d, buf);
                    for r in 0..r1 - r0 {
                        scores[(r0 + r) * nb..][..nb].copy_from_slice(&buf[r * ldo..][..nb]);
                    }
                }
                (j0, nb, scores)
            },
        )
        .collect();
    for (j0, nb, scores) in scored {
        for (i, row) in scores.chunks_exact(nb).enumerate() {
            out[i * n + j0..][..nb].copy_from_slice(row);
        }
    }
    out
}

/// The rows a search scores: all of `of`, or those `pick` lists, in its order.
#[derive(Clone, Copy)]
struct Rows<'a> {
    of: MatrixView<'a>,
    pick: Option<&'a [usize]>,
}

impl Rows<'_> {
    fn len(&self) -> usize {
        self.pick.map_or(self.of.rows, <[usize]>::len)
    }
}

/// A database for the blocked search, packed once for all tasks when it is small enough
/// (official SIMAT: 12 MB); a larger one is packed block by block in each task, so that memory
/// stays one block per thread.
struct PackedDb<'a> {
    isa: kernel::Isa,
    db: MatrixView<'a>,
    /// Block `b` (rows `b·DB_BLOCK..`) packed, or empty when not packed ahead.
    blocks: Vec<Vec<f32>>,
}

impl<'a> PackedDb<'a> {
    fn new(isa: kernel::Isa, db: MatrixView<'a>) -> Self {
        Self::with_limit(isa, db, PREPACK_BYTES)
    }

    /// Packed ahead when its f32 values take at most `limit` bytes.
    fn with_limit(isa: kernel::Isa, db: MatrixView<'a>, limit: usize) -> Self {
        let (n, d) = (db.rows, db.cols);
        let blocks = if n * d * 4 <= limit {
            (0..n.div_ceil(DB_BLOCK))
                .into_par_iter()
                .map(|b| {
                    let (b0, b1) = (b * DB_BLOCK, ((b + 1) * DB_BLOCK).min(n));
                    let mut packed = Vec::new();
                    kernel::pack_block(isa, &db.data[b0 * d..b1 * d], b1 - b0, d, &mut packed);
                    packed
                })
                .collect()
        } else {
            Vec::new()
        };
        PackedDb { isa, db, blocks }
    }

    fn prepacked(&self) -> bool {
        !self.blocks.is_empty() || self.db.rows == 0
    }
}

/// `rows` in blocks of [`Q_BLOCK`], each packed once for the kernel: (first row, end, panels).
/// Picked rows are gathered a block at a time, never as a whole copy.
fn packed_row_blocks(isa: kernel::Isa, rows: Rows) -> Vec<(usize, usize, Vec<f32>)> {
    let d = rows.of.cols;
    let starts: Vec<usize> = (0..rows.len()).step_by(Q_BLOCK).collect();
    starts
        .into_par_iter()
        .map(|r0| {
            let r1 = (r0 + Q_BLOCK).min(rows.len());
            let mut packed = Vec::new();
            match rows.pick {
                None => {
                    kernel::pack_rows(isa, &rows.of.data[r0 * d..r1 * d], r1 - r0, d, &mut packed)
                }
                Some(pick) => {
                    let gathered = rows.of.gather(&pick[r0..r1]);
                    kernel::pack_rows(isa, &gathered.data, r1 - r0, d, &mut packed)
                }
            }
            (r0, r1, packed)
        })
        .collect()
}

/// The blocked search shared by [`knn`] and [`sweep`]. Query `q` scores with row `row_of[q]` of
/// `rows` (several queries may share a row: each row's scores are computed once). The rows are
/// cut into blocks of [`Q_BLOCK`] and the database into shards of whole [`DB_BLOCK`]s; every
/// (group of row blocks, shard) is one rayon task that multiplies block by block into a bounded
/// buffer and hands each query its row's scores through `per_row(query, scores, first_db_id, its
/// lists)`; then the tasks' lists are merged. Returns `lists_per_query` lists per query,
/// query-major.
fn blocked_search(
    packed_db: &PackedDb,
    rows: Rows,
    row_of: &[usize],
    k: usize,
    lists_per_query: usize,
    per_row: impl Fn(usize, &[f32], usize, &mut [TopK]) + Sync,
) -> Vec<Vec<Hit>> {
    let (db, isa) = (packed_db.db, packed_db.isa);
    assert_eq!(
        db.cols, rows.of.cols,
        "database and queries differ in dimension"
    );
    let (d, n_db, n_rows, n_q, per) = (db.cols, db.rows, rows.len(), row_of.len(), lists_per_query);
    // No list holds more than the database: a huge k allocates nothing it cannot fill.
    let k = k.min(n_db);
    // The queries of each row, in query order (CSR).
    let mut start = vec![0usize; n_rows + 1];
    for &r in row_of {
        start[r + 1] += 1;
    }
    for r in 0..n_rows {
        start[r + 1] += start[r];
    }
    let mut queries_of = vec![0usize; n_q];
    let mut fill = start.clone();
    for (q, &r) in row_of.iter().enumerate() {
        queries_of[fill[r]] = q;
        fill[r] += 1;
    }
    let row_blocks = packed_row_blocks(isa, rows);
    // A task is a group of row blocks × a shard of the database: it scores every row block of
    // its group against each database block of its shard. About eight tasks per thread, so
    // that the last to finish leaves the others little idle time. Shards are whole DB_BLOCKs.
    let target = 8 * rayon::current_num_threads();
    let db_blocks = n_db.div_ceil(DB_BLOCK).max(1);
    let shards: Vec<(usize, usize)> = split(db_blocks, target)
        .into_iter()
        .map(|b| ((b.start * DB_BLOCK).min(n_db), (b.end * DB_BLOCK).min(n_db)))
        .collect();
    // A prepacked database (official SIMAT: 12 MB) lets each row block be a group of its own:
    // the most tasks at no extra packing (each query's lists are merged once per shard whatever
    // the groups), so the idle tail is one small task (official SIMAT on Zen 4: one thread ran
    // alone for 30 ms of a 200 ms sweep with groups of up to three row blocks). A larger
    // database is packed block by block in each task, and then as few groups as give enough
    // tasks, since each group packs it again.
    let groups = if packed_db.prepacked() {
        split(row_blocks.len(), row_blocks.len())
    } else {
        split(row_blocks.len(), target.div_ceil(shards.len()))
    };
    let tasks: Vec<((usize, usize), (usize, usize))> = groups
        .iter()
        .flat_map(|g| shards.iter().map(move |&s| ((g.start, g.end), s)))
        .collect();
    let prepacked = &packed_db.blocks;
    let mut partial: Vec<(&[usize], Vec<TopK>)> = tasks
        .into_par_iter()
        // A task's buffers (2 MB of scores) are reused by the next task on the same thread:
        // fresh ones cost page faults.
        .map_init(
            || {
                let buf = vec![0f32; Q_BLOCK * kernel::out_stride(DB_BLOCK, isa)];
                (buf, Vec::new())
            },
            |(buf, packed_db), ((g0, g1), (s0, s1))| {
                let (r_first, r_end) = (row_blocks[g0].0, row_blocks[g1 - 1].1);
                // This group's queries; row r's are slots start[r] - base .. start[r + 1] - base.
                let base = start[r_first];
                let group_queries = &queries_of[base..start[r_end]];
                let mut tops: Vec<TopK> = (0..group_queries.len() * per)
                    .map(|_| TopK::new(k))
                    .collect();
                let mut b0 = s0;
                while b0 < s1 {
                    let b1 = (b0 + DB_BLOCK).min(s1);
                    let n = b1 - b0;
                    let packed_db = match prepacked.get(b0 / DB_BLOCK) {
                        Some(packed) => packed,
                        None => {
                            kernel::pack_block(isa, &db.data[b0 * d..b1 * d], n, d, packed_db);
                            &*packed_db
                        }
                    };
                    let ldo = kernel::out_stride(n, isa);
                    for (r0, r1, qp) in &row_blocks[g0..g1] {
                        let (r0, r1) = (*r0, *r1);
                        let m = r1 - r0;
                        kernel::scores_packed(isa, qp, m, packed_db, n, d, buf);
                        for r in 0..m {
                            let scores = &buf[r * ldo..r * ldo + n];
                            for slot in start[r0 + r] - base..start[r0 + r + 1] - base {
                                let lists = &mut tops[slot * per..(slot + 1) * per];
                                per_row(group_queries[slot], scores, b0, lists);
                            }
                        }
                    }
                    b0 = b1;
                }
                (group_queries, tops)
            },
        )
        .collect();
    // A group's tasks are consecutive, one per shard: merge each query's lists into its first
    // shard's, in parallel, then place them (each query belongs to one group).
    let placed: Vec<Vec<(usize, Vec<Hit>)>> = partial
        .par_chunks_mut(shards.len())
        .map(|group| {
            let (first, rest) = group.split_first_mut().expect("a group has a shard");
            let group_queries = first.0;
            let mut lists = std::mem::take(&mut first.1);
            for (_, tops) in rest {
                for (list, top) in lists.iter_mut().zip(std::mem::take(tops)) {
                    list.merge(top);
                }
            }
            // lists[slot * per + i] is list i of the group's query `slot`.
            lists
                .into_iter()
                .enumerate()
                .map(|(j, top)| (group_queries[j / per] * per + j % per, top.into_sorted()))
                .collect()
        })
        .collect();
    let mut merged: Vec<Vec<Hit>> = vec![Vec::new(); n_q * per];
    for (at, list) in placed.into_iter().flatten() {
        merged[at] = list;
    }
    merged
}

/// `0..units` in at most `parts` contiguous, non-empty ranges whose lengths differ by at most
/// one (13 blocks in 6 parts: 3, 2, 2, 2, 2, 2; not 3, 3, 3, 3, 1, whose last part leaves a
/// thread idle).
pub(crate) fn split(units: usize, parts: usize) -> Vec<std::ops::Range<usize>> {
    let parts = parts.clamp(1, units.max(1));
    let (per, longer) = (units / parts, units % parts);
    let mut start = 0;
    (0..parts)
        .map(|p| {
            let end = start + per + usize::from(p < longer);
            let r = start..end;
            start = end;
            r
        })
        .filter(|r| !r.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};

    fn random(rows: usize, cols: usize, seed: u64) -> Matrix {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let data = (0..rows * cols)
            .map(|_| rng.random::<f32>() * 2.0 - 1.0)
            .collect();
        Matrix::new(rows, cols, data).unwrap()
    }

    /// Brute force in f64, ties by lower id.
    fn reference(db: &Matrix, q: &[f64], k: usize, skip: i64) -> Vec<(usize, f64)> {
        let mut s: Vec<(usize, f64)> = (0..db.rows)
            .filter(|&j| j as i64 != skip)
            .map(|j| {
                let v = db.row(j).iter().zip(q).map(|(a, b)| *a as f64 * b).sum();
                (j, v)
            })
            .collect();
        s.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap().then(a.0.cmp(&b.0)));
        s.truncate(k);
        s
    }

    #[test]
    fn gemm_matches_f64_reference() {
        let (a, b) = (random(37, 70, 1), random(53, 70, 2));
        let mut c = vec![0f32; 37 * 53];
        matmul_nt(&a.data, 37, &b.data, 53, 70, &mut c);
        for i in 0..37 {
            for j in 0..53 {
                let r: f64 = a
                    .row(i)
                    .iter()
                    .zip(b.row(j))
                    .map(|(x, y)| *x as f64 * *y as f64)
                    .sum();
                assert!((c[i * 53 + j] as f64 - r).abs() < 1e-4, "{i},{j}");
            }
        }
    }

    #[test]
    fn knn_equals_brute_force_across_blocks() {
        // Sizes straddle block boundaries; the database is large enough to be sharded.
        let db = random(DB_BLOCK * 2 + 77, 24, 3);
        let q = random(Q_BLOCK + 9, 24, 4);
        let exclude: Vec<i64> = (0..q.rows as i64).map(|i| i * 7 % db.rows as i64).collect();
        let hits = knn(db.view(), q.view(), 5, Some(&exclude));
        for i in 0..q.rows {
            let qv: Vec<f64> = q.row(i).iter().map(|v| *v as f64).collect();
            let want = reference(&db, &qv, 5, exclude[i]);
            let got: Vec<usize> = hits[i].iter().map(|h| h.id as usize).collect();
            let want_ids: Vec<usize> = want.iter().map(|w| w.0).collect();
            if got != want_ids {
                // Only a near-tie may reorder: the scores must agree to f32 precision.
                for (h, w) in hits[i].iter().zip(&want) {
                    assert!(
                        (h.score as f64 - w.1).abs() < 1e-5,
                        "query {i}: {got:?} vs {want_ids:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_first_row_holding_nan_or_infinity_is_named() {
        let mut m = random(5000, 9, 8);
        assert_eq!(first_non_finite(&m), None);
        for (row, col, v) in [
            (4999, 8, f32::NAN),
            (3001, 0, f32::NEG_INFINITY),
            (17, 4, f32::INFINITY),
        ] {
            m.data[row * 9 + col] = v;
            assert_eq!(first_non_finite(&m), Some(row));
        }
        m.data[0] = f32::NAN;
        assert_eq!(first_non_finite(&m), Some(0));
        let huge = Matrix::new(1, 3, vec![f32::MAX, f32::MIN, -0.0]).unwrap();
        assert_eq!(first_non_finite(&huge), None);
    }

    #[test]
    fn ties_break_by_lower_id() {
        let db = Matrix::new(5, 2, vec![1., 0., 0., 1., 1., 0., 1., 0., 0.5, 0.]).unwrap();
        let q = Matrix::new(1, 2, vec![1., 0.]).unwrap();
        let hits = knn(db.view(), q.view(), 3, Some(&[2]));
        let ids: Vec<u32> = hits[0].iter().map(|h| h.id).collect();
        assert_eq!(ids, vec![0, 3, 4]);
    }

    #[test]
    fn sweep_equals_direct_queries() {
        let db = random(3000, 16, 5);
        // Sources repeat (several queries per image) and are not in order.
        let source: Vec<usize> = (0..40).map(|i| (i * 17 + 3) % 23 * 101).collect();
        let imgs = db.gather(&source);
        let words = random(7, 16, 7);
        let value: Vec<usize> = (0..40).map(|i| i % 7).collect();
        let target: Vec<usize> = (0..40).map(|i| (i * 3 + 1) % 7).collect();
        let exclude: Vec<i64> = (0..40).collect();
        let lambdas = [0.0f32, 0.5, 1.0, 2.0];
        let swept = sweep(
            db.view(),
            &source,
            words.view(),
            &value,
            &target,
            &lambdas,
            4,
            &exclude,
        );
        for (l, &lambda) in lambdas.iter().enumerate() {
            let mut q = imgs.clone();
            for i in 0..40 {
                for c in 0..16 {
                    q.data[i * 16 + c] +=
                        lambda * (words.row(target[i])[c] - words.row(value[i])[c]);
                }
            }
            let direct = knn(db.view(), q.view(), 4, Some(&exclude));
            for i in 0..40 {
                assert_eq!(swept[l][i].len(), 4);
                assert_eq!(direct[i].len(), 4);
                for (a, b) in swept[l][i].iter().zip(&direct[i]) {
                    // The two sum in different orders: scores agree to rounding, and this seeded
                    // data has no near-ties, so the ids agree exactly.
                    assert!((a.score - b.score).abs() < 1e-5, "λ {lambda} query {i}");
                    assert_eq!(a.id, b.id, "λ {lambda} query {i}");
                }
            }
        }
    }

    /// Every list of the sweep equals, bit for bit, a scalar ranking of the scores as the sweep
    /// defines them, `chain(img, d) + λ·(chain(w_t, d) − chain(w_v, d))`,
    /// with λ = 0 among other λ (its lists are shared by the queries of one image), duplicated
    /// database rows (ties), and two queries of one image that exclude different rows.
    #[test]
    fn sweep_equals_the_defined_scores_exactly_with_lambda_zero_shared() {
        let mut db = random(2500, 16, 11);
        for (from, to) in [(3, 2200), (3, 900), (50, 51), (1200, 2499)] {
            let row = db.row(from).to_vec();
            db.data[to * 16..(to + 1) * 16].copy_from_slice(&row);
        }
        let words = random(6, 16, 12);
        let n = 60;
        let source: Vec<usize> = (0..n).map(|i| [3, 900, 50, 1200, 7, 2200][i % 6]).collect();
        let value: Vec<usize> = (0..n).map(|i| i % 6).collect();
        let target: Vec<usize> = (0..n).map(|i| (i * 5 + 2) % 6).collect();
        let mut exclude: Vec<i64> = source.iter().map(|&s| s as i64).collect();
        exclude[12] = 2200; // query 12's image is row 3, as query 0's, but another row is left out
        let word_scores: Vec<f32> = (0..6)
            .flat_map(|w| (0..2500).map(move |j| (w, j)))
            .map(|(w, j)| kernel::chain(words.row(w), db.row(j)))
            .collect();
        for lambdas in [vec![1.0f32, 0.0, 0.5], vec![0.0], vec![2.0, -0.0]] {
            for k in [1, 4, 9] {
                let swept = sweep(
                    db.view(),
                    &source,
                    words.view(),
                    &value,
                    &target,
                    &lambdas,
                    k,
                    &exclude,
                );
                for (l, &lambda) in lambdas.iter().enumerate() {
                    for q in 0..n {
                        let (t, v) = (
                            &word_scores[target[q] * 2500..],
                            &word_scores[value[q] * 2500..],
                        );
                        let mut want: Vec<Hit> = (0..2500)
                            .filter(|&j| j as i64 != exclude[q])
                            .map(|j| Hit {
                                id: j as u32,
                                score: kernel::chain(db.row(source[q]), db.row(j))
                                    + lambda * (t[j] - v[j]),
                            })
                            .collect();
                        want.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
                        want.truncate(k);
                        let bits = |h: &[Hit]| {
                            h.iter()
                                .map(|h| (h.id, h.score.to_bits()))
                                .collect::<Vec<_>>()
                        };
                        assert_eq!(
                            bits(&swept[l][q]),
                            bits(&want),
                            "λ {lambda} k {k} query {q}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn split_covers_every_unit_in_parts_of_near_equal_length() {
        assert_eq!(split(13, 6), vec![0..3, 3..5, 5..7, 7..9, 9..11, 11..13]);
        assert_eq!(split(0, 4), Vec::<std::ops::Range<usize>>::new());
        for units in 0..40 {
            for parts in 0..12 {
                let r = split(units, parts);
                assert_eq!(r.iter().map(|r| r.len()).sum::<usize>(), units);
                assert!(r.windows(2).all(|w| w[0].end == w[1].start));
                assert!(r.len() <= parts.max(1) && r.iter().all(|r| !r.is_empty()));
                let (lo, hi) = (
                    r.iter().map(|r| r.len()).min(),
                    r.iter().map(|r| r.len()).max(),
                );
                assert!(
                    hi.unwrap_or(0) - lo.unwrap_or(0) <= 1,
                    "{units} in {parts}: {r:?}"
                );
            }
        }
    }

    #[test]
    fn the_product_is_the_chain_of_every_pair() {
        for (m, n, d) in [
            (300, 517, 19),
            (1, 1, 1),
            (3, 256, 64),
            (0, 5, 4),
            (7, 0, 4),
        ] {
            let (a, b) = (random(m, d, 21), random(n, d, 22));
            let p = product(a.view(), b.view());
            assert_eq!(p.len(), m * n);
            for i in 0..m {
                for j in 0..n {
                    let want = kernel::chain(a.row(i), b.row(j));
                    assert_eq!(
                        p[i * n + j].to_bits(),
                        want.to_bits(),
                        "{m}×{n}×{d} ({i}, {j})"
                    );
                }
            }
        }
    }

    #[test]
    fn a_database_packed_ahead_or_per_task_gives_the_same_scores_and_hits() {
        let isa = kernel::Isa::detect();
        let (db, q) = (
            random(DB_BLOCK * 2 + 301, 20, 31),
            random(Q_BLOCK + 40, 20, 32),
        );
        let ahead = PackedDb::new(isa, db.view());
        let per_task = PackedDb::with_limit(isa, db.view(), 0);
        assert!(ahead.prepacked() && !per_task.prepacked());
        let (p1, p2) = (
            product_packed(q.view(), &ahead),
            product_packed(q.view(), &per_task),
        );
        for (at, (x, y)) in p1.iter().zip(&p2).enumerate() {
            let (i, j) = (at / db.rows, at % db.rows);
            let want = kernel::chain(q.row(i), db.row(j)).to_bits();
            assert_eq!((x.to_bits(), y.to_bits()), (want, want), "({i}, {j})");
        }
        // Picked rows, some twice, and several queries per row.
        let pick: Vec<usize> = (0..q.rows).map(|i| i * 13 % db.rows).collect();
        let row_of: Vec<usize> = (0..2 * q.rows).map(|i| i % q.rows).collect();
        let search = |packed: &PackedDb| {
            let rows = Rows {
                of: db.view(),
                pick: Some(&pick),
            };
            blocked_search(packed, rows, &row_of, 7, 1, |qi, scores, b0, tops| {
                tops[0].push_row(scores, b0, pick[row_of[qi]] as i64)
            })
        };
        let (h1, h2) = (search(&ahead), search(&per_task));
        assert_eq!(h1, h2);
        for (qi, hits) in h1.iter().enumerate() {
            let source = db.row(pick[row_of[qi]]);
            assert_eq!(hits.len(), 7);
            for h in hits {
                assert_ne!(h.id as usize, pick[row_of[qi]], "the excluded row");
                assert_eq!(
                    h.score.to_bits(),
                    kernel::chain(source, db.row(h.id as usize)).to_bits()
                );
            }
        }
    }

    #[test]
    fn head_then_normalise() {
        let head = LinearHead {
            weight: Matrix::new(2, 3, vec![1., 0., 0., 0., 2., 0.]).unwrap(),
            bias: vec![0., 1.],
        };
        let x = Matrix::new(1, 3, vec![3., 1., 5.]).unwrap();
        let mut y = head.apply(&x).unwrap();
        assert_eq!(y.data, vec![3., 3.]);
        normalize_rows(&mut y);
        assert!((y.data[0] - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
    }
}

/// Whether an operand of [`gemm_par`] is used as stored or transposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// As stored (row-major).
    N,
    /// Transposed.
    T,
}

/// Rows of `C` per task of [`gemm_par`]: the split does not depend on the thread count, so the
/// result is the same bit for bit whatever the threads.
const GEMM_ROWS: usize = 256;
const GEMM_COLS: usize = 1024;

/// `C (m×n) = op(A) · op(B)`, `op(A)` being `m×k` and `op(B)` `k×n`, all stored row-major (`A`
/// as `m×k`, or `k×m` when transposed; `B` as `k×n`, or `n×k` when transposed). Parallel over
/// blocks of [`GEMM_ROWS`] rows of `C`, each a single-threaded `gemm` call: deterministic.
pub fn gemm_par(
    (a, op_a): (&[f32], Op),
    (b, op_b): (&[f32], Op),
    (m, n, k): (usize, usize, usize),
    c: &mut [f32],
) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    // (row stride, column stride) of op(A) and op(B) in their storage.
    let (a_rs, a_cs) = match op_a {
        Op::N => (k as isize, 1),
        Op::T => (1, m as isize),
    };
    let (b_rs, b_cs) = match op_b {
        Op::N => (n as isize, 1),
        Op::T => (1, k as isize),
    };
    let (a_ptr, b_ptr, c_ptr) = (
        a.as_ptr() as usize,
        b.as_ptr() as usize,
        c.as_mut_ptr() as usize,
    );
    let (mb, nb) = (m.div_ceil(GEMM_ROWS), n.div_ceil(GEMM_COLS));
    (0..mb * nb).into_par_iter().for_each(|t| {
        let (bi, bj) = (t / nb, t % nb);
        let (r0, c0) = (bi * GEMM_ROWS, bj * GEMM_COLS);
        let rows = GEMM_ROWS.min(m - r0);
        let cols = GEMM_COLS.min(n - c0);
        // SAFETY: rows r0.. of op(A), columns c0.. of op(B) lie inside the asserted lengths;
        // each task writes its own disjoint block of C.
        unsafe {
            gemm::gemm(
                rows,
                cols,
                k,
                (c_ptr as *mut f32).add(r0 * n + c0),
                1,
                n as isize,
                false,
                (a_ptr as *const f32).offset(r0 as isize * a_rs),
                a_cs,
                a_rs,
                (b_ptr as *const f32).offset(c0 as isize * b_cs),
                b_cs,
                b_rs,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    });
}
