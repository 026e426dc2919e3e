#!/usr/bin/env bash
# Peak RSS of the `queries` stage on a large synthetic world (issue: bounded `queries`).
#   benches/queries_rss.sh [IMAGES] [PLANT_RATE]   (defaults: 60000 0.15)
# Builds the release binary, runs synth → ingest → triplets → select (labels, 2+ images) in a
# temporary run, then `queries` alone under /usr/bin/time (GNU time, `-v`), and prints the
# query count, wall time and peak RSS. Set SIMAT_KEEP=1 to keep the run directory, then run the
# peer on it: /usr/bin/time -v python benches/queries_peers.py RUN (DuckDB, the same queries).
set -euo pipefail
images=${1:-60000}
rate=${2:-0.15}
cd "$(dirname "$0")/.."
cargo build --release --locked --quiet
bin=target/release/simat
dir=$(mktemp -d)
[ -n "${SIMAT_KEEP:-}" ] || trap 'rm -rf "$dir"' EXIT
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
/usr/bin/time -v "$bin" queries "$dir/run" 2> "$dir/time.txt" || { cat "$dir/time.txt"; exit 1; }
grep -E "Elapsed|Maximum resident" "$dir/time.txt"
"$bin" query "$dir/run" "SELECT count(*) AS queries FROM queries"
