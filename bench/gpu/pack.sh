#!/usr/bin/env bash
# Build, on an online CPU machine, what bench/gpu/run.sh needs on an offline GPU host, under .gpu/ (git-ignored):
#   .gpu/whl/                  cp312 wheels the host lacks (gateway, Triton client, onnx2torch; grpcio/protobuf
#                              pinned because tritonclient 2.73's generated code needs grpcio >= 1.81, protobuf >= 6.33.5)
#   .gpu/triton-bundle.tar.xz  tritonserver 2.51, its libraries and the Python 3.12 stub from the nvidia-pytriton 0.7.0
#                              wheel (26 MB instead of 55: other stubs and the wheel's libpython3.13 left out), plus
#                              libpython3.12.so.1.0 when LIBPYTHON_DEB names Ubuntu's libpython3.12t64 .deb
#   .gpu/src/                  a snapshot of commit $COMMIT (default HEAD) with this folder in it
#   .gpu/repo/, .gpu/data/     python -m bench.gpu.prepare (fixture models, Ultralytics references)
# Usage: bash bench/gpu/pack.sh   (from the checkout root; needs .venv with the export extra and network for pip)
set -euxo pipefail
ROOT=$(pwd)
G=$ROOT/.gpu
PY=${PY:-$ROOT/.venv/bin/python}
mkdir -p "$G/whl" "$G/src"
pip_download() {
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_35_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$1" "${@:2}"
}
pip_download "$G/whl" starlette==1.10.0 uvicorn==0.54.0 httptools==0.9.0 python-multipart==0.0.34 orjson==3.13.0 \
  tritonclient==2.73.0 python-rapidjson==1.25 grpcio==1.85.3 protobuf==6.33.6 onnx2torch==1.5.15

TMP=$(mktemp -d)
pip_download "$TMP" nvidia-pytriton==0.7.0
(cd "$TMP" && unzip -q nvidia_pytriton-*.whl)
mkdir -p "$TMP/b/site/pytriton" "$TMP/b/libpy"
cp -a "$TMP/pytriton/tritonserver" "$TMP/b/site/pytriton/"
find "$TMP/b/site/pytriton/tritonserver/python_backend_stubs" -mindepth 1 -maxdepth 1 ! -name 3.12 -exec rm -rf {} +
cp -a "$TMP/nvidia_pytriton.libs" "$TMP/b/site/"
rm -f "$TMP"/b/site/nvidia_pytriton.libs/libpython3-*
echo '"""Stand-in: the tritonserver binary and libraries of the nvidia-pytriton 0.7.0 wheel (bench/gpu)."""' \
  > "$TMP/b/site/pytriton/__init__.py"
if [ -n "${LIBPYTHON_DEB:-}" ]; then
  dpkg -x "$LIBPYTHON_DEB" "$TMP/deb" && cp -L "$TMP"/deb/usr/lib/x86_64-linux-gnu/libpython3.12.so.1.0 "$TMP/b/libpy/"
fi
tar -C "$TMP/b" -c site libpy | xz -T0 -9 > "$G/triton-bundle.tar.xz"
rm -rf "$TMP"

rm -rf "$G/src" && mkdir -p "$G/src"
git archive "${COMMIT:-HEAD}" | tar -x -C "$G/src"
mkdir -p "$G/src/bench/gpu" && cp bench/gpu/*.py bench/gpu/*.sh "$G/src/bench/gpu/"
(cd "$G/src" && PYTHONPATH=. "$PY" -m bench.gpu.prepare --out "$G" --weights "$ROOT/weights/fixtures")
du -sh "$G/src" "$G/repo" "$G/data" "$G/whl" "$G/triton-bundle.tar.xz"
