//! What a stage wrote, checked against what it declared before the engine commits it: every
//! table it provides is there, is recorded in its report, and has the declared schema. A stage
//! that writes a file under another name, forgets one, or changes a column's type fails here,
//! in the run that did it, instead of in the stage downstream that reads it.

use std::path::Path;

use arrow::datatypes::{DataType, Field, Schema};

use super::stage::StageReport;
use crate::error::{Error, Result};
use crate::tables::{TableDecl, TableKind};

/// Refuse a stage's outputs unless they are what it declared.
pub fn check(
    stage: &str,
    stage_dir: &Path,
    provides: &[&TableDecl],
    report: &StageReport,
) -> Result<()> {
    let mut problems = vec![];
    for t in provides {
        let path = stage_dir.join(t.file);
        let folder = t.kind == TableKind::Dir;
        // A folder is recorded whole (`name/`) or by the files in it that the stage names.
        let recorded = report.outputs.iter().any(|(f, _)| {
            if folder {
                f.trim_end_matches('/') == t.file || f.starts_with(&format!("{}/", t.file))
            } else {
                f == t.file
            }
        });
        let present = if folder {
            path.is_dir()
        } else {
            path.is_file()
        };
        if !present {
            problems.push(format!("`{}` ({}) was not written", t.file, t.name));
            continue;
        }
        if !recorded {
            problems.push(format!(
                "`{}` ({}) was written but not reported",
                t.file, t.name
            ));
        }
        let Some(schema) = t.schema else { continue };
        let written = match t.kind {
            TableKind::Parquet => crate::io::read_schema(&path)?,
            TableKind::Arrow => {
                let file = std::fs::File::open(&path)
                    .map_err(|e| Error::io("failed to open", &path, e))?;
                let reader = arrow::ipc::reader::FileReader::try_new(file, None)
                    .map_err(|e| Error::columnar(&path, e.to_string()))?;
                reader.schema()
            }
            _ => continue,
        };
        if let Some(d) = difference(&schema(), &written) {
            problems.push(format!("`{}` ({}): {d}", t.file, t.name));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::stage(
            stage,
            format!(
                "its outputs are not what it declares, so it is not committed: {}",
                problems.join("; ")
            ),
        ))
    }
}

/// How a written schema differs from the declared one (metadata aside), if it does. A declared
/// `FixedSizeList` of size 0 is an embedding of any dimension.
pub fn difference(declared: &Schema, written: &Schema) -> Option<String> {
    let names = |s: &Schema| {
        s.fields()
            .iter()
            .map(|f| f.name().clone())
            .collect::<Vec<_>>()
    };
    if names(declared) != names(written) {
        return Some(format!(
            "columns [{}], declared [{}]",
            names(written).join(", "),
            names(declared).join(", ")
        ));
    }
    declared
        .fields()
        .iter()
        .zip(written.fields())
        .find(|(d, w)| !same_field(d, w))
        .map(|(d, w)| {
            format!(
                "column `{}` is {}{}, declared {}{}",
                w.name(),
                w.data_type(),
                if w.is_nullable() { " (nullable)" } else { "" },
                d.data_type(),
                if d.is_nullable() { " (nullable)" } else { "" },
            )
        })
}

fn same_field(d: &Field, w: &Field) -> bool {
    d.is_nullable() == w.is_nullable() && same_type(d.data_type(), w.data_type())
}

fn same_type(d: &DataType, w: &DataType) -> bool {
    match (d, w) {
        (DataType::FixedSizeList(di, 0), DataType::FixedSizeList(wi, _)) => same_field(di, wi),
        (DataType::FixedSizeList(di, dn), DataType::FixedSizeList(wi, wn)) => {
            dn == wn && same_field(di, wi)
        }
        (DataType::List(di), DataType::List(wi))
        | (DataType::LargeList(di), DataType::LargeList(wi)) => same_field(di, wi),
        _ => d == w,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn any_dimension_matches_and_a_changed_type_is_named() {
        let emb = |n| {
            Field::new(
                "embedding",
                DataType::FixedSizeList(Arc::new(Field::new("item", DataType::Float32, false)), n),
                false,
            )
        };
        let declared = Schema::new(vec![
            Field::new("region_id", DataType::Int64, false),
            emb(0),
        ]);
        let written = Schema::new(vec![
            Field::new("region_id", DataType::Int64, false),
            emb(512),
        ]);
        assert_eq!(difference(&declared, &written), None);
        let fixed = Schema::new(vec![
            Field::new("region_id", DataType::Int64, false),
            emb(64),
        ]);
        assert!(difference(&fixed, &written).is_some());
        let int32 = Schema::new(vec![
            Field::new("region_id", DataType::Int32, false),
            emb(512),
        ]);
        assert_eq!(
            difference(&declared, &int32).unwrap(),
            "column `region_id` is Int32, declared Int64"
        );
        let renamed = Schema::new(vec![Field::new("id", DataType::Int64, false), emb(512)]);
        assert!(difference(&declared, &renamed)
            .unwrap()
            .starts_with("columns [id, embedding]"));
    }
}
