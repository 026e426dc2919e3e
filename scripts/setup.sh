#!/usr/bin/env bash
# What the tests need beyond a Rust toolchain: numpy (the independent reference in
# tests/reference/) and ONNX Runtime's shared library (.onnxruntime/, from PyPI's wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import numpy" 2>/dev/null || python3 -m pip install --quiet numpy
bash scripts/setup_onnxruntime.sh
