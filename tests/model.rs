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

/// `tok` gives each row's `text` the 77 `ids` of the row.
fn assert_token_ids(tok: &simat::model::tokenizer::ClipTokenizer, rows: &[serde_json::Value]) {
    let texts = texts_of(rows);
    let ids = tok.encode(&texts).unwrap();
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(&ids[i * 77..(i + 1) * 77], &ids_of(r)[..], "{:?}", texts[i]);
    }
}

/// The committed CLIP tokenizer gives the ids open_clip's own tokenizer gave
/// (`scripts/build_clip_tokenizer.py --reference`), padding and truncation included.
#[test]
fn clip_tokens_equal_open_clip() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tok = simat::model::tokenizer::ClipTokenizer::load(
        &root.join("data/tiny-clip/tokenizer.json"),
        77,
    )
    .unwrap();
    let reference: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(root.join("tests/data/clip_tokens.json")).unwrap())
            .unwrap();
    assert_token_ids(&tok, &reference);
    // The long text is cut to 77 with <end_of_text> last.
    assert!(reference
        .iter()
        .any(|r| r["ids"][76].as_i64().unwrap() != 0));
}

/// Both committed tiny CLIPs (`scripts/export_clip.py tiny --reference`, random weights; and the
/// one `scripts/train_tiny_clip.py` trained on the demo world): simat's token ids equal
/// open_clip's, and both towers give PyTorch's embeddings within 1e-4 on the same inputs.
#[test]
fn tiny_clips_equal_pytorch() {
    use simat::model::clip::ClipModel;
    for dir in [tiny_clip(), world_clip()] {
        let mut model = ClipModel::open(&dir, simat::model::Device::Cpu, 1).unwrap();
        let r = reference_of(&dir);
        let rows = r["texts"].as_array().unwrap();
        assert_token_ids(model.tokenizer(), rows);
        let texts = texts_of(rows);
        // Batches of 4 over 6 texts: a partial last batch too.
        let text = model.embed_texts(&texts, 4).unwrap();
        assert_eq!(text.rows, texts.len());
        for (i, t) in rows.iter().enumerate() {
            let want = floats(&t["embedding"]);
            assert_eq!(want.len(), text.cols);
            let d = max_abs_diff(text.row(i), &want);
            assert!(d < 1e-4, "{}: text {i}: {d}", dir.display());
        }

        let (shape, pixels) =
            simat::io::store::read_npy_f32(&dir.join("reference/pixels.npy")).unwrap();
        assert_eq!(&shape[1..], &[3, 224, 224]);
        let image = model.embed_pixels(shape[0], &pixels).unwrap();
        for (i, im) in r["images"].as_array().unwrap().iter().enumerate() {
            let d = max_abs_diff(image.row(i), &floats(&im["embedding"]));
            assert!(d < 1e-4, "{}: image {i}: {d}", dir.display());
        }
    }
}

/// simat's preprocessing of image files (PNGs upscaled, downscaled, with an odd centre crop,
/// grey; a 4:2:0 JPEG) equals open_clip's `image_transform(224)` within 1e-2 per value (the
/// reference is stored as f16, which adds at most 2e-3), for both committed models.
#[test]
fn preprocessing_equals_open_clip() {
    use simat::model::clip::ClipModel;
    for dir in [tiny_clip(), world_clip()] {
        let model = ClipModel::open(&dir, simat::model::Device::Cpu, 1).unwrap();
        let (shape, want) =
            simat::io::store::read_npy_f32(&dir.join("reference/pixels.npy")).unwrap();
        let per = shape[1..].iter().product::<usize>();
        for (i, im) in reference_of(&dir)["images"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            let file = dir.join("reference").join(im["file"].as_str().unwrap());
            let mut got = vec![0f32; per];
            model.preprocess().file(&file, &mut got).unwrap();
            let d = max_abs_diff(&got, &want[i * per..(i + 1) * per]);
            assert!(d < 1e-2, "{}: max difference {d}", file.display());
        }
    }
}

/// Images are embedded in input order in batches; a missing and a corrupt file are reported
/// with their positions and the others still embedded, equal to embedding them alone.
#[test]
fn image_files_stream_through_batches() {
    use simat::model::clip::ClipModel;
    let dir = tempdir();
    let corrupt = dir.path().join("corrupt.png");
    std::fs::write(&corrupt, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let refs = tiny_clip().join("reference");
    let mut files: Vec<std::path::PathBuf> = clip_reference()["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|im| refs.join(im["file"].as_str().unwrap()))
        .collect();
    files.insert(1, dir.path().join("missing.png"));
    files.insert(3, corrupt);
    // A JPEG cut short: libjpeg would pad it with grey; like Pillow, simat calls it corrupt.
    let jpeg = std::fs::read(refs.join("image_4_333x250_RGB.jpg")).unwrap();
    let truncated = dir.path().join("truncated.jpg");
    std::fs::write(&truncated, &jpeg[..jpeg.len() / 2]).unwrap();
    files.push(truncated);
    let mut model = ClipModel::open(&tiny_clip(), simat::model::Device::Cpu, 1).unwrap();
    let mut ok = vec![];
    let mut failed = vec![];
    let mut rows = vec![];
    model
        .embed_image_files(&files, 4, |b| {
            assert_eq!(b.ok.len(), b.embeddings.rows);
            ok.extend(b.ok.iter().copied());
            failed.extend(b.failed.iter().map(|(i, f)| (*i, f.kind())));
            rows.extend((0..b.embeddings.rows).map(|r| b.embeddings.row(r).to_vec()));
            Ok(())
        })
        .unwrap();
    assert_eq!(ok, [0, 2, 4, 5, 6]);
    assert_eq!(failed, [(1, "missing"), (3, "corrupt"), (7, "corrupt")]);
    let mut alone = vec![];
    model
        .embed_image_files(&files[5..6], 1, |b| {
            alone.push(b.embeddings.row(0).to_vec());
            Ok(())
        })
        .unwrap();
    assert!(max_abs_diff(&rows[3], &alone[0]) < 1e-5);
}

/// The same tiny CLIP in Hugging Face's layouts (`scripts/export_clip.py tiny --hf`: a
/// transformers CLIPModel holding the same weights, optimum's names, CLIPTokenizerFast's
/// tokenizer.json, preprocessor_config.json and no model.toml) embeds to the same vectors as the
/// open_clip layout: the separate towers give the raw outputs, the combined model.onnx the
/// normalised ones (as CLIPModel returns them).
#[test]
fn hugging_face_layouts_embed_as_open_clip() {
    use simat::model::clip::ClipModel;
    use simat::model::tokenizer::Convention;
    let hf = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/tiny-clip-hf");
    let r = clip_reference();
    let rows = r["texts"].as_array().unwrap();
    let texts = texts_of(rows);
    // Token ids: open_clip's, padded with <|endoftext|> instead of 0, with the mask.
    let mut model = ClipModel::open(&hf, simat::model::Device::Cpu, 1).unwrap();
    assert_eq!(model.tokenizer().convention, Convention::HuggingFace);
    let enc = model.tokenizer().encode_with_mask(&texts).unwrap();
    for (i, row) in rows.iter().enumerate() {
        let want = ids_of(row);
        let used = want.iter().rposition(|&t| t != 0).unwrap() + 1;
        assert_eq!(
            &enc.ids[i * 77..i * 77 + used],
            &want[..used],
            "{:?}",
            texts[i]
        );
        assert!(enc.ids[i * 77 + used..(i + 1) * 77]
            .iter()
            .all(|&t| t == 49407));
        assert!(enc.mask[i * 77..i * 77 + used].iter().all(|&m| m == 1));
        assert!(enc.mask[i * 77 + used..(i + 1) * 77]
            .iter()
            .all(|&m| m == 0));
    }
    let mut open_clip = ClipModel::open(&tiny_clip(), simat::model::Device::Cpu, 1).unwrap();
    let want_t = open_clip.embed_texts(&texts, 4).unwrap();
    let got_t = model.embed_texts(&texts, 4).unwrap();
    assert!(max_abs_diff(&got_t.data, &want_t.data) < 1e-5);
    let refs = tiny_clip().join("reference");
    let images: Vec<std::path::PathBuf> = r["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|im| refs.join(im["file"].as_str().unwrap()))
        .collect();
    let embed_images = |m: &mut ClipModel| {
        let mut data = Vec::new();
        m.embed_image_files(&images, 2, |b| {
            assert!(b.failed.is_empty());
            data.extend_from_slice(&b.embeddings.data);
            Ok(())
        })
        .unwrap();
        simat::linalg::Matrix::new(images.len(), 32, data).unwrap()
    };
    let want_i = embed_images(&mut open_clip);
    assert!(max_abs_diff(&embed_images(&mut model).data, &want_i.data) < 1e-5);

    // The combined graph alone: normalised outputs, placeholders for the other tower.
    let dir = tempdir();
    for f in ["model.onnx", "tokenizer.json", "preprocessor_config.json"] {
        std::fs::copy(hf.join(f), dir.path().join(f)).unwrap();
    }
    let mut combined = ClipModel::open(dir.path(), simat::model::Device::Cpu, 1).unwrap();
    let unit = |mut m: simat::linalg::Matrix| {
        simat::linalg::normalize_rows(&mut m);
        m
    };
    let got = combined.embed_texts(&texts, 4).unwrap();
    assert!(max_abs_diff(&got.data, &unit(want_t).data) < 1e-5);
    assert!(max_abs_diff(&embed_images(&mut combined).data, &unit(want_i).data) < 1e-5);
}

/// A graph without the inputs and outputs of a CLIP tower is refused before the first batch,
/// with what it has.
#[test]
fn a_graph_with_other_names_is_refused_with_its_names() {
    let dir = tempdir();
    for f in ["image.onnx", "text.onnx"] {
        std::fs::copy(tiny_model(), dir.path().join(f)).unwrap();
    }
    std::fs::copy(
        tiny_clip().join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    let texts = dir.path().join("t.txt");
    std::fs::write(&texts, "a cat\n").unwrap();
    let err = stderr(&run_ok(
        &[
            "encode",
            "--model",
            s(dir.path()),
            "--texts",
            s(&texts),
            "--out",
            s(&dir.path().join("out")),
        ],
        2,
    ));
    assert!(
        err.contains("text.onnx")
            && err.contains(r#"inputs ["input"] and outputs ["embeds"]"#)
            && err.contains("input_ids"),
        "{err}"
    );
}

/// `model.toml` is read as strictly as a pipeline: an unknown key (a misspelt `image_size` would
/// otherwise be preprocessed at the default without a word) and sizes no tower takes are named
/// errors before any allocation.
#[test]
fn a_model_toml_with_an_unknown_key_or_an_impossible_size_is_refused() {
    let dir = tempdir();
    let texts = dir.path().join("t.txt");
    std::fs::write(&texts, "a cat\n").unwrap();
    let cases = [
        (
            "image_size = 224",
            "image_sise = 336",
            "unknown field `image_sise`",
        ),
        (
            "image_size = 224",
            "image_size = 4000000000",
            "image_size 4000000000 is not between 1 and 4096 pixels",
        ),
        (
            "context_length = 77",
            "context_length = 100000000000",
            "context_length 100000000000 is not between 1 and 8192 tokens",
        ),
    ];
    for (i, (from, to, want)) in cases.iter().enumerate() {
        let model = dir.path().join(format!("model{i}"));
        copy_dir(&tiny_clip(), &model);
        let toml = std::fs::read_to_string(model.join("model.toml")).unwrap();
        assert!(toml.contains(from));
        std::fs::write(model.join("model.toml"), toml.replace(from, to)).unwrap();
        let err = stderr(&run_ok(
            &[
                "encode",
                "--model",
                s(&model),
                "--texts",
                s(&texts),
                "--out",
                s(&dir.path().join("out")),
            ],
            2,
        ));
        assert!(
            err.contains("model.toml") && err.contains(want),
            "{to}: {err}"
        );
    }
}

/// A reference row's token `ids`.
fn ids_of(row: &serde_json::Value) -> Vec<i64> {
    row["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect()
}

/// `model` tokenises each row's `text` to the row's `ids` (the tokens its attention mask keeps);
/// the batch's tokens.
fn assert_text_tokens(
    model: &simat::model::text::TextModel,
    rows: &[serde_json::Value],
    what: &str,
) -> simat::model::text::Tokens {
    let texts = texts_of(rows);
    let tokens = model.tokens(&texts).unwrap();
    for (i, row) in rows.iter().enumerate() {
        let got: Vec<i64> = (0..tokens.t)
            .filter(|k| tokens.mask[i * tokens.t + k] == 1)
            .map(|k| tokens.ids[i * tokens.t + k])
            .collect();
        assert_eq!(got, ids_of(row), "{what}: text {i}: {:?}", texts[i]);
    }
    tokens
}

fn tiny_bert() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/tiny-bert")
}

/// The committed tiny BERT (`scripts/make_tiny_bert.py`: a WordPiece vocabulary trained on the
/// release's captions, random weights): simat's token ids equal Hugging Face's exactly (a word
/// outside the vocabulary split into pieces, a text cut at the context), and each pooling
/// (CLS, mean over the mask, the graph's pooled output) gives PyTorch's embeddings within 1e-4,
/// in batches that pad short texts beside long ones.
#[test]
fn a_sentence_encoder_equals_pytorch_in_every_pooling() {
    use simat::model::text::TextModel;
    let r: serde_json::Value = serde_json::from_slice(
        &std::fs::read(tiny_bert().join("reference/reference.json")).unwrap(),
    )
    .unwrap();
    let rows = r["texts"].as_array().unwrap();
    let texts = texts_of(rows);
    let dir = tempdir();
    for pooling in ["mean", "cls", "pooled"] {
        let folder = dir.path().join(pooling);
        copy_dir(&tiny_bert(), &folder);
        let toml = std::fs::read_to_string(folder.join("model.toml")).unwrap();
        assert!(toml.contains("pooling = \"mean\""));
        std::fs::write(
            folder.join("model.toml"),
            toml.replace("pooling = \"mean\"", &format!("pooling = \"{pooling}\"")),
        )
        .unwrap();
        let mut model = TextModel::open(&folder, simat::model::Device::Cpu, 1).unwrap();
        let tokens = assert_text_tokens(&model, rows, pooling);
        assert_eq!(tokens.t, 32, "the longest text is cut at the context");
        let m = model.embed_texts(&texts, 4).unwrap();
        for (i, row) in rows.iter().enumerate() {
            let d = max_abs_diff(m.row(i), &floats(&row[pooling]));
            assert!(d < 1e-4, "{pooling}: text {i}: {d}");
        }
    }
}

/// `simat encode --model CLIP --text-model BERT`: the images through the CLIP's image tower,
/// the texts through the sentence encoder; a folder that is not a text model is refused before
/// anything runs, and so is a text model for the oracle.
#[test]
fn encode_takes_a_text_model_of_its_own() {
    let r: serde_json::Value = serde_json::from_slice(
        &std::fs::read(tiny_bert().join("reference/reference.json")).unwrap(),
    )
    .unwrap();
    let rows = r["texts"].as_array().unwrap();
    let texts = texts_of(rows);
    let dir = tempdir();
    let tfile = dir.path().join("texts.txt");
    std::fs::write(&tfile, texts.join("\n") + "\n").unwrap();
    let out = dir.path().join("out");
    let bert = tiny_bert();
    run_ok(
        &[
            "encode",
            "--image-model",
            s(&tiny_clip()),
            "--text-model",
            s(&bert),
            "--texts",
            s(&tfile),
            "--out",
            s(&out),
        ],
        0,
    );
    let m = simat::io::store::EmbeddingStore::open(&out.join("text_embeddings.arrow"))
        .unwrap()
        .to_matrix();
    for (i, row) in rows.iter().enumerate() {
        assert!(
            max_abs_diff(m.row(i), &floats(&row["mean"])) < 1e-4,
            "text {i}"
        );
    }
    let model_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("model.json")).unwrap()).unwrap();
    assert_eq!(model_json["model"]["text_model"]["name"], "tiny-bert");
    assert_eq!(model_json["model"]["text_model"]["pooling"], "mean");

    let err = stderr(&run_ok(
        &[
            "encode",
            "--model",
            s(&tiny_clip()),
            "--text-model",
            s(&tiny_clip()),
            "--texts",
            s(&tfile),
            "--out",
            s(&dir.path().join("no")),
        ],
        2,
    ));
    assert!(err.contains("text_model") && err.contains("kind"), "{err}");
    let err = stderr(&run_ok(
        &[
            "oracle",
            "--run",
            s(&dir.path().join("run")),
            "--model",
            s(&tiny_clip()),
            "--text-model",
            s(&bert),
        ],
        2,
    ));
    assert!(
        err.contains("the oracle judges crops against captions"),
        "{err}"
    );
}

/// A text model reads any kind of `tokenizer.json`: a Unigram one (SentencePiece's model, with
/// `</s>` appended, as T5's) and a byte-level BPE one (`<s> … </s>`, as RoBERTa's), trained by
/// `scripts/make_tiny_bert.py` on the release's captions, give Hugging Face's token ids exactly,
/// cut at the context.
#[test]
fn unigram_and_byte_level_bpe_tokenizers_give_hugging_face_s_ids() {
    use simat::model::text::TextModel;
    let refs = tiny_bert().join("reference");
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(refs.join("other_tokenizers.json")).unwrap())
            .unwrap();
    let dir = tempdir();
    for kind in ["unigram", "bpe"] {
        let folder = dir.path().join(kind);
        copy_dir(&tiny_bert(), &folder);
        std::fs::copy(
            refs.join(format!("{kind}_tokenizer.json")),
            folder.join("tokenizer.json"),
        )
        .unwrap();
        let model = TextModel::open(&folder, simat::model::Device::Cpu, 1).unwrap();
        assert_text_tokens(&model, r[kind].as_array().unwrap(), kind);
    }
}
