#!/usr/bin/env bash
# The sweep's wall time against separate runs of its models: pipelines/sweep.toml (the demo world,
# three tiny models) as one sweep, and as three pipelines of one model each (the same file with
# `[embed] model = ...` and no `[sweep]`), each from an empty run directory, REPEAT times
# alternating. Prints each time and peak RSS, then the medians and their ratio.
#
#   benches/sweep_vs_runs.sh [SIMAT] [REPEAT]      # default: target/release/simat, 3
set -euo pipefail
cd "$(dirname "$0")/.."
simat=$(realpath "${1:-target/release/simat}")
repeat=${2:-3}
root=$PWD
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

sed -e "s|\"\\.\\./data/|\"$root/data/|g" -e 's|run_dir = "../runs/sweep"|run_dir = "run"|' \
    pipelines/sweep.toml > "$work/sweep.toml"
models=(tiny-clip tiny-clip-world tiny-clip-hf)
for m in "${models[@]}"; do
    python3 - "$work/sweep.toml" "$root/data/$m" "$work/alone-$m.toml" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
text = re.sub(r"\[sweep\]\nmodels = \[.*\]\n", "", text)
text = text.replace("[embed]\n", f'[embed]\nmodel = "{sys.argv[2]}"\n')
open(sys.argv[3], "w").write(text)
PY
done

# `/usr/bin/time`'s wall seconds and peak RSS (KiB) of one command, from an empty run directory.
measure() {
    rm -rf "$work/run"
    /usr/bin/time -f "%e %M" -o "$work/t" "$@" > /dev/null 2>&1
    cat "$work/t"
}
sweep_times=() runs_times=()
for i in $(seq "$repeat"); do
    read -r s rss < <(measure "$simat" -q run "$work/sweep.toml")
    echo "sweep: ${s} s, peak RSS $((rss / 1024)) MiB"
    sweep_times+=("$s")
    total=0 peak=0
    for m in "${models[@]}"; do
        read -r t r < <(measure "$simat" -q run "$work/alone-$m.toml")
        total=$(python3 -c "print(round($total + $t, 2))")
        peak=$((r > peak ? r : peak))
    done
    echo "three runs: ${total} s, peak RSS $((peak / 1024)) MiB"
    runs_times+=("$total")
done
python3 - "${sweep_times[*]}" "${runs_times[*]}" <<'PY'
import statistics, sys
a = statistics.median(map(float, sys.argv[1].split()))
b = statistics.median(map(float, sys.argv[2].split()))
print(f"median: sweep {a:.2f} s, three runs {b:.2f} s: the sweep takes {a / b:.2f} of the time ({b / a:.2f}x faster)")
PY
