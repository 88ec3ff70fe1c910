#!/usr/bin/env bash
# The GPU run, in one command: install the carried wheels, check the converted graph, serve and measure.
#
#   bash .gpu/src/bench/gpu/run.sh   on the GPU host, from the checkout root, with .gpu/ made by pack.sh (README.md)
#   SMALL=1 PY=.venv/bin/python bash bench/gpu/run.sh     the same steps on a small CPU machine (rehearsal)
#
# .gpu/ holds what bench/gpu/pack.sh builds: src/ (a snapshot of the project), repo/ and data/ (prepare.py),
# whl/ (cp312 wheels), triton-bundle.tar.xz (tritonserver and its libraries from nvidia-pytriton 0.7.0).
# Every step has a hard timeout; everything is logged into $OUT.
set -x
set -o pipefail
export PYTHONUNBUFFERED=1
G=$(cd "$(dirname "$0")/../.." && pwd)/.gpu
[ -d "$G/src" ] || G=$(pwd)/.gpu
OUT=${OUT:-/tmp/bench-gpu-out}
PY=${PY:-python3}
SITE=${SITE:-/tmp/bench-gpu-site}
WORK=/tmp/bench-gpu-work
mkdir -p "$OUT" "$SITE" "$WORK"
exec > >(tee -a "$OUT/run.log") 2>&1

nvidia-smi --query-gpu=name,memory.total,driver_version,utilization.gpu --format=csv || true
nproc; $PY -V

if [ -z "$SMALL" ]; then
  timeout 120 $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$G"/whl/*.whl || exit 2
  timeout 60 tar -xJf "$G/triton-bundle.tar.xz" -C "$WORK" || exit 3
  cp -a "$WORK"/site/. "$SITE"/
  export PYTHONPATH=$SITE
  # The python-backend stub links libpython3.12.so.1.0; use the host's when it has one, else the carried one.
  if ! $PY -c "import ctypes; ctypes.CDLL('libpython3.12.so.1.0')" 2>/dev/null; then
    LIBDIR=$($PY -c "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))")
    [ -e "$LIBDIR/libpython3.12.so.1.0" ] || export LD_LIBRARY_PATH=$WORK/libpy${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  fi
  LD_LIBRARY_PATH=$SITE/nvidia_pytriton.libs:$($PY -c "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"):$LD_LIBRARY_PATH \
    ldd "$SITE/pytriton/tritonserver/python_backend_stubs/3.12/triton_python_backend_stub" "$SITE/pytriton/tritonserver/bin/tritonserver" | grep -i "not found"
  LEVELS=${LEVELS:-1,16,64,128,256}; SECONDS_PER_LEVEL=${SECONDS_PER_LEVEL:-8}; PROCS=${PROCS:-4}
  GW_WORKERS=${GW_WORKERS:-8}; GW_THREADS=${GW_THREADS:-3}; BATCHES=1,32,64
else
  export PYTHONPATH=$G/site311
  LEVELS=${LEVELS:-1,2}; SECONDS_PER_LEVEL=${SECONDS_PER_LEVEL:-3}; PROCS=${PROCS:-2}
  GW_WORKERS=${GW_WORKERS:-2}; GW_THREADS=${GW_THREADS:-1}; BATCHES=1; FP32_LEVELS=${FP32_LEVELS:-1}
fi
$PY -c "import torch, numpy, onnx, onnx2torch, tritonclient.grpc, starlette, uvicorn, cv2, google.protobuf, grpc; print('torch', torch.__version__, torch.cuda.is_available(), 'numpy', numpy.__version__, 'protobuf', google.protobuf.__version__, 'grpcio', grpc.__version__)" || exit 4

# .gpu/src: the frozen snapshot pack.sh made (a checkout others edit stays out of the run); else this checkout.
SRC=$G/src; [ -d "$SRC/bench/gpu" ] || SRC=$(cd "$(dirname "$0")/../.." && pwd)
cd "$SRC" || exit 5
timeout 100 $PY -m bench.gpu.check --onnx "$G/repo/yolov8n/1/model.onnx" --photo "$G/data/photo-1080p.jpg" --out "$OUT" --batches "$BATCHES"
echo "check exit $?"

# Serve the faster FP16 layout (channels-last or not) as measured just now.
rm -rf "$WORK/repo" && cp -a "$G/repo" "$WORK/repo"
$PY - "$OUT/check.json" "$WORK/repo" "${SMALL:+small}" <<'EOF'
import json, pathlib, sys
check, repo, small = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3] == "small"
try:
    v = {(r["precision"], r["channels_last"]): r for r in json.load(open(check))["variants"]}
    key = max(k for k in v[("fp16", True)] if k.startswith("ms_batch"))
    cl = v[("fp16", True)][key] <= v[("fp16", False)][key]
except (OSError, KeyError, ValueError):
    cl = True
for config in repo.glob("*/config.pbtxt"):
    text = config.read_text()
    if "fp32" not in config.parent.name and not cl:
        text = text.replace('key: "channels_last"\n  value { string_value: "true" }', 'key: "channels_last"\n  value { string_value: "false" }')
    if small:  # a 2-core rehearsal: one instance, no warm-up of batches up to 64
        text = text.replace("count: 2", "count: 1").replace('string_value: "384x640"', 'string_value: ""')
    config.write_text(text)
print("fp16 channels_last:", cl)
EOF

# One OpenMP thread per process: Triton's stubs, the gateway workers and the load generators share the cores.
export OMP_NUM_THREADS=1
timeout ${BENCH_TIMEOUT:-300} $PY -m bench.gpu --repository "$WORK/repo" --data "$G/data" --out "$OUT" --work "$WORK" \
  --triton-levels "$LEVELS" --gateway-levels "$LEVELS" --fp32-levels "${FP32_LEVELS:-64}" --seconds "$SECONDS_PER_LEVEL" \
  --processes "$PROCS" --gateway-workers "$GW_WORKERS" --gateway-threads "$GW_THREADS"
rc=$?
echo "bench exit $rc"
nvidia-smi --query-gpu=name,utilization.gpu,memory.used --format=csv || true
exit $rc
