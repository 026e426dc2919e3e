//! The model runtime: ONNX Runtime loaded at run time (scripts/setup_onnxruntime.sh).

use std::path::Path;

use crate::util::*;

fn tiny_model() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny_linear.onnx")
}

#[test]
fn a_missing_runtime_is_one_clear_sentence() {
    let out = simat()
        .args(["runtime"])
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("ONNX Runtime was not found"), "{err}");
    assert!(
        err.contains("scripts/setup_onnxruntime.sh") && err.contains("ORT_DYLIB_PATH"),
        "{err}"
    );
}

/// Runs the committed tiny graph (`tests/data/make_tiny_onnx.py`: input·W + b with
/// W = arange(12)/10 as 4×3, b = [1, 2, 3]) and checks every output value.
#[test]
fn onnx_runtime_runs_a_model() {
    let mut model = simat::model::OnnxModel::load(&tiny_model(), 1)
        .expect("ONNX Runtime must be set up: scripts/setup_onnxruntime.sh");
    assert_eq!(model.inputs(), ["input"]);
    assert_eq!(model.outputs(), ["embeds"]);
    let x: Vec<f32> = vec![1., 0., 0., 0., 0., 1., 2., 3.];
    let (shape, y) = model.run_f32(&[2, 4], x.clone()).unwrap();
    assert_eq!(shape, [2, 3]);
    for r in 0..2 {
        for c in 0..3 {
            let want: f32 = (0..4)
                .map(|k| x[r * 4 + k] * (k * 3 + c) as f32 / 10.0)
                .sum::<f32>()
                + (c + 1) as f32;
            assert!(
                (y[r * 3 + c] - want).abs() < 1e-5,
                "({r},{c}): {} vs {want}",
                y[r * 3 + c]
            );
        }
    }
    let out = run_ok(&["runtime", "--model", s(&tiny_model())], 0);
    assert!(
        stdout(&out).contains("inputs [\"input\"], outputs [\"embeds\"]"),
        "{}",
        stdout(&out)
    );
}

/// The committed CLIP tokenizer gives the ids open_clip's own tokenizer gave
/// (`scripts/build_clip_tokenizer.py --reference`), padding and truncation included.
#[test]
fn clip_tokens_equal_open_clip() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tok =
        simat::model::tokenizer::ClipTokenizer::load(&root.join("data/clip_tokenizer.json"), 77)
            .unwrap();
    let reference: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(root.join("tests/data/clip_tokens.json")).unwrap())
            .unwrap();
    let texts: Vec<&str> = reference
        .iter()
        .map(|r| r["text"].as_str().unwrap())
        .collect();
    let ids = tok.encode(&texts).unwrap();
    for (i, r) in reference.iter().enumerate() {
        let want: Vec<i64> = r["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(&ids[i * 77..(i + 1) * 77], &want[..], "{:?}", texts[i]);
    }
    // The long text is cut to 77 with <end_of_text> last.
    assert!(reference
        .iter()
        .any(|r| r["ids"][76].as_i64().unwrap() != 0));
}
