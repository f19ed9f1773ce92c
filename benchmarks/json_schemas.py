"""A generator of JSON schemas that exercise a structured-output engine: nested objects, arrays with
min/max items, enums, string patterns, bounded integers, optional fields and ``$ref`` recursion.

Each schema closes its objects (``additionalProperties: false``) and bounds its strings and arrays,
so a valid instance fits in a few hundred tokens whatever a sampled model prefers. There are no
floats: JSON numbers have no length bound, and at temperature 0.8 a 135M model can write digits until
max_tokens (any engine's grammar allows that).
"""

from __future__ import annotations

import random

WORDS = ["name", "id", "city", "tags", "score", "owner", "items", "price", "kind", "note", "level", "parent",
         "title", "count", "color", "size", "email", "status", "child", "rank"]


def make_schema(seed: int) -> dict:
    rng = random.Random(seed)
    schema = _object(rng, depth=0)
    if seed % 5 == 0:  # recursion through $ref: a tree of nodes
        schema = {
            "$defs": {"node": {"type": "object", "additionalProperties": False, "required": ["label"],
                               "properties": {"label": _string(rng),
                                              "children": {"type": "array", "maxItems": 1,
                                                           "items": {"$ref": "#/$defs/node"}}}}},
            "type": "object", "additionalProperties": False, "required": ["root"],
            "properties": {"root": {"$ref": "#/$defs/node"}, "meta": schema},
        }
    return schema


def make_schemas(count: int, first_seed: int = 0) -> list[dict]:
    return [make_schema(seed) for seed in range(first_seed, first_seed + count)]


def _object(rng: random.Random, depth: int) -> dict:
    names = rng.sample(WORDS, rng.randint(1, 4))
    properties = {name: _value(rng, depth + 1) for name in names}
    required = [name for name in names if rng.random() < 0.7]  # the others are optional
    return {"type": "object", "additionalProperties": False, "properties": properties, "required": required}


def _value(rng: random.Random, depth: int) -> dict:
    kinds = ["string", "pattern", "integer", "enum", "boolean"]
    if depth < 3:
        kinds += ["object", "array"]
    kind = rng.choice(kinds)
    if kind == "string":
        return _string(rng)
    if kind == "pattern":
        return {"type": "string", "pattern": rng.choice([r"^[A-Z]{2}-\d{3}$", r"^[a-z]{1,8}@[a-z]{2,8}\.com$", r"^\d{4}-\d{2}$"])}
    if kind == "integer":
        low = rng.randint(-50, 50)
        return {"type": "integer", "minimum": low, "maximum": low + rng.randint(0, 100)}
    if kind == "enum":
        return {"enum": rng.sample(["red", "green", "blue", "small", "large", 1, 2, None], rng.randint(2, 4))}
    if kind == "boolean":
        return {"type": "boolean"}
    if kind == "object":
        return _object(rng, depth)
    low = rng.randint(0, 2)
    return {"type": "array", "minItems": low, "maxItems": low + rng.randint(0, 3), "items": _value(rng, depth + 1)}


def _string(rng: random.Random) -> dict:
    return {"type": "string", "minLength": rng.randint(0, 2), "maxLength": rng.randint(3, 16)}
