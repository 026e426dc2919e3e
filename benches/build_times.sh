#!/usr/bin/env bash
# Clean debug and release build times of a commit, one build at a time, in a throwaway worktree
# and target directory: benches/build_times.sh [COMMIT]  (default HEAD). Prints the CPU.
set -euo pipefail
commit=${1:-HEAD}
cd "$(dirname "$0")/.."
work=$(mktemp -d)
git worktree add -q "$work/src" "$commit"
trap 'git worktree remove --force "$work/src"; rm -rf "$work"' EXIT
cd "$work/src"
echo "commit $(git rev-parse --short HEAD), $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
for profile in dev release; do
    start=$(date +%s.%N)
    CARGO_TARGET_DIR="$work/target" cargo build --locked --profile "$profile" >/dev/null 2>&1
    end=$(date +%s.%N)
    echo "$profile build: $(echo "$end - $start" | bc) s"
done
ls -l "$work/target/release/simat" | awk '{print "release binary bytes:", $5}'
