//! `simat knn` on inputs a hostile or careless user gives: every one a named error (exit 2) that
//! writes nothing, and a full disk that leaves no temporary file behind.

use std::path::Path;

use simat::linalg::Matrix;

use crate::util::*;

fn matrix(rows: usize, cols: usize, seed: u32) -> Matrix {
    let data = (0..rows * cols)
        .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    Matrix::new(rows, cols, data).unwrap()
}

#[test]
fn bad_inputs_are_named_errors_that_write_nothing() {
    let dir = tempdir();
    let p = |n: &str| dir.path().join(n);
    simat::io::store::write_npy(&p("db.npy"), &matrix(100, 8, 1)).unwrap();
    simat::io::store::write_npy(&p("q.npy"), &matrix(10, 8, 2)).unwrap();
    simat::io::store::write_npy(&p("empty.npy"), &matrix(0, 8, 3)).unwrap();
    simat::io::store::write_npy(&p("flat.npy"), &matrix(100, 0, 4)).unwrap();
    // 192 bytes whose header says 2³² × 2³² (the element count wraps to 0 in 64 bits).
    npy_claiming(&p("wraps.npy"), "(4294967296, 4294967296)", 64);
    assert_eq!(std::fs::metadata(p("wraps.npy")).unwrap().len(), 192);
    npy_claiming(&p("short.npy"), "(4294967296, 8)", 64);
    npyz::to_file_1d(p("exclude.npy"), vec![3i64, 5, 1000, -1, 0, 0, 0, 0, 0, 0]).unwrap();

    let cases: &[(&[&str], &str)] = &[
        (
            &["--db", "wraps.npy", "--queries", "q.npy"],
            "wraps.npy`: the header's shape (4294967296, 4294967296) is too large to exist",
        ),
        (
            &["--db", "db.npy", "--queries", "wraps.npy"],
            "wraps.npy`: the header's shape",
        ),
        (
            &["--db", "short.npy", "--queries", "q.npy"],
            "has 34359738368 elements, more than the file's 192 bytes",
        ),
        (
            &[
                "--db",
                "db.npy",
                "--queries",
                "q.npy",
                "-k",
                "100000000000000",
            ],
            "-k 100000000000000 asks for more neighbours than the 100 rows of the database",
        ),
        (
            &["--db", "empty.npy", "--queries", "q.npy"],
            "empty.npy` (database) has no rows",
        ),
        (
            &["--db", "db.npy", "--queries", "empty.npy"],
            "empty.npy` (queries) has no rows",
        ),
        (
            &["--db", "flat.npy", "--queries", "flat.npy"],
            "has vectors of dimension 0",
        ),
        (
            &[
                "--db",
                "db.npy",
                "--queries",
                "q.npy",
                "--exclude",
                "exclude.npy",
            ],
            "exclude.npy`: row 2 excludes database row 1000, but the database",
        ),
    ];
    for (args, want) in cases {
        let mut full: Vec<String> = vec!["knn".into()];
        for a in *args {
            let path = p(a);
            full.push(if path.exists() {
                path.to_string_lossy().into_owned()
            } else {
                a.to_string()
            });
        }
        full.extend([
            "--out".into(),
            p("hits.parquet").to_string_lossy().into_owned(),
        ]);
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        let out = run_ok(&full, 2);
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
        assert!(!p("hits.parquet").exists(), "{args:?} wrote its output");
    }
}

#[test]
fn a_full_disk_leaves_no_temporary_file_and_the_rerun_completes() {
    let dir = tempdir();
    let p = |n: &str| dir.path().join(n);
    simat::io::store::write_npy(&p("db.npy"), &matrix(3000, 16, 1)).unwrap();
    simat::io::store::write_npy(&p("q.npy"), &matrix(3000, 16, 2)).unwrap();
    let args = |out: &Path| {
        format!(
            "knn --db {} --queries {} -k 50 --out {}",
            s(&p("db.npy")),
            s(&p("q.npy")),
            s(out)
        )
    };
    // The file-size limit makes writes past 64 KiB fail (EFBIG) as a full disk fails them
    // (ENOSPC), through the same paths; SIGXFSZ is ignored so the write returns the error.
    let bin = env!("CARGO_BIN_EXE_simat");
    let limited = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "trap '' XFSZ; ulimit -f 64; exec {bin} {}",
            args(&p("hits.parquet"))
        ))
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&limited.stderr);
    assert_eq!(limited.status.code(), Some(2), "{err}");
    assert!(err.contains("hits.parquet"), "{err}");
    let left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp-") || n == "hits.parquet")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");

    let argv = |out: &Path| args(out).split(' ').map(String::from).collect::<Vec<_>>();
    let a = argv(&p("hits.parquet"));
    run_ok(&a.iter().map(String::as_str).collect::<Vec<_>>(), 0);
    let b = argv(&p("again.parquet"));
    run_ok(&b.iter().map(String::as_str).collect::<Vec<_>>(), 0);
    assert_eq!(
        std::fs::read(p("hits.parquet")).unwrap(),
        std::fs::read(p("again.parquet")).unwrap()
    );
}

/// Every `--precision` writes the same file: the same ids and bit-identical f32 scores. Where
/// the CPU has no bf16 units, `--precision bf16` is refused with a sentence that says why and
/// what to use, and writes nothing.
#[test]
fn every_precision_writes_the_same_hits() {
    let dir = tempdir();
    let p = |n: &str| dir.path().join(n);
    // Unit-norm rows with many near ties: copies of rows, one ulp apart in one value.
    let mut db = matrix(3000, 64, 7);
    for r in (1..db.rows).step_by(3) {
        let (src, dst) = ((r - 1) * 64, r * 64);
        db.data.copy_within(src..src + 64, dst);
        db.data[dst + r % 64] = f32::from_bits(db.data[dst + r % 64].to_bits() ^ 1);
    }
    simat::linalg::normalize_rows(&mut db);
    simat::io::store::write_npy(&p("db.npy"), &db).unwrap();
    simat::io::store::write_npy(&p("q.npy"), &matrix(300, 64, 8)).unwrap();
    // `simat knn --precision P`, with `SIMAT_KERNEL_ISA=isa` when given.
    let search = |precision: &str, isa: Option<&str>| {
        let out = p(&format!("{precision}-{}.parquet", isa.unwrap_or("best")));
        let mut cmd = simat();
        if let Some(isa) = isa {
            cmd.env("SIMAT_KERNEL_ISA", isa);
        }
        let o = cmd
            .args([
                "knn",
                "--db",
                s(&p("db.npy")),
                "--queries",
                s(&p("q.npy")),
                "-k",
                "7",
                "--out",
                s(&out),
                "--precision",
                precision,
            ])
            .output()
            .unwrap();
        (o, out)
    };
    let assert_refused = |(o, out): &(std::process::Output, std::path::PathBuf)| {
        assert_eq!(o.status.code(), Some(2), "{}", stderr(o));
        assert!(
            stderr(o).contains("neither AMX-BF16 nor AVX-512 BF16")
                && stderr(o).contains("use f32"),
            "{}",
            stderr(o)
        );
        assert!(!out.exists());
    };
    let (f32_run, f32_out) = search("f32", None);
    assert_eq!(f32_run.status.code(), Some(0), "{}", stderr(&f32_run));
    assert!(stderr(&f32_run).contains("f32 ("), "{}", stderr(&f32_run));
    let f32_bytes = std::fs::read(&f32_out).unwrap();
    let (auto_run, auto_out) = search("auto", None);
    assert_eq!(auto_run.status.code(), Some(0), "{}", stderr(&auto_run));
    assert_eq!(
        std::fs::read(&auto_out).unwrap(),
        f32_bytes,
        "auto differs from f32"
    );
    // As on a CPU without AVX-512 (hence without bf16 units), on every machine.
    assert_refused(&search("bf16", Some("avx2")));
    let bf16 = search("bf16", None);
    let (bf16_run, bf16_out) = &bf16;
    if simat::linalg::bf16::Unit::detect().is_some() {
        assert_eq!(bf16_run.status.code(), Some(0), "{}", stderr(bf16_run));
        assert!(
            stderr(bf16_run).contains("f32 re-rank of"),
            "{}",
            stderr(bf16_run)
        );
        assert_eq!(
            std::fs::read(bf16_out).unwrap(),
            f32_bytes,
            "bf16 differs from f32"
        );
    } else {
        assert_refused(&bf16);
    }
}
