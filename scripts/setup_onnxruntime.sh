#!/usr/bin/env bash
# Fetch ONNX Runtime's shared library from PyPI's `onnxruntime` wheel into .onnxruntime/
# (ignored by git). The wheel's libonnxruntime.so has no Python dependency; simat loads it at run
# time (ort's load-dynamic). Set ORT_VERSION to pick another release, ORT_DYLIB_PATH at run time
# to use a library from elsewhere (e.g. onnxruntime-gpu's, for CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
version="${ORT_VERSION:-1.32.0}"
dest=.onnxruntime
if [ -e "$dest/libonnxruntime.so.$version" ]; then
  echo "ONNX Runtime $version already in $dest/"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: "onnxruntime==$version" -d "$tmp"
mkdir -p "$dest"
python3 - "$tmp" "$dest" <<'PY'
import glob, os, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
(wheel,) = glob.glob(os.path.join(tmp, "*.whl"))
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        base = os.path.basename(name)
        if base.startswith("libonnxruntime"):
            with z.open(name) as src, open(os.path.join(dest, base), "wb") as out:
                out.write(src.read())
PY
ln -sf "libonnxruntime.so.$version" "$dest/libonnxruntime.so"
echo "ONNX Runtime $version in $dest/"
