#!/usr/bin/env bash
# Run here before a GPU lease. The device machine cannot fetch the default model, so the tests' tiny
# models take the default model's tokenizer from .device/tokenizer, which the lease carries:
#   bash benchmarks/prepare_device.sh
#   run(command="bash benchmarks/gpu_suite.sh", carry=[".device"], timeout_s=600)
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .device/tokenizer && mkdir -p .device/tokenizer
python3 - <<'PY'
import shutil
from engine.loader.resolve import default_model_folder

for file in default_model_folder().iterdir():
    if file.name not in ("config.json", "model.safetensors"):
        shutil.copy(file, ".device/tokenizer")
PY
du -sh .device
