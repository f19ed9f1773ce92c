"""The one description of a quantized checkpoint's format, read from and written to ``quantization_config``.

Settings come from ``config.json``'s ``quantization_config`` or, in older checkpoints,
``quantize_config.json`` / ``quant_config.json``. A variant we cannot run fails at load with
an error naming the field and its value, never with wrong numbers later. The quantizer writes
the same class back, so what we write is by construction what we read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

METHODS = ("awq", "gptq")


@dataclass(frozen=True)
class QuantFormat:
    method: str  # "awq" or "gptq"
    bits: int = 4
    group_size: int = 128  # -1: one group over all input rows
    sym: bool = False  # GPTQ only; AWQ is always asymmetric
    desc_act: bool = False  # GPTQ only: groups cut in act-order, recorded in g_idx
    v1_zeros: bool = False  # GPTQ v1 (checkpoint_format "gptq"): stored zeros are the true zeros minus one
    modules_to_not_convert: tuple[str, ...] = ()

    @property
    def pack_factor(self) -> int:
        return 32 // self.bits

    def is_quantized(self, prefix: str) -> bool:
        return not any(fragment in prefix for fragment in self.modules_to_not_convert)

    def to_quantization_config(self) -> dict:
        """The ``quantization_config`` the producers (AutoAWQ, GPTQModel) write for this format."""
        skip = list(self.modules_to_not_convert) or None
        if self.method == "awq":
            return {"quant_method": "awq", "bits": 4, "group_size": self.group_size, "zero_point": True,
                    "version": "gemm", "modules_to_not_convert": skip}
        return {"quant_method": "gptq", "bits": self.bits, "group_size": self.group_size, "sym": self.sym,
                "desc_act": self.desc_act, "checkpoint_format": "gptq" if self.v1_zeros else "gptq_v2",
                "pack_dtype": "int32", "lm_head": False, "modules_to_not_convert": skip}

    @classmethod
    def from_quantization_config(cls, settings: dict, forced: str | None = None) -> "QuantFormat":
        """Validate ``settings`` field by field; ``forced`` (the user's ``quantization``) must agree."""
        method = str(settings.get("quant_method", forced or "")).lower()
        if method not in METHODS:
            raise _fail("quant_method", method, f"one of {METHODS}")
        if forced is not None and forced != method:
            raise ValueError(f"quantization={forced!r} was asked for, but the checkpoint is {method!r}")
        bits = int(settings.get("bits", settings.get("w_bit", 4)))
        group_size = int(settings.get("group_size", settings.get("q_group_size", 128)))
        if group_size != -1 and group_size < 1:
            raise _fail("group_size", group_size, "-1 or a positive group size")
        skip = tuple(settings.get("modules_to_not_convert") or ())
        return (_awq if method == "awq" else _gptq)(settings, bits, group_size, skip)


def _fail(field: str, value, expected: str) -> ValueError:
    return ValueError(f"quantization_config.{field}={value!r} is not supported: {expected}")


def read_quant_settings(hf_config, folder: Path | None) -> dict | None:
    settings = getattr(hf_config, "quantization_config", None)
    if settings is None and folder is not None:
        for name in ("quantize_config.json", "quant_config.json"):
            if (folder / name).is_file():
                settings = json.loads((folder / name).read_text())
                break
    if settings is not None and not isinstance(settings, dict):
        settings = settings.to_dict()
    return settings


def quant_format_from(hf_config, folder: Path | None, forced: str | None) -> QuantFormat | None:
    """The checkpoint's format (None for a plain model). ``forced`` "none" keeps whatever the file
    holds but computes with dequantized weights, so it needs no agreement."""
    settings = read_quant_settings(hf_config, folder)
    forced = None if forced == "none" else forced
    if settings is None:
        if forced is not None:
            raise ValueError(f"quantization={forced!r} was asked for, but the checkpoint has no quantization_config")
        return None
    return QuantFormat.from_quantization_config(settings, forced)


def _awq(settings: dict, bits: int, group_size: int, skip: tuple[str, ...]) -> QuantFormat:
    if bits != 4:
        raise _fail("bits", bits, "AWQ is 4-bit")
    version = str(settings.get("version", settings.get("format", "gemm"))).lower()
    if version != "gemm":
        raise _fail("version", version, "only the 'gemm' layout (gemv, gemv_fast, marlin and ipex are pre-shuffled)")
    if not settings.get("zero_point", True):
        raise _fail("zero_point", False, "AWQ gemm needs zero points")
    return QuantFormat("awq", 4, group_size, modules_to_not_convert=skip)


def _gptq(settings: dict, bits: int, group_size: int, skip: tuple[str, ...]) -> QuantFormat:
    if bits not in (4, 8):
        raise _fail("bits", bits, "GPTQ with 4 or 8 bits")
    checkpoint_format = str(settings.get("checkpoint_format", settings.get("format", "gptq"))).lower()
    if checkpoint_format not in ("gptq", "gptq_v2") or settings.get("is_marlin_format"):
        raise _fail("checkpoint_format", checkpoint_format, "'gptq' (v1) or 'gptq_v2' (Marlin layouts are repacked)")
    pack_dtype = str(settings.get("pack_dtype", "int32")).removeprefix("torch.")
    if pack_dtype != "int32":
        raise _fail("pack_dtype", pack_dtype, "int32 words")
    if settings.get("dynamic"):
        raise _fail("dynamic", settings["dynamic"], "no per-module overrides")
    if settings.get("lm_head"):
        raise _fail("lm_head", True, "a plain lm_head")
    return QuantFormat("gptq", bits, group_size, sym=bool(settings.get("sym", True)),
                       desc_act=bool(settings.get("desc_act", False)), v1_zeros=checkpoint_format == "gptq",
                       modules_to_not_convert=skip)
