#!/usr/bin/env bash
# Talk to `engine serve` with curl: start it first, e.g.
#   engine serve --served-model-name smollm2 &
set -euo pipefail
URL=${URL:-http://127.0.0.1:8000}

curl -s "$URL/v1/models"; echo

# OpenAI completions, then chat, streamed as server-sent events
curl -s "$URL/v1/completions" -H 'Content-Type: application/json' \
  -d '{"model": "smollm2", "prompt": "The capital of France is", "max_tokens": 16, "temperature": 0}'; echo
curl -sN "$URL/v1/chat/completions" -H 'Content-Type: application/json' \
  -d '{"model": "smollm2", "messages": [{"role": "user", "content": "Name three colours."}], "max_tokens": 32, "stream": true}'

# KServe Open Inference Protocol: infer, and Triton's generate extension
curl -s "$URL/v2/models/smollm2/infer" -H 'Content-Type: application/json' \
  -d '{"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": ["The sky is"]}], "parameters": {"max_tokens": 8, "temperature": 0}}'; echo
curl -s "$URL/v2/models/smollm2/generate" -H 'Content-Type: application/json' \
  -d '{"text_input": "The sky is", "parameters": {"max_tokens": 8}}'; echo
curl -s "$URL/metrics" | grep '^engine:num_requests'
