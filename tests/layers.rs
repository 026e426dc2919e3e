//! The crate's layers point one way (`src/lib.rs`): a module uses only its own layer's peers and
//! the layers below it, no stage uses another stage, and nothing below `stages` uses a stage.
//! Read from the source, test modules and comments aside, so that a new import that breaks the
//! order fails here with the file and the path it named.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module's layer, lowest first (as `src/lib.rs` lists them).
const LAYERS: &[(&str, u32)] = &[
    ("error", 0),
    ("ui", 0),
    ("config", 0),
    ("io", 1),
    ("linalg", 1),
    ("model", 2),
    ("tables", 2),
    ("vocabulary", 3),
    ("release", 3),
    ("world", 3),
    ("report", 3),
    ("oracle", 3),
    ("metrics", 3),
    ("bootstrap", 1),
    ("compare", 3),
    ("leaderboard", 3),
    ("engine", 4),
    ("stages", 5),
    ("pipeline", 6),
    ("query", 6),
    ("schemas", 6),
    ("slurm", 6),
    ("sweep", 6),
    ("cli", 7),
];

fn layer(module: &str) -> Option<u32> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// A file's code: its test module (by convention the last item) and its comments removed.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    text.lines()
        .map(|l| match l.find("//") {
            // `//` inside a string literal ("http://") is rare in this crate and only hides
            // the rest of its line.
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The crate paths a file's code names, as `(first, second)` segments: `crate::a::b`, the
/// members of `use crate::{a, b::c}` groups, and `super::x::` resolved against the file's
/// module.
fn named(code: &str, module: &[String]) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // A use group: its top-level members.
            let mut depth = 0;
            let mut member = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 && c == ',' {
                    push_member(&member, &mut out);
                    member.clear();
                } else {
                    member.push(c);
                }
            }
            push_member(&member, &mut out);
        } else {
            push_member(rest, &mut out);
        }
    }
    for (i, _) in code.match_indices("super::") {
        let rest = &code[i + "super::".len()..];
        let first = ident_at(rest);
        if first.is_empty() || module.is_empty() || !rest[first.len()..].starts_with("::") {
            continue;
        }
        let parent = &module[..module.len() - 1];
        let path: Vec<&str> = parent.iter().map(String::as_str).chain([first]).collect();
        out.insert((
            path[0].to_string(),
            path.get(1).copied().unwrap_or("").to_string(),
        ));
    }
    out
}

fn push_member(member: &str, out: &mut BTreeSet<(String, String)>) {
    let member = member.trim();
    let first = ident_at(member);
    if first.is_empty() {
        return;
    }
    let second = member[first.len()..]
        .strip_prefix("::")
        .map(ident_at)
        .unwrap_or("");
    out.insert((first.to_string(), second.to_string()));
}

#[test]
fn layers_point_one_way_and_no_stage_uses_another() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![];
    rust_files(&src, &mut files);
    files.sort();
    let mut broken = vec![];
    let mut uses: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let mut module: Vec<String> = rel
            .with_extension("")
            .iter()
            .map(|c| c.to_string_lossy().into_owned())
            .collect();
        if matches!(
            module.last().map(String::as_str),
            Some("mod" | "lib" | "main")
        ) {
            module.pop();
        }
        let Some(top) = module.first().cloned() else {
            continue; // lib.rs and main.rs sit above every layer
        };
        let Some(own) = layer(&top) else {
            broken.push(format!(
                "{}: module `{top}` has no layer in tests/layers.rs",
                rel.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(f).unwrap();
        for (first, second) in named(&code(&text), &module) {
            if first == top {
                // Within stages, a stage names only itself (and the list, `stages::ALL`).
                let stage_file = top == "stages" && module.len() >= 2;
                if stage_file && !second.is_empty() && second != module[1] {
                    broken.push(format!(
                        "{}: stage `{}` uses stage `{second}`",
                        rel.display(),
                        module[1]
                    ));
                }
                continue;
            }
            let Some(theirs) = layer(&first) else {
                continue; // not a module (a macro, an item of lib.rs such as ENGINE_VERSION)
            };
            if theirs > own {
                broken.push(format!(
                    "{}: `{top}` (layer {own}) uses `{first}::{second}` (layer {theirs})",
                    rel.display()
                ));
            }
            uses.entry(top.clone()).or_default().insert(first);
        }
    }
    // Peers of one layer must not use each other both ways.
    for (a, bs) in &uses {
        for b in bs {
            if uses.get(b).is_some_and(|cs| cs.contains(a)) && a < b {
                broken.push(format!("`{a}` and `{b}` use each other"));
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn the_scanner_sees_groups_and_super_paths() {
    let module: Vec<String> = vec!["stages".into(), "score".into()];
    let n = named(
        "use crate::{engine::Need, io};\nlet x = super::retrieve::K; crate::tables::X",
        &module,
    );
    let n: Vec<(&str, &str)> = n.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    assert_eq!(
        n,
        vec![
            ("engine", "Need"),
            ("io", ""),
            ("stages", "retrieve"),
            ("tables", "X")
        ]
    );
}
