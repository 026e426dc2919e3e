#!/usr/bin/env bash
# Peak RSS of the queries → retrieve → score chain on a large synthetic world (issue: retrieve
# and score stream by query block).
#   benches/chain_rss.sh [IMAGES] [PLANT_RATE] [DIM] [BIN]   (defaults: 60000 0.15 32, the release build)
# Builds the release binary (unless BIN is given), runs synth → ingest → triplets → select
# (labels, 2+ images) in a temporary run, imports random raw embeddings (numpy; DIM dimensions,
# one row per dataset image and per query word), then `queries`, `retrieve` (λ = $LAMBDAS,
# default 0,1; k = 5) and `score` (labels), each under GNU time (`-v`), and prints each stage's
# wall time and peak RSS, with the query and retrieval counts. LAMBDAS=0 keeps the rows (one list
# per query) and skips the per-query sweep work, for the memory figure at 17 M queries. Set
# SIMAT_KEEP=1 to keep the run directory.
set -euo pipefail
images=${1:-60000}
rate=${2:-0.15}
dim=${3:-32}
lambdas=${LAMBDAS:-0,1}
cd "$(dirname "$0")/.."
if [ -n "${4:-}" ]; then
    bin=$(realpath "$4")
else
    cargo build --release --locked --quiet
    bin=target/release/simat
fi
dir=$(mktemp -d)
[ -n "${SIMAT_KEEP:-}" ] && echo "run directory: $dir" || trap 'rm -rf "$dir"' EXIT
cat > "$dir/p.toml" <<TOML
run_dir = "run"
[synth]
image_count = $images
seed = 5
plant_rate = $rate
[ingest]
[triplets]
[select]
oracle = "labels"
min_images = 2
TOML
"$bin" -q run "$dir/p.toml"
grep -m1 "model name" /proc/cpuinfo || true
measure() {
    local name=$1
    shift
    /usr/bin/time -v "$bin" -q "$@" 2> "$dir/time.txt" || { cat "$dir/time.txt"; exit 1; }
    printf '%-9s %s s, peak RSS %s KiB\n' "$name" \
        "$(grep -oP 'Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): \K.*' "$dir/time.txt")" \
        "$(grep -oP 'Maximum resident set size \(kbytes\): \K.*' "$dir/time.txt")"
}
measure queries queries "$dir/run"
# Random raw embeddings: one row per dataset image (dataset_id order) and per word the queries use.
"$bin" query "$dir/run" "SELECT count(*) AS n FROM dataset" --format csv | tail -n 1 > "$dir/n.txt"
"$bin" -q query "$dir/run" "SELECT DISTINCT w FROM (SELECT value AS w FROM queries UNION SELECT target AS w FROM queries) ORDER BY w" \
    --format csv --out "$dir/words.csv"
tail -n +2 "$dir/words.csv" > "$dir/words.txt"
python3 - "$dir" "$dim" <<'PY'
import sys, numpy as np
d, dim = sys.argv[1], int(sys.argv[2])
n = int(open(f"{d}/n.txt").read())
words = open(f"{d}/words.txt").read().splitlines()
rng = np.random.default_rng(0)
np.save(f"{d}/img.npy", rng.standard_normal((n, dim), dtype=np.float32))
np.save(f"{d}/words.npy", rng.standard_normal((len(words), dim), dtype=np.float32))
PY
"$bin" -q import-embeddings --run "$dir/run" --image-embeddings "$dir/img.npy" \
    --word-embeddings "$dir/words.npy" --words "$dir/words.txt"
measure retrieve retrieve "$dir/run" --lambdas "$lambdas" -k 5 --queries regenerated
measure score score "$dir/run" --oracle labels --queries regenerated
"$bin" query "$dir/run" "SELECT count(*) AS queries FROM queries"
"$bin" query "$dir/run" "SELECT count(*) AS retrievals FROM retrievals"
