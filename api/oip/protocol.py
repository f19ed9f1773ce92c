"""Open Inference Protocol v2 bodies: infer and generate requests, their SamplingParams, the infer answer.

Every rejection is an ``APIError`` (400) whose message names the tensor or field, what was
expected and what was got, so a client can fix its request without reading our code.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Mapping

from engine import SamplingParams

from ..errors import APIError
from ..options import ServerOptions
from ..structured import FIELDS as CONSTRAINT_FIELDS
from ..structured import structured_outputs_from
from ..text import check_text
from .tensors import INT_TYPES, NUMBER_TYPES, BinaryReader, Tensor, describe, encode_bytes, parse_tensor, split_body

logger = logging.getLogger(__name__)

TEXT_INPUT, TEXT_OUTPUT = "text_input", "text_output"

# The inputs we take: name -> (datatype and shape in the metadata, datatypes accepted).
# The optional scalar inputs override the request parameters of the same names.
INPUTS: dict[str, tuple[str, list[int], frozenset[str]]] = {
    TEXT_INPUT: ("BYTES", [-1], frozenset({"BYTES"})),
    "max_tokens": ("INT32", [1], INT_TYPES),
    "temperature": ("FP32", [1], NUMBER_TYPES),
    "top_p": ("FP32", [1], NUMBER_TYPES),
    "seed": ("INT64", [1], INT_TYPES),
    "stop": ("BYTES", [-1], frozenset({"BYTES"})),
}
ACCEPTED_DATATYPES = {name: accepted for name, (_, _, accepted) in INPUTS.items()}

# Request parameters read as sampling fields, with the Python type each is coerced to.
SAMPLING_FIELDS: dict[str, type] = {
    "max_tokens": int, "temperature": float, "top_p": float, "top_k": int, "min_p": float, "seed": int,
    "presence_penalty": float, "frequency_penalty": float, "repetition_penalty": float,
    "ignore_eos": bool, "min_tokens": int, "stop": list,
}
# Triton's own request parameters: never sampling fields, whatever their names say.
RESERVED_PARAMETERS = frozenset({"sequence_id", "sequence_start", "sequence_end", "priority", "timeout",
                                 "headers", "binary_data_output"})
RESERVED_PREFIX = "triton_"
OTHER_PARAMETERS = frozenset({"exclude_input_in_output", "stream", *CONSTRAINT_FIELDS})
INT64_RANGE = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class Generation:
    """What to generate for each prompt; ``include_prompt`` is ``exclude_input_in_output: false``."""

    params: SamplingParams
    include_prompt: bool


@dataclass(frozen=True)
class InferRequest:
    prompts: list[str]
    shape: list[int]  # of text_input, echoed by text_output
    generation: Generation
    request_id: str | None
    outputs: dict[str, bool]  # output name -> send it binary


@dataclass(frozen=True)
class GenerateRequest:
    prompt: str
    generation: Generation


def check_served(options: ServerOptions, model: str, version: str | None) -> None:
    """404 unless ``model`` is the served model and ``version``, if any, its version."""
    if model != options.served_model_name:
        raise APIError(f"model '{model}' is not served; this server serves '{options.served_model_name}'", status=404)
    if version and version != options.model_version:
        raise APIError(f"model '{model}' has no version '{version}'; the only version is '{options.model_version}'",
                       status=404)


def model_metadata(name: str, version: str) -> dict:
    return {
        "name": name, "versions": [version], "platform": "engine_llm",
        "inputs": [{"name": n, "datatype": dt, "shape": shape} for n, (dt, shape, _) in INPUTS.items()],
        "outputs": [{"name": TEXT_OUTPUT, "datatype": "BYTES", "shape": [-1]}],
    }


# ---- responses ----

def finish_reason_parameter(finish_reasons: list[str]) -> str:
    """One prompt's finish reason, or a JSON array of several (as ``stop`` is sent), for REST and gRPC alike."""
    return finish_reasons[0] if len(finish_reasons) == 1 else json.dumps(finish_reasons)


def encode_infer_response(model_name: str, model_version: str, request: InferRequest, texts: list[str], finish_reasons: list[str],
                          completion_tokens: int) -> tuple[bytes, int | None]:
    """The infer answer, and the JSON header's length when binary output data follows it.

    ``finish_reason`` is one string for one prompt, a JSON array of them (as ``stop``) for several.
    """
    response: dict = {"model_name": model_name, "model_version": model_version}
    if request.request_id is not None:
        response["id"] = request.request_id
    response["parameters"] = {
        "finish_reason": finish_reason_parameter(finish_reasons),
        "completion_tokens": completion_tokens,
    }
    outputs, binary = [], []
    for name, as_binary in request.outputs.items():
        tensor: dict = {"name": name, "datatype": "BYTES", "shape": request.shape}
        if as_binary:
            binary.append(encode_bytes(texts))
            tensor["parameters"] = {"binary_data_size": len(binary[-1])}
        else:
            tensor["data"] = texts
        outputs.append(tensor)
    response["outputs"] = outputs
    header = json.dumps(response).encode()
    return header + b"".join(binary), (len(header) if binary else None)


# ---- requests ----

def parse_infer(body: bytes, header_length: str | None) -> InferRequest:
    header, binary = split_body(body, header_length)
    return infer_request_from(_load_object(header), binary, has_binary=header_length is not None)


def infer_request_from(request: dict, binary: bytes, has_binary: bool) -> InferRequest:
    """An infer request from its JSON form (``binary``: the data of inputs with ``binary_data_size``, in
    order), as REST sends it and as gRPC's messages are read into (api/oip_grpc/messages.py)."""
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise APIError(f"id must be a string, got {describe(request_id)}")
    parameters = _scalar_parameters(request.get("parameters"))
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise APIError(f"inputs must be a non-empty list of tensors, got {describe(inputs)}")
    reader = BinaryReader(binary, has_header=has_binary)
    tensors: dict[str, Tensor] = {}
    for item in inputs:
        tensor = parse_tensor(item, reader, ACCEPTED_DATATYPES)
        if tensor.name in tensors:
            raise APIError(f"input '{tensor.name}' is given twice")
        tensors[tensor.name] = tensor
    reader.check_consumed()
    text = tensors.pop(TEXT_INPUT, None)
    if text is None:
        raise APIError(f"missing input '{TEXT_INPUT}' (BYTES, shape [-1]); got inputs {sorted(tensors)}")
    if not text.values:
        raise APIError(f"input '{TEXT_INPUT}' must hold at least one prompt, got shape {text.shape}")
    overrides = {name: _scalar_input(tensor) for name, tensor in tensors.items()}
    binary_default = parameters.get("binary_data_output") is True
    return InferRequest(text.values, text.shape, _generation({**parameters, **overrides}), request_id,
                        _requested_outputs(request.get("outputs"), binary_default))


def parse_generate(body: bytes) -> GenerateRequest:
    """Triton's generate body: ``text_input``, ``parameters``, and other top-level fields read as parameters."""
    request = _load_object(body)
    prompt = request.get(TEXT_INPUT)
    if isinstance(prompt, list) and len(prompt) == 1:  # a one-element tensor in JSON form
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise APIError(f"{TEXT_INPUT} must be a string (the prompt), got {describe(prompt)}")
    parameters = request.get("parameters")
    parameters = {} if parameters is None else parameters
    if not isinstance(parameters, dict):
        raise APIError(f"parameters must be an object, got {describe(parameters)}")
    top_level = {k: v for k, v in request.items() if k not in (TEXT_INPUT, "parameters")}
    return GenerateRequest(prompt, _generation({**parameters, **top_level}))


def _load_object(raw: bytes) -> dict:
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise APIError(f"invalid JSON body: {err}") from None
    if not isinstance(value, dict):
        raise APIError(f"the body must be a JSON object, got {describe(value)}")
    check_text(value)
    return value


def _scalar_parameters(value: object) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise APIError(f"parameters must be an object, got {describe(value)}")
    for name, item in value.items():
        if not isinstance(item, (str, int, float, bool)):
            raise APIError(f"parameter '{name}' must be a string, number or bool, got {describe(item)}")
    return value


def _requested_outputs(value: object, binary_default: bool) -> dict[str, bool]:
    if not value:
        return {TEXT_OUTPUT: binary_default}
    if not isinstance(value, list):
        raise APIError(f"outputs must be a list of {{\"name\": ...}} objects, got {describe(value)}")
    outputs = {}
    for item in value:
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str):
            raise APIError(f"each requested output needs a string 'name', got {describe(item)}")
        if name != TEXT_OUTPUT:
            raise APIError(f"requested output '{name}' is not produced; this model produces only '{TEXT_OUTPUT}'")
        binary = (item.get("parameters") or {}).get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise APIError(f"output '{name}': parameters.binary_data must be a bool, got {describe(binary)}")
        outputs[name] = binary
    return outputs


# ---- parameters -> SamplingParams ----

def _generation(values: Mapping[str, object]) -> Generation:
    fields, unknown = {}, []
    for name, value in values.items():
        if name in RESERVED_PARAMETERS or name.startswith(RESERVED_PREFIX) or name in OTHER_PARAMETERS:
            continue
        if name in SAMPLING_FIELDS:
            fields[name] = _coerce(name, SAMPLING_FIELDS[name], value)
        else:
            unknown.append(name)
    if unknown:
        logger.debug("ignoring unknown parameters %s", sorted(unknown))
    exclude = _coerce("exclude_input_in_output", bool, values.get("exclude_input_in_output", True))
    constraint = structured_outputs_from(values)  # compiled (and a bad one answered) when the request is added
    try:
        params = SamplingParams(**fields, structured_outputs=constraint and constraint[0])
    except ValueError as err:  # out of range: the message names the field and its range
        raise APIError(str(err)) from None
    return Generation(params, include_prompt=not exclude)


def _coerce(name: str, kind: type, value: object):
    """A parameter as ``kind``; strings such as ``"8"`` or ``"true"`` are parsed, as clients often send them."""
    if kind is list:  # stop: a string, a JSON array of strings encoded as a string, or a list of strings
        if isinstance(value, str) and value.lstrip().startswith("["):
            try:
                value = json.loads(value)
            except (json.JSONDecodeError, RecursionError):
                raise APIError(f"parameter 'stop' looks like a JSON array but is not valid JSON: {value!r}") from None
            check_text({"stop": value})  # its escapes are decoded only now
        if isinstance(value, str) or (isinstance(value, list) and all(isinstance(s, str) for s in value)):
            return value
        raise APIError(f"parameter 'stop' must be a string or a JSON array of strings, got {describe(value)}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise APIError(f"parameter '{name}' must be a bool, got {describe(value)}")
    if isinstance(value, str):
        try:
            value = kind(value.strip())
        except ValueError:
            raise APIError(f"parameter '{name}' must be {'an integer' if kind is int else 'a number'}, "
                           f"got {value!r}") from None
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise APIError(f"parameter '{name}' must be {'an integer' if kind is int else 'a number'}, got {describe(value)}")
    if name == "seed" and not INT64_RANGE[0] <= value <= INT64_RANGE[1]:
        raise APIError(f"parameter 'seed' must fit in INT64, got {value}")
    return value


def _scalar_input(tensor: Tensor) -> object:
    """An optional input's value: one element, or the list of stop strings."""
    if tensor.name == "stop":
        return tensor.values
    if len(tensor.values) != 1:
        raise APIError(f"input '{tensor.name}' must hold exactly one element, got shape {tensor.shape}")
    return tensor.values[0]
