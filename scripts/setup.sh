#!/usr/bin/env bash
# What the tests need beyond a Rust toolchain: numpy (the independent reference in
# tests/reference/), ONNX Runtime's shared library (.onnxruntime/, from PyPI's wheel) and
# headless Chromium (Debian's `chromium`, for the HTML report's browser tests), and a one-node
# Slurm cluster in target/slurm (scripts/slurm_local.sh: Debian's slurm-wlm and munge), whose
# test submits parts of a stage as a job array. Without root or sudo the cluster is left out
# with a warning, and its test says it is skipped (CI sets SIMAT_REQUIRE_SLURM=1 and cannot).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import numpy" 2>/dev/null || python3 -m pip install --quiet numpy
bash scripts/setup_onnxruntime.sh
if [ -z "${CHROMIUM:-}" ] && ! [ -x /usr/bin/chromium ]; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi
if ! scripts/slurm_local.sh target/slurm; then
    echo "setup: no local Slurm cluster (scripts/slurm_local.sh target/slurm failed); its test is skipped" >&2
fi
