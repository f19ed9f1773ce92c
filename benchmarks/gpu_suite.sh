#!/usr/bin/env bash
# Everything a GPU lease is for, in one call of the device machine:
#   bash benchmarks/prepare_device.sh      # here, first: the default model's tokenizer for the tests
#   run(command="bash benchmarks/gpu_suite.sh", carry=[".device"], timeout_s=600)
# CUDA kernel tests, kernel roofline benchmarks, end-to-end decode throughput. Results land in
# $OUT (the device tool's folder) or benchmarks/results/gpu; commit them with the JSON and PNG.
set -uo pipefail
OUT=$(realpath -m "${OUT:-benchmarks/results/gpu}")
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
[ -d .device/tokenizer ] && export ENGINE_TEST_TOKENIZER_DIR=$PWD/.device/tokenizer
# The device runs this checkout uninstalled (it can fetch nothing, pip install included), so lay it out
# as the install does, in links: engine/ with api/, kernels/ and scheduler/ inside; run from there.
layout=$(mktemp -d)
mkdir "$layout/engine"
ln -s "$PWD"/engine/* "$layout/engine/"
for folder in api kernels scheduler; do ln -s "$PWD/$folder" "$layout/engine/$folder"; done
ln -s "$PWD/tests" "$PWD/benchmarks" "$PWD/pyproject.toml" "$layout/"
cd "$layout"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee "$OUT/device.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/device.txt"
timeout 170 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_triton_kernels.py \
    tests/kernels/test_reference.py tests/engine/test_triton_path.py 2>&1 | tee "$OUT/cuda_kernel_tests.log" | tail -5
timeout 120 python3 -m benchmarks.kernels --out "$OUT/kernels.json" --plot "$OUT/kernels.png" 2>&1 | tee "$OUT/kernels.log"
timeout 240 python3 -m benchmarks.gpu_e2e --out "$OUT/e2e.json" 2>&1 | tee "$OUT/e2e.log"
