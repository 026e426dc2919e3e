//! The official SIMAT release's files and their readers: CSV and TSV with a header row, each
//! field parsed with an error that names the file, the row and the column. `import-simat` reads the
//! release with them; the synthetic world's stand-in images are drawn from the same files.

use std::path::Path;

use crate::error::{Error, Result};

/// The release's files.
pub const RELEASE_FILES: &[&str] = &[
    "retrieval_db.tsv",
    "triplets.csv",
    "captions.txt",
    "transfos.csv",
];

/// A CSV (or, with `b'\t'`, TSV) reader of a release file, with a header row.
pub fn csv_reader(path: &Path, delimiter: u8) -> Result<csv::Reader<std::fs::File>> {
    csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .from_path(path)
        .map_err(|e| Error::data(path, e.to_string()))
}

/// The index of the header's column `name`, or an error naming the file.
pub fn column(headers: &csv::StringRecord, name: &str, path: &Path) -> Result<usize> {
    headers
        .iter()
        .position(|h| h == name)
        .ok_or_else(|| Error::data(path, format!("no `{name}` column in the header")))
}

/// A parsed field, or an error naming the row and column.
pub fn field<T: std::str::FromStr>(
    rec: &csv::StringRecord,
    i: usize,
    name: &str,
    row: usize,
    path: &Path,
) -> Result<T> {
    let raw = rec.get(i).unwrap_or("");
    raw.trim().parse().map_err(|_| {
        Error::data(
            path,
            format!("row {row}: `{name}` = {raw:?} is not a valid value"),
        )
    })
}

/// A box `x1,y1,x2,y2` of pixel coordinates: four finite numbers within i32, rounded, with
/// `x1 < x2` and `y1 < y2`. Anything else names the row, the column and the value.
pub fn parse_box(s: &str, name: &str, row: usize, path: &Path) -> Result<[i32; 4]> {
    let bad = |why: &str| {
        Error::data(
            path,
            format!("row {row}: `{name}` = {s:?} is not x1,y1,x2,y2{why}"),
        )
    };
    let v: Vec<f64> = s
        .split(',')
        .map(|x| x.trim().parse::<f64>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| bad(""))?;
    let v: [f64; 4] = v.try_into().map_err(|_| bad(""))?;
    if v.iter()
        .any(|x| !x.is_finite() || x.round() < i32::MIN as f64 || x.round() > i32::MAX as f64)
    {
        return Err(bad(
            ": a coordinate is not a finite number within the 32-bit pixel range",
        ));
    }
    let b = v.map(|x| x.round() as i32);
    if b[0] >= b[2] || b[1] >= b[3] {
        return Err(bad(": the box is empty or inverted (x1 ≥ x2 or y1 ≥ y2)"));
    }
    Ok(b)
}
