//! The demo world (`pipelines/demo.toml`): with the tiny CLIP trained on it, embedding arithmetic
//! visibly works — the best λ retrieves the transformed scene far more often than λ = 0 — and the
//! effect is large enough that a broken path (embeddings on the wrong regions) makes it vanish.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, UInt32Array};
use simat::tables::retrievals::ScoresFile;

use crate::util::*;

/// How much the best λ beats λ = 0 at least (SIMAT points, split `all`), per field: about half
/// the gains measured on the demo (subj +15.3, obj +11.7, rel +4.1, all +10.4; README), room for
/// another machine's float sums and for a retrained model, and still far above what embeddings
/// on the wrong regions give.
const MIN_GAIN: [(&str, f64); 4] = [("subj", 8.0), ("obj", 6.0), ("rel", 2.0), ("all", 6.0)];

fn score_at(file: &ScoresFile, field: &str, lambda: f64) -> f64 {
    file.scores
        .iter()
        .find(|r| r.split == "all" && r.field == field && r.lambda == lambda)
        .unwrap_or_else(|| panic!("no score for {field} at λ = {lambda}"))
        .score
}

/// The best λ's score minus λ = 0's, and the best λ.
fn gain(file: &ScoresFile, field: &str) -> (f64, f64) {
    let (best, lam) = file
        .scores
        .iter()
        .filter(|r| r.split == "all" && r.field == field)
        .map(|r| (r.score, r.lambda))
        .fold((f64::MIN, 0.0), |a, b| if b.0 > a.0 { b } else { a });
    (best - score_at(file, field, 0.0), lam)
}

fn scores(run: &Path) -> ScoresFile {
    ScoresFile::read(&run.join("score/scores.json")).unwrap()
}

#[test]
fn the_best_lambda_beats_lambda_zero_on_every_field() {
    let file = scores(&demo_run());
    for (field, min) in MIN_GAIN {
        let (g, lam) = gain(&file, field);
        assert!(
            g >= min,
            "{field}: the best λ ({lam}) beats λ = 0 by {g:.1} points, less than {min}"
        );
        assert!(lam > 0.0);
    }
    // A very large λ drifts to the text: past the best, the score falls again.
    let largest = file
        .scores
        .iter()
        .map(|r| r.lambda)
        .fold(f64::MIN, f64::max);
    let (g, best) = gain(&file, "all");
    assert!(best < largest);
    let peak = score_at(&file, "all", 0.0) + g;
    assert!(
        score_at(&file, "all", largest) < peak - 3.0,
        "λ = {largest} should have drifted below the peak {peak:.1} at λ = {best}"
    );
}

/// The demo's embeddings exported and imported back by key score exactly as the demo; the same
/// vectors rotated by half the rows against their region ids (what a row-order bug does) lose the
/// effect, so the test above would catch it.
#[test]
fn embeddings_on_the_wrong_regions_lose_the_effect() {
    let demo = demo_run();
    let dir = tempdir();
    let images = dir.path().join("images.parquet");
    let words = dir.path().join("words.parquet");
    run_ok(
        &[
            "export",
            s(&demo.join("embed/image_embeddings.arrow")),
            "--out",
            s(&images),
        ],
        0,
    );
    run_ok(
        &[
            "export",
            s(&demo.join("embed/word_embeddings.arrow")),
            "--out",
            s(&words),
        ],
        0,
    );
    let shifted = dir.path().join("shifted.parquet");
    shift_embeddings(&images, &shifted);

    let want = scores(&demo);
    let lambdas = scored_lambdas(&demo)
        .iter()
        .map(f64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let rescore = |name: &str, file: &Path| -> ScoresFile {
        let run = dir.path().join(name);
        copy_dir(&demo, &run);
        run_ok(
            &[
                "import-embeddings",
                s(&run),
                "--image-embeddings",
                s(file),
                "--word-embeddings",
                s(&words),
            ],
            0,
        );
        run_ok(
            &[
                "retrieve",
                s(&run),
                "--from",
                "import-embeddings",
                "--lambdas",
                &lambdas,
            ],
            0,
        );
        run_ok(&["score", s(&run)], 0);
        scores(&run)
    };
    let same = rescore("by-key", &images);
    for (a, b) in same.scores.iter().zip(&want.scores) {
        assert_eq!(
            (a.lambda, &a.split, &a.field),
            (b.lambda, &b.split, &b.field)
        );
        assert!(a.score == b.score, "{a:?} != {b:?}");
    }
    let broken = rescore("shifted", &shifted);
    let (g, _) = gain(&broken, "all");
    let min = MIN_GAIN.iter().find(|(f, _)| *f == "all").unwrap().1;
    assert!(
        g < min,
        "shifted embeddings still gain {g:.1} points: the effect test could not see the bug"
    );
}

/// Rewrite an exported Parquet store with its `embedding` column rotated by half its rows and
/// every key column in place.
fn shift_embeddings(from: &Path, to: &Path) {
    let batch = simat::io::read_all(from).unwrap();
    let n = batch.num_rows() as u32;
    assert!(n > 10);
    let idx = UInt32Array::from_iter_values((0..n).map(|i| (i + n / 2) % n));
    let col = batch.schema().index_of("embedding").unwrap();
    let mut columns: Vec<Arc<dyn Array>> = batch.columns().to_vec();
    columns[col] = arrow::compute::take(batch.column(col).as_ref(), &idx, None).unwrap();
    let shifted = arrow::record_batch::RecordBatch::try_new(batch.schema(), columns).unwrap();
    simat::io::write_table(to, &shifted).unwrap();
}
