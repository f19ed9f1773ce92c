"""OIP's gRPC messages read into the REST protocol's request form, and results written back as messages.

A ``ModelInferRequest`` becomes the JSON form that api/oip/protocol.py parses for REST (its raw input
contents the binary data of inputs with ``binary_data_size``), so both transports take the same
inputs and parameters and refuse the same requests with the same messages.
"""

from __future__ import annotations

from typing import Any

from ..errors import APIError
from ..oip.protocol import TEXT_OUTPUT, InferRequest
from ..oip.tensors import encode_bytes
from . import grpc_predict_v2_pb2 as pb

# Which InferTensorContents field holds each datatype's values.
CONTENTS_FIELD = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
                  "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
                  "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
                  "FP64": "fp64_contents", "BYTES": "bytes_contents"}


def parameter_value(parameter: pb.InferParameter) -> Any:
    kind = parameter.WhichOneof("parameter_choice")
    return None if kind is None else getattr(parameter, kind)


def request_form(message: pb.ModelInferRequest) -> tuple[dict, bytes]:
    """The JSON form of the request and the binary data of its raw input contents."""
    raw = list(message.raw_input_contents)
    if raw and len(raw) != len(message.inputs):
        raise APIError(f"raw_input_contents holds {len(raw)} entries for {len(message.inputs)} inputs")
    inputs = []
    for index, tensor in enumerate(message.inputs):
        item: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape),
                                "parameters": {k: parameter_value(v) for k, v in tensor.parameters.items()}}
        if raw:
            item["parameters"]["binary_data_size"] = len(raw[index])
        else:
            item["data"] = _contents(tensor)
        inputs.append(item)
    outputs = [{"name": o.name, "parameters": {k: parameter_value(v) for k, v in o.parameters.items()}}
               for o in message.outputs]
    form = {"id": message.id or None, "inputs": inputs, "outputs": outputs,
            "parameters": {k: parameter_value(v) for k, v in message.parameters.items()}}
    return form, b"".join(raw)


def infer_response(model_name: str, model_version: str, request: InferRequest, texts: list[str],
                   parameters: dict[str, Any]) -> pb.ModelInferResponse:
    """``texts`` as the BYTES output ``text_output`` in raw output contents, as Triton answers."""
    response = pb.ModelInferResponse(model_name=model_name, model_version=model_version, id=request.request_id or "")
    for name, value in parameters.items():
        response.parameters[name].CopyFrom(_parameter(value))
    response.outputs.add(name=TEXT_OUTPUT, datatype="BYTES", shape=request.shape)
    response.raw_output_contents.append(encode_bytes(texts))
    return response


def _parameter(value: Any) -> pb.InferParameter:
    if isinstance(value, bool):
        return pb.InferParameter(bool_param=value)
    if isinstance(value, int):
        return pb.InferParameter(int64_param=value)
    return pb.InferParameter(string_param=str(value))


def _contents(tensor: pb.ModelInferRequest.InferInputTensor) -> list:
    field = CONTENTS_FIELD.get(tensor.datatype)
    if field is None:  # the REST parser names the datatype it refuses
        return []
    values = list(getattr(tensor.contents, field))
    if field != "bytes_contents":
        return values
    try:
        return [value.decode("utf-8") for value in values]
    except UnicodeDecodeError as err:
        raise APIError(f"input '{tensor.name}' holds bytes that are not UTF-8 text: {err}") from None
