"""The ``engine`` command.

``engine generate PROMPT`` streams text from a model (the default one if none given);
``engine serve [MODEL]`` serves it over HTTP (OpenAI API and Open Inference Protocol);
``engine warmup [MODEL]`` fills the cache folder with what a start would compile, so the next
start (an image, a replica with the folder mounted) runs at full speed from its first step.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from typing import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="engine", description="An LLM serving engine.")
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="stream a completion of PROMPT to stdout")
    gen.add_argument("prompt", help="the prompt text")
    gen.add_argument("--model", default=None, help="a model folder or .gguf file (default: SmolLM2-135M-Instruct)")
    gen.add_argument("--chat", action="store_true", help="send the prompt as a user message through the chat template")
    gen.add_argument("--max-tokens", type=int, default=128)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=-1)
    gen.add_argument("--min-p", type=float, default=0.0)
    gen.add_argument("--repetition-penalty", type=float, default=1.0)
    gen.add_argument("--stop", action="append", default=None, help="a stop string (repeat for several)")
    gen.add_argument("--ignore-eos", action="store_true", help="go on past the end-of-sequence token (benchmarks)")
    _add_engine_flags(gen, max_num_seqs=1)  # one sequence: only the batch-1 decode graph to compile

    quant = commands.add_parser("quantize", help="write an AWQ or GPTQ checkpoint from a full-precision model folder")
    quant.add_argument("model", help="a Hugging Face model folder (safetensors)")
    quant.add_argument("out", help="the folder to write")
    quant.add_argument("--method", choices=("gptq", "awq", "rtn"), default="gptq")
    quant.add_argument("--bits", type=int, default=4, choices=(4, 8))
    quant.add_argument("--group-size", type=int, default=128)
    quant.add_argument("--sym", action="store_true", help="GPTQ: symmetric (zero point fixed at the middle code)")
    quant.add_argument("--desc-act", action=argparse.BooleanOptionalAction, default=True,
                       help="GPTQ: act-order, columns by decreasing Hessian diagonal (default on; --no-desc-act for plain order)")
    quant.add_argument("--calibration", default=None, help="a text file (default: the calibration text shipped with engine)")
    quant.add_argument("--calibration-tokens", type=int, default=2048)

    serve = commands.add_parser("serve", help="serve the OpenAI API and the Open Inference Protocol over HTTP")
    serve.add_argument("model", nargs="?", default=None, help="a model folder or .gguf file (default: SmolLM2-135M-Instruct)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--grpc-port", type=int, default=None,
                       help="also serve the Open Inference Protocol over gRPC on this port (tritonclient.grpc)")
    serve.add_argument("--served-model-name", default=None, help="the name clients use (default: the model's)")
    serve.add_argument("--api-key", default=None,
                       help="require the key on /v1 and /v2 ('Authorization: Bearer KEY' or 'x-api-key: KEY')")
    serve.add_argument("--allowed-origins", nargs="*", default=[], help="CORS origins ('*' for any)")
    serve.add_argument("--allow-credentials", action="store_true", help="CORS: allow credentials")
    serve.add_argument("--tool-call-parser", default=None, choices=("hermes", "llama3_json"),
                       help="how the model writes tool calls (default: read from its chat template)")
    serve.add_argument("--reasoning-parser", default=None, choices=("qwen3", "deepseek_r1"),
                       help="return a reasoning model's <think> ... </think> as reasoning_content")
    serve.add_argument("--no-enable-prefix-caching", dest="enable_prefix_caching", action="store_false")
    serve.add_argument("--model-version", default="1",
                       help="the served version: OIP's model version, OpenAI responses' system_fingerprint")
    serve.add_argument("--no-ui", dest="ui", action="store_false", help="no chat page at /")
    serve.add_argument("--ray", action="store_true",
                       help="serve as Ray Serve replicas (pip install 'engine[ray]'); RAY_ADDRESS picks a cluster")
    serve.add_argument("--num-replicas", type=int, default=1, help="with --ray: how many replicas")
    serve.add_argument("--seed", type=int, default=0)
    serve.add_argument("--graceful-shutdown-timeout", type=float, default=10.0,
                       help="seconds in-flight requests get to finish on shutdown before they are aborted")
    serve.add_argument("--log-level", default="info")
    _add_engine_flags(serve)

    warm = commands.add_parser("warmup", help="compile what serving MODEL with these flags needs into the cache "
                                              "folder ($ENGINE_CACHE_DIR) and exit")
    warm.add_argument("model", nargs="?", default=None, help="a model folder or .gguf file (default: SmolLM2-135M-Instruct)")
    _add_engine_flags(warm)
    return parser


def _add_engine_flags(parser: argparse.ArgumentParser, max_num_seqs: int = 256) -> None:
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--tensor-parallel-size", "-tp", type=int, default=1,
                        help="ranks that split the model (one process each; gloo on CPUs, NCCL on GPUs)")
    parser.add_argument("--chat-template", default=None,
                        help="a Jinja chat template, or a file holding one, instead of the model's")
    parser.add_argument("--max-num-seqs", type=int, default=max_num_seqs)
    parser.add_argument("--max-num-batched-tokens", type=int, default=None)
    parser.add_argument("--kv-cache-memory-gb", type=float, default=None)
    parser.add_argument("--num-kv-blocks", type=int, default=None,
                        help="exact KV pool size instead of --kv-cache-memory-gb (a block: --block-size tokens of one "
                             "group of layers; every layer unless some attend through a sliding window)")
    parser.add_argument("--quantization", default=None, choices=("awq", "gptq", "none"),
                        help="default: as the checkpoint says; 'none': compute with dequantized weights")
    parser.add_argument("--enforce-eager", action="store_true",
                        help="run every step eagerly: no compiled CPU step, no CUDA graphs")
    parser.add_argument("--batch-invariant", action="store_true",
                        help="the same request gives the same tokens whatever else runs beside it, however its prompt "
                             "is chunked or cached (CPU; costs speed at one stream: see the README)")
    parser.add_argument("--kernels", default=None, choices=("auto", "triton", "torch"),
                        help="auto: Triton on CUDA, torch elsewhere (default: $ENGINE_KERNELS, else auto)")


def _engine_kwargs(args: argparse.Namespace) -> dict:
    names = ("dtype", "device", "max_model_len", "block_size", "max_num_seqs", "max_num_batched_tokens",
             "kv_cache_memory_gb", "num_kv_blocks", "quantization", "enforce_eager", "kernels", "chat_template",
             "tensor_parallel_size", "batch_invariant")
    return {name: getattr(args, name) for name in names}


def run_generate(args: argparse.Namespace) -> int:
    from engine import EngineConfig, LLMEngine, RequestOutputKind, SamplingParams

    engine = LLMEngine(EngineConfig.from_kwargs(args.model, **_engine_kwargs(args)))
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed,
                            top_p=args.top_p, top_k=args.top_k, min_p=args.min_p,
                            repetition_penalty=args.repetition_penalty, stop=args.stop,
                            ignore_eos=args.ignore_eos, output_kind=RequestOutputKind.DELTA)
    if args.chat:
        text, token_ids = engine.input_processor.render_chat([{"role": "user", "content": args.prompt}])
        engine.add_request("cli", text, params, prompt_token_ids=token_ids)
    else:
        engine.add_request("cli", args.prompt, params)
    started, output = time.monotonic(), None
    while engine.has_unfinished_requests():
        for output in engine.step():
            sys.stdout.write(output.outputs[0].text)  # the new text only
            sys.stdout.flush()
    sys.stdout.write("\n")
    if output is not None:
        generated, elapsed = output.metrics.num_generated_tokens, time.monotonic() - started
        logging.getLogger("engine").info("%d tokens in %.2f s (%.1f tokens/s), finish_reason=%s",
                                         generated, elapsed, generated / elapsed, output.outputs[0].finish_reason)
    return 0


def run_warmup(args: argparse.Namespace) -> int:
    from engine import EngineConfig, LLMEngine

    log = logging.getLogger("engine")
    started = time.monotonic()
    engine = LLMEngine(EngineConfig.from_kwargs(args.model, **_engine_kwargs(args)))
    compiled = getattr(engine.runner, "compiled_decode", None)
    if compiled is None:
        log.info("nothing to compile: this device and these flags run no compiled CPU decode step")
        return 0
    if not compiled.wait():
        print(f"engine: error: compiling the decode step failed: {compiled.error}", file=sys.stderr)
        return 1
    log.info("warm: %d decode graphs in the cache folder after %.1f s", compiled.graphs_total,
             time.monotonic() - started)
    return 0


def run_quantize(args: argparse.Namespace) -> int:
    from pathlib import Path

    from engine.model.quant.quantize import quantize

    text = Path(args.calibration).read_text() if args.calibration else None
    quantize(args.model, args.out, method=args.method, bits=args.bits, group_size=args.group_size, sym=args.sym,
             desc_act=args.desc_act, calibration_text=text, num_calibration_tokens=args.calibration_tokens)
    return 0


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn
    from sse_starlette.sse import AppStatus

    from engine import AsyncLLMEngine, EngineConfig

    from .app import build_app
    from .options import ServerOptions

    engine_kwargs = {**_engine_kwargs(args), "seed": args.seed, "enable_prefix_caching": args.enable_prefix_caching}
    option_kwargs = dict(api_key=args.api_key, allowed_origins=args.allowed_origins,
                         tool_call_parser=args.tool_call_parser, reasoning_parser=args.reasoning_parser,
                         allow_credentials=args.allow_credentials, ui=args.ui,
                         grpc_address=None if args.grpc_port is None else f"{args.host}:{args.grpc_port}")
    if args.ray:
        return run_ray(args, engine_kwargs, option_kwargs)
    engine = AsyncLLMEngine.from_config(EngineConfig.from_kwargs(args.model, **engine_kwargs))
    options = ServerOptions(served_model_name=_served_name(args, engine.model_name), model_version=args.model_version,
                            **option_kwargs)
    # On SIGTERM let streams run to their end; uvicorn cancels what is left after the timeout,
    # and cancelled streams abort their requests.
    AppStatus.disable_automatic_graceful_drain()
    app = build_app(engine, options)

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            """The app drains from the signal on: gRPC refuses new calls while HTTP's in-flight finish."""
            app.state.draining = True
            super().handle_exit(sig, frame)

    DrainingServer(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                                  timeout_graceful_shutdown=args.graceful_shutdown_timeout)).run()
    return 0


def run_ray(args: argparse.Namespace, engine_kwargs: dict, option_kwargs: dict) -> int:
    """The same server as Ray Serve replicas behind Ray's HTTP proxy on --host/--port (a local Ray
    instance, or the cluster that RAY_ADDRESS names)."""
    from .local_ray import init_ray

    logging.getLogger("engine").info("Ray at %s", init_ray())
    import ray  # after init_ray, which sets Ray's loopback switch before the first import
    from ray import serve

    from engine.model.loader import resolve_model

    from .ray_serve import ServedModel, engine_app

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # so that Ray's processes are stopped below
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        served = ServedModel({"model": args.model, **engine_kwargs}, _served_name(args, resolve_model(args.model).name),
                             args.model_version, option_kwargs)
        serve.run(engine_app(served, args.num_replicas), name="engine", route_prefix="/", blocking=True)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


def _served_name(args: argparse.Namespace, model_name: str) -> str:
    name = args.served_model_name or model_name
    if "/" in name:
        raise ValueError(f"served model name {name!r} must not contain '/'; pass --served-model-name")
    return name


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    args = build_parser().parse_args(argv)
    try:
        commands = {"generate": run_generate, "serve": run_serve, "warmup": run_warmup, "quantize": run_quantize}
        return commands[args.command](args)
    except ValueError as err:
        print(f"engine: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
