#!/usr/bin/env bash
# The GPU checks, as one prepared run for a machine with an NVIDIA GPU lent for a few minutes
# (the device tool: 15 minutes a session, machine start included). From the repository root:
#
#     bash bench/gpu_check.sh            # PYTHON=python3, results under ${OUT:-/tmp/ggmk-gpu}
#
# In order of what only a GPU can show, each step time-boxed so a hang cannot eat the rest:
#   1. what the machine has (the target "auto" resolves to, nvidia-smi);
#   2. the cuda-marked tests (the GPU kernel's cuda target, a01/a03/a05/a11, the bridge's
#      a15/a16/a18/a19 on cuda, gpu_drv, storage's cuda paths), stopping at the first failure;
#   3. bench/gpu_kernel.py --target cuda (chain, host-fed, round trip);
#   4. bench/bridge.py --device cuda (the bridge figures and the to_device/copy_to_host peer).
# Every step's output is kept in $OUT (pytest.txt, gpu_kernel.json, bridge.json); a step that
# fails or times out is reported and the next one still runs. Without a usable GPU it stops
# after step 1 with exit code 2 (every cuda test would skip and read as a pass).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/ggmk-gpu}
mkdir -p "$OUT"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}

step() {                        # step NAME SECONDS FILE CMD...
    local name=$1 secs=$2 file=$3; shift 3
    echo "== $name (at most ${secs}s) -> $OUT/$file"
    local t0=$SECONDS
    timeout "$secs" "$@" > "$OUT/$file" 2>&1
    local rc=$?
    tail -n 5 "$OUT/$file"
    echo "== $name: rc=$rc in $((SECONDS - t0))s"
}

step machine 60 machine.txt bash -c "nvidia-smi -L; \
    $PY -c 'from ggmk.device.host import resolve_target; print(\"auto ->\", resolve_target(\"auto\"))'"
if ! grep -q "auto -> cuda" "$OUT/machine.txt"; then
    # without a usable GPU every cuda test skips and would read as a pass: say so and stop
    echo "gpu_check: no usable NVIDIA GPU here (the target 'auto' is not cuda); nothing run" >&2
    exit 2
fi
step cuda-tests 300 pytest.txt $PY -m pytest -m cuda -q -x -p no:cacheprovider --timeout 280
step gpu-kernel 120 gpu_kernel.json $PY bench/gpu_kernel.py --target cuda
step bridge 150 bridge.json $PY bench/bridge.py --device cuda --n 200000
