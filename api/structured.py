"""The output constraint a request asks for, in any of the spellings clients send, as one
``StructuredOutputsParams``: OpenAI's ``response_format`` (``json_object``, ``json_schema``), vLLM's
``structured_outputs`` object and its older ``guided_json`` / ``guided_regex`` / ``guided_choice`` /
``guided_grammar``. OIP clients send the same names as parameters, objects possibly as JSON text.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from engine import InvalidSamplingParam, StructuredOutputsParams

from .errors import APIError

GUIDED_FIELDS = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice", "guided_grammar": "grammar"}
FIELDS = ("response_format", "structured_outputs", *GUIDED_FIELDS)


def structured_outputs_from(body: Mapping[str, Any]) -> tuple[StructuredOutputsParams, str] | None:
    """The constraint and the field that asked for it; None when none did. ``APIError`` naming the
    field for a malformed one or for two at once."""
    given = [name for name in FIELDS if body.get(name) is not None]
    if given == ["response_format"] and _decoded(body, "response_format").get("type", "text") == "text":
        return None
    if len(given) > 1:
        raise APIError(f"give at most one output constraint, got {given}", param=given[1])
    if not given:
        return None
    name = given[0]
    try:
        if name == "response_format":
            return _response_format(_decoded(body, name)), name
        if name == "structured_outputs":
            spec = _decoded(body, name)
            unknown = sorted(set(spec) - {"json", "json_object", "regex", "choice", "grammar"})
            if unknown:
                raise APIError(f"structured_outputs has unknown keys {unknown}", param=name)
            return StructuredOutputsParams(**spec), name
        value = body[name]
        if name in ("guided_json", "guided_choice") and isinstance(value, str):
            value = _json(value, name)
        return StructuredOutputsParams(**{GUIDED_FIELDS[name]: value}), name
    except InvalidSamplingParam as err:
        raise named_error(err, name) from None


def named_error(err: InvalidSamplingParam, field: str) -> APIError:
    """The engine's error about a constraint, as a 400 naming the field the client used for it."""
    return APIError(str(err).replace("structured_outputs", field, 1), param=field)


def _response_format(spec: dict) -> StructuredOutputsParams:
    kind = spec.get("type")
    if kind == "json_object":
        return StructuredOutputsParams(json_object=True)
    if kind != "json_schema":
        raise APIError(f"response_format.type must be 'text', 'json_object' or 'json_schema', got {kind!r}",
                       param="response_format.type")
    described = spec.get("json_schema")
    if not isinstance(described, dict):
        raise APIError("response_format.json_schema must be an object", param="response_format.json_schema")
    return json_schema_params(described.get("schema"), described.get("strict"), "response_format.json_schema")


def json_schema_params(schema: Any, strict: Any, field: str) -> StructuredOutputsParams:
    """OpenAI's json_schema output format (``field`` holds the schema and strict): without strict,
    keywords we cannot enforce are ignored, as OpenAI does."""
    if not isinstance(schema, dict):
        raise APIError(f"{field}.schema must be a JSON schema (an object)", param=f"{field}.schema")
    if not strict:
        schema = {**schema, "x-guidance": {**schema.get("x-guidance", {}), "lenient": True}}
    return StructuredOutputsParams(json=schema)


def _decoded(body: Mapping[str, Any], name: str) -> dict:
    value = body[name]
    if isinstance(value, str):
        value = _json(value, name)
    if not isinstance(value, dict):
        raise APIError(f"{name} must be an object", param=name)
    return value


def _json(text: str, name: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise APIError(f"{name} is not valid JSON", param=name) from None
