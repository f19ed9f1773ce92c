#!/usr/bin/env bash
# Run here before a GPU lease. The device machine cannot fetch the default model, so the tests' tiny
# models take the default model's tokenizer from .device/tokenizer, which the lease carries:
#   bash benchmarks/prepare_device.sh
#   run(command="bash benchmarks/gpu_suite.sh", carry=[".device"], timeout_s=600)
set -euo pipefail
cd "$(dirname "$0")/.."
model=$(python3 -c "from engine.model.loader.resolve import default_model_folder; print(default_model_folder())")
rm -rf .device/tokenizer && mkdir -p .device/tokenizer
find "$model" -maxdepth 1 -type f ! -name model.safetensors -exec cp {} .device/tokenizer/ \;  # all but the weights
du -sh .device
