#!/usr/bin/env bash
# The Slurm executor's overhead: wall time of the demo pipeline (or its world SCALE times larger)
# run here in one process against `--executor slurm --wait` with 1, 2 and 4 shards, on the cluster
# of SLURM_CONF (default: the one scripts/slurm_local.sh starts in target/slurm), and the peak RSS
# of the local run and of one embed part (from the tasks' logs, `simat::memory`). Every run's
# scores.parquet and results.parquet must equal the local run's, byte for byte.
#   benches/slurm_overhead.sh [SCALE] [BIN]      e.g. benches/slurm_overhead.sh 10 target/release/simat
set -euo pipefail
scale=${1:-1}
bin=$(realpath "${2:-target/release/simat}")
root=$(cd "$(dirname "$0")/.." && pwd)
export SLURM_CONF=${SLURM_CONF:-$root/target/slurm/slurm.conf}
export SIMAT_LOG=warn,simat::memory=debug
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Chunks of 256 crops, so that four parts each have some at scale 1 (the chunk size changes no table).
sed -e 's|^run_dir = .*|run_dir = "run"|' \
    -e "s|^image_count = 400|image_count = $((400 * scale))|" \
    -e "s|\"../data/tiny-clip-world\"|\"$root/data/tiny-clip-world\"\nchunk_images = 256|" \
    "$root/pipelines/demo.toml" > "$work/p.toml"
peak() { grep -o 'peak_rss_kib=[0-9]*' "$1" | tail -1 | cut -d= -f2 | awk '{ printf "%.0f MiB", $1 / 1024 }'; }
seconds() { local t0=$1; awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f s", b - a }'; }

echo "scale $scale ($((400 * scale)) images), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, $bin"
t0=$(date +%s.%N)
"$bin" run "$work/p.toml" --run-dir "$work/local" > /dev/null 2> "$work/local.log"
echo "local          $(seconds "$t0")  peak RSS $(peak "$work/local.log")  ($("$bin" query "$work/local" 'SELECT count(*) AS n FROM queries' --format csv | tail -1) queries)"
for n in 1 2 4; do
    t0=$(date +%s.%N)
    "$bin" --wait run "$work/p.toml" --run-dir "$work/s$n" --executor slurm --shards "$n" > /dev/null 2> "$work/s$n.log"
    jobs=$(python3 -c "import json,sys; print(len(json.load(open(sys.argv[1]))['jobs']))" "$work/s$n/.slurm/submission.json")
    part=$(ls "$work/s$n/.slurm/logs/" | grep -m1 -E '^embed-[0-9]+(_0)?\.out$')
    echo "slurm shards=$n $(seconds "$t0")  $jobs jobs  peak RSS of $part: $(peak "$work/s$n/.slurm/logs/$part")"
    for f in score/scores.parquet score/results.parquet retrieve/retrievals.parquet; do
        cmp -s "$work/local/$f" "$work/s$n/$f" || { echo "$f differs from the local run's"; exit 1; }
    done
done
