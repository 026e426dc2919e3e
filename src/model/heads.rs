//! Linear adaptation heads: one for images, one for texts, applied to the **raw** (unnormalised)
//! outputs of a model's towers, then L2 normalisation, as the release's `eval.py` does
//! (`heads['img_head'](img_embs).normalize()`).
//!
//! A head set is named by one path: a PyTorch file (the release's `head_clip_t=0.1.pt`, a dict of
//! two pickled `nn.Linear` modules, or a state dict `img_head.weight`, …), or the prefix of four
//! `.npy` files `PREFIX_{img,txt}_head_{weight,bias}.npy` (PyTorch `Linear` layout:
//! `y = x·Wᵀ + b`, `W` is `out × in`).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::io::store::{read_matrix, read_vector};
use crate::linalg::{first_non_finite, LinearHead, Matrix, MatrixView};

/// An image head and a text head.
#[derive(Debug, Clone)]
pub struct Heads {
    /// Applied to image embeddings.
    pub img: LinearHead,
    /// Applied to text (word, caption) embeddings.
    pub txt: LinearHead,
    /// The file (or `.npy` prefix) they were read from, for messages.
    pub source: PathBuf,
}

/// The four `.npy` files of a prefix, labelled by part.
pub fn npy_files(prefix: &Path) -> [(String, PathBuf); 4] {
    let name = prefix
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    [
        "img_head_weight",
        "img_head_bias",
        "txt_head_weight",
        "txt_head_bias",
    ]
    .map(|part| {
        (
            format!("heads/{part}.npy"),
            prefix.with_file_name(format!("{name}_{part}.npy")),
        )
    })
}

fn is_torch(path: &Path) -> bool {
    path.is_file()
        && (crate::io::torch::has_torch_extension(path) || crate::io::torch::is_torch_zip(path))
}

/// The files a head set is read from, as stage inputs `(label, path)`; an error naming what was
/// looked for when they are not there.
pub fn files(path: &Path) -> Result<Vec<(String, PathBuf)>> {
    if is_torch(path) {
        return Ok(vec![("heads".into(), path.to_path_buf())]);
    }
    let files = npy_files(path);
    if let Some((_, missing)) = files.iter().find(|(_, p)| !p.is_file()) {
        return Err(Error::data(
            path,
            format!(
                "heads not found: give a PyTorch file of heads (the release's head_clip_t=0.1.pt) or the prefix of PREFIX_{{img,txt}}_head_{{weight,bias}}.npy (`{}` does not exist)",
                missing.display()
            ),
        ));
    }
    Ok(files.to_vec())
}

impl Heads {
    /// Read the head set `path` names.
    pub fn load(path: &Path) -> Result<Heads> {
        let heads = if is_torch(path) {
            let (img, txt) = crate::io::torch::read_heads(path)?;
            Heads {
                img,
                txt,
                source: path.to_path_buf(),
            }
        } else {
            files(path)?;
            let [(_, iw), (_, ib), (_, tw), (_, tb)] = npy_files(path);
            Heads {
                img: npy_head(&iw, &ib)?,
                txt: npy_head(&tw, &tb)?,
                source: path.to_path_buf(),
            }
        };
        for (head, which) in [(&heads.img, "image"), (&heads.txt, "text")] {
            if first_non_finite(&head.weight).is_some() || head.bias.iter().any(|v| !v.is_finite())
            {
                return Err(Error::data(
                    path,
                    format!("the {which} head holds NaN or infinity"),
                ));
            }
        }
        Ok(heads)
    }

    /// Apply the image head to raw image embeddings (`file` names them in errors).
    pub fn images(&self, raw: MatrixView, file: &Path) -> Result<Matrix> {
        apply(&self.img, raw, file, "image", &self.source)
    }

    /// Apply the text head to raw text embeddings.
    pub fn texts(&self, raw: MatrixView, file: &Path) -> Result<Matrix> {
        apply(&self.txt, raw, file, "text", &self.source)
    }
}

fn apply(
    head: &LinearHead,
    raw: MatrixView,
    file: &Path,
    which: &str,
    heads: &Path,
) -> Result<Matrix> {
    if head.weight.cols != raw.cols {
        return Err(Error::data(
            heads,
            format!(
                "the {which} head takes {} inputs, but the {which} embeddings (`{}`) have dimension {}: these heads were trained for another model",
                head.weight.cols,
                file.display(),
                raw.cols
            ),
        ));
    }
    head.apply(raw)
}

fn npy_head(weight: &Path, bias: &Path) -> Result<LinearHead> {
    let w = read_matrix(weight)?;
    let b = read_vector(bias)?;
    if b.len() != w.rows {
        return Err(Error::data(
            bias,
            format!(
                "bias has {} values, the weight has {} output rows",
                b.len(),
                w.rows
            ),
        ));
    }
    Ok(LinearHead { weight: w, bias: b })
}

/// Whether every row of `m` has norm 1 (within 1e-3): vectors already normalised, which the
/// release's heads were not trained on.
pub fn unit_norm<'a>(m: impl Into<MatrixView<'a>>) -> bool {
    let m = m.into();
    m.rows > 0
        && (0..m.rows).all(|i| {
            let n: f32 = m.row(i).iter().map(|v| v * v).sum::<f32>().sqrt();
            (n - 1.0).abs() < 1e-3
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_release_heads_read_the_same_from_pt_and_npy() {
        let release = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/simat-release");
        let pt = Heads::load(&release.join("original/head_clip_t=0.1.pt")).unwrap();
        let npy = Heads::load(&release.join("head_tau0.1")).unwrap();
        assert_eq!(pt.img.weight, npy.img.weight);
        assert_eq!(pt.txt.bias, npy.txt.bias);
        assert_eq!(files(&release.join("head_tau0.1")).unwrap().len(), 4);
        let err = Heads::load(&release.join("head_tau9"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("heads not found") && err.contains("head_tau9_img_head_weight.npy"),
            "{err}"
        );
    }

    #[test]
    fn unit_norm_tells_normalised_rows() {
        let mut m = Matrix::new(2, 2, vec![3.0, 4.0, 0.6, 0.8]).unwrap();
        assert!(!unit_norm(&m));
        crate::linalg::normalize_rows(&mut m);
        assert!(unit_norm(&m));
    }
}
