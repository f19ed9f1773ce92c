# The engine server image: `docker build -t engine:cpu .` (CPU, torch's CPU wheel), or
# `docker build --build-arg VARIANT=cuda -t engine:cuda .` (torch's default CUDA wheel, for GPUs).
# Runs `engine serve`; KServe's ServingRuntime (deploy/kserve/) passes the model path and port.
FROM python:3.11-slim

ARG VARIANT=cpu
ARG TORCH_VERSION=2.13.0

# inductor compiles the CPU decode step with the system C++ compiler (the base image's Debian release
# pins its version)
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 engine
WORKDIR /app
COPY pyproject.toml README.md ./
COPY engine ./engine
COPY kernels ./kernels
COPY api ./api
COPY scheduler ./scheduler

RUN if [ "$VARIANT" = "cpu" ]; then \
        pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu; \
    else \
        pip install --no-cache-dir "torch==${TORCH_VERSION}"; \
    fi \
    && pip install --no-cache-dir .

USER 1000
ENV HOME=/home/engine PYTHONUNBUFFERED=1
# Fill the cache folder (~/.cache/engine) for the default model and serve's default flags: the default
# model's file, its converted weights, and the compiled decode graphs with the C++ attention they call.
# A container on the same kind of CPU serves at full speed from its first request; on another CPU the
# graphs compile in the background while it serves (deploy/kserve/README.md: warm caches for your model).
RUN engine warmup
EXPOSE 8080
ENTRYPOINT ["engine"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
