#!/usr/bin/env python3
"""Ingest speed against peers, on the same files in the same run.

    pip install pandas duckdb
    cargo build --release
    python3 benches/ingest_peers.py [--images 108000] [--work bench-out/ingest]

1. `simat synth --image-count N` writes a synthetic Visual Genome (N = 108,000 is about VG's size:
   check the relationship count and file size against VG's 2.3 M and ~0.7 GB).
2. Three contenders turn `relationships.json` into a flat relationships table (one row per
   relationship, subject and object flattened), each in a fresh process, timed with peak RSS:
   - simat ingest (image_data.json + relationships.json → Parquet),
   - Python: json.load + pandas DataFrame → Parquet,
   - DuckDB: read_json + unnest → Parquet (COPY).
The file is read once before each contender, so that all start with it in the page cache.
Prints MB/s, relationships/s, peak RSS and the ratios, and writes them as JSON.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIMAT = os.path.join(ROOT, "target", "release", "simat")


def warm(path):
    """Read a file once so that every contender starts with it in the page cache."""
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass


def timed(cmd, env=None):
    """Run cmd under /usr/bin/time -v; return (wall seconds, peak RSS bytes, stdout)."""
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-v"] + cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if p.returncode not in (0, 1):
        sys.exit(f"{cmd} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
    return wall, rss_kb * 1024, p.stdout


PY_PEER = r'''
import json, sys, pandas as pd
src, dst = sys.argv[1], sys.argv[2]
with open(src) as f:
    data = json.load(f)
rows = []
for img in data:
    iid = img.get("image_id", img.get("id"))
    for r in img["relationships"]:
        s, o = r["subject"], r["object"]
        sn = s["name"] if "name" in s else s["names"][0]
        on = o["name"] if "name" in o else o["names"][0]
        rows.append((iid, r["relationship_id"], r["predicate"], r.get("synsets", []),
                     s["object_id"], sn, s.get("synsets", []), s["x"], s["y"], s["w"], s["h"],
                     o["object_id"], on, o.get("synsets", []), o["x"], o["y"], o["w"], o["h"]))
cols = ["image_id", "relationship_id", "predicate", "synsets",
        "subj_id", "subj_name", "subj_synsets", "subj_x", "subj_y", "subj_w", "subj_h",
        "obj_id", "obj_name", "obj_synsets", "obj_x", "obj_y", "obj_w", "obj_h"]
df = pd.DataFrame.from_records(rows, columns=cols)
df.to_parquet(dst)
print(len(df))
'''

DUCK_PEER = r'''
import sys, duckdb
src, dst = sys.argv[1], sys.argv[2]
con = duckdb.connect()
con.execute("SET enable_progress_bar = false")
con.execute("SET threads TO 2")
con.execute(f"""
COPY (
  SELECT image_id, r.relationship_id, r.predicate, r.synsets,
         r.subject.object_id AS subj_id,
         coalesce(r.subject.name, r.subject.names[1]) AS subj_name, r.subject.synsets AS subj_synsets,
         r.subject.x AS subj_x, r.subject.y AS subj_y, r.subject.w AS subj_w, r.subject.h AS subj_h,
         r.object.object_id AS obj_id,
         coalesce(r.object.name, r.object.names[1]) AS obj_name, r.object.synsets AS obj_synsets,
         r.object.x AS obj_x, r.object.y AS obj_y, r.object.w AS obj_w, r.object.h AS obj_h
  FROM (SELECT image_id, unnest(relationships) AS r
        FROM read_json('{src}', format = 'array', maximum_object_size = 268435456))
) TO '{dst}' (FORMAT parquet)
""")
print(con.execute(f"SELECT count(*) FROM read_parquet('{dst}')").fetchone()[0])
'''


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=108000)
    ap.add_argument("--work", default=os.path.join(ROOT, "bench-out", "ingest"))
    ap.add_argument("--skip-python", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    synth_run = os.path.join(args.work, "synth-run")
    vg = os.path.join(synth_run, "synth", "vg")
    rel = os.path.join(vg, "relationships.json")
    if not os.path.exists(rel):
        t, rss, out = timed([SIMAT, "-q", "synth", "--run", synth_run, "--image-count",
                             str(args.images), "--seed", "1"])
        print(f"synth: {t:.1f}s, peak RSS {rss / 2**20:.0f} MiB")
    size = os.path.getsize(rel)

    # simat reads image_data.json and relationships.json (objects/attributes absent → empty tables).
    only = os.path.join(args.work, "vg-rel-only")
    os.makedirs(only, exist_ok=True)
    for f in ["image_data.json", "relationships.json"]:
        if not os.path.exists(os.path.join(only, f)):
            os.symlink(os.path.join(vg, f), os.path.join(only, f))
    run = os.path.join(args.work, "run")
    shutil.rmtree(run, ignore_errors=True)
    warm(rel)
    t_simat, rss_simat, _ = timed([SIMAT, "-q", "ingest", "--vg", only, "--run", run])
    manifest = json.load(open(os.path.join(run, "manifest.json")))
    n_rel = manifest["stages"]["ingest"]["counters"]["relationships"]

    results = {"file_bytes": size, "relationships": n_rel, "images": args.images,
               "simat": {"seconds": t_simat, "peak_rss": rss_simat}}
    duck_out = os.path.join(args.work, "duckdb.parquet")
    warm(rel)
    t, rss, out = timed([sys.executable, "-c", DUCK_PEER, rel, duck_out])
    assert int(out.strip().splitlines()[-1]) == n_rel, (out, n_rel)
    results["duckdb"] = {"seconds": t, "peak_rss": rss}
    if not args.skip_python:
        py_out = os.path.join(args.work, "python.parquet")
        warm(rel)
        t, rss, out = timed([sys.executable, "-c", PY_PEER, rel, py_out])
        assert int(out.strip().splitlines()[-1]) == n_rel, (out, n_rel)
        results["python"] = {"seconds": t, "peak_rss": rss}

    print(f"relationships.json: {size / 1e6:.0f} MB, {n_rel:,} relationships, {args.images:,} images")
    print(f"{'tool':<8} {'seconds':>8} {'MB/s':>8} {'rel/s':>12} {'peak RSS':>10} {'simat is':>10}")
    for name in ["simat", "duckdb", "python"]:
        if name not in results:
            continue
        r = results[name]
        ratio = r["seconds"] / t_simat
        print(f"{name:<8} {r['seconds']:>8.2f} {size / 1e6 / r['seconds']:>8.0f} "
              f"{n_rel / r['seconds']:>12,.0f} {r['peak_rss'] / 2**20:>7.0f} MiB {ratio:>9.1f}x")
    with open(os.path.join(args.work, "results.json"), "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
