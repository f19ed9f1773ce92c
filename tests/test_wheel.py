"""The wheel, as a user installs it: built by ``pip wheel``, installed without ``-e`` into a fresh
venv beside the newest transformers with Hugging Face's ``kernels`` package (transformers requires it
from 5.25 on), and beside the oldest transformers we support. There, from a folder outside the
checkout, it imports, generates from the default model and a tiny model, and serves the chat page
and a chat completion; HF's ``kernels`` stays intact. The wheel installs one import root, ``engine``,
and carries every file of the folders it maps (code, C++ sources, the chat page, the vendored proto
and its license, the calibration text)."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
from openai import OpenAI
from test_layering import FOLDERS

from benchmarks.common import free_port, wait_until_ready
from engine.model.loader.resolve import default_gguf_file

ROOT = Path(__file__).resolve().parent.parent
OLDEST_TRANSFORMERS = next(re.fullmatch(r"transformers>=([\d.]+)", requirement).group(1)
                           for requirement in importlib.metadata.requires("engine")
                           if requirement.startswith("transformers"))
ENDS = {  # what each venv installs beside the wheel and torch
    "newest": ["transformers", "kernels"],
    "oldest": [f"transformers=={OLDEST_TRANSFORMERS}"],
}
TINY_MODEL = textwrap.dedent("""
    # A random-weight Llama saved by this venv's transformers, with the default model's tokenizer read from its GGUF.
    import sys
    from pathlib import Path

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf, folder = Path(sys.argv[1]), Path(sys.argv[2])
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
""")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-w", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    (built,) = out.glob("engine-*.whl")
    return built


def test_the_wheel_installs_one_import_root_and_every_file_of_its_folders(wheel):
    with zipfile.ZipFile(wheel) as archive:
        dist_info = next(name.split("/")[0] for name in archive.namelist() if name.endswith(".dist-info/RECORD"))
        assert archive.read(f"{dist_info}/top_level.txt").decode().split() == ["engine"]
        record = {line.split(",")[0] for line in archive.read(f"{dist_info}/RECORD").decode().splitlines()}
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
    assert {path.split("/")[0] for path in record} == {"engine", dist_info}
    assert "engine = engine.api.cli:main" in entry_points
    expected = set()
    for package, folder in FOLDERS.items():
        for file in (ROOT / folder).rglob("*"):
            if file.is_file() and "__pycache__" not in file.parts:
                expected.add("/".join([*package.split("."), *file.relative_to(ROOT / folder).parts]))
    assert expected - record == set(), "files of the checkout the wheel leaves out"
    assert {"engine/kernels/csrc/paged_decode_attention.cpp", "engine/api/ui/index.html",
            "engine/api/oip_grpc/grpc_predict_v2.proto", "engine/api/oip_grpc/LICENSE.kserve",
            "engine/model/quant/calibration.txt"} <= record


@dataclass
class Venv:
    end: str
    bin: Path
    home: Path  # the working directory: outside the checkout, as a user's would be
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(args, cwd=self.home, env=self.env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def venvs(wheel, tmp_path_factory) -> dict[str, Venv]:
    """Fresh venvs with the wheel (not editable), this torch and each end of the transformers range, installed
    side by side (pip spends its time unpacking torch, one core each) and not byte-compiled (only the modules
    imported get compiled, on first import): 40 s for both instead of 130 s."""
    torch_pin = f"torch=={torch.__version__.split('+')[0]}"  # the CPU build on this disk, as the README installs
    roots = {end: tmp_path_factory.mktemp(f"venv-{end}") for end in ENDS}
    installs = {}
    for end, root in roots.items():
        subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, timeout=120)
        installs[end] = subprocess.Popen([root / "venv" / "bin" / "pip", "install", "-q", "--no-compile", str(wheel),
                                          torch_pin, *ENDS[end]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         text=True)
    for end, install in installs.items():
        output, _ = install.communicate(timeout=900)
        assert install.returncode == 0, f"{end}: {output}"
    made = {}
    for end, root in roots.items():
        cache = root / "cache"  # a fresh engine cache, so this transformers converts the GGUF's metadata itself
        (cache / "gguf").mkdir(parents=True)
        shutil.copy(default_gguf_file(), cache / "gguf" / default_gguf_file().name)
        bin_dir = root / "venv" / "bin"
        env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "VIRTUAL_ENV"))}
        env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", ENGINE_CACHE_DIR=str(cache), HF_HUB_OFFLINE="1",
                   PYTHONUNBUFFERED="1")
        (root / "home").mkdir()
        made[end] = Venv(end, bin_dir, root / "home", env)
    return made


@pytest.fixture(scope="module", params=sorted(ENDS))
def venv(request, venvs) -> Venv:
    return venvs[request.param]


def test_imports_beside_transformers_and_leaves_hf_kernels_intact(venv):
    check = textwrap.dedent("""
        import sys
        path = list(sys.path)
        from engine import LLM, SamplingParams
        assert sys.path == path, "an installed engine moved sys.path"
        import transformers
        import transformers.integrations.hub_kernels  # imports HF's `kernels` where installed
        print(transformers.__version__)
        try:
            import kernels
            print(kernels.__file__, hasattr(kernels, "get_kernel"))
        except ImportError:
            print("no kernels")
        import engine.api.app, engine.kernels, engine.scheduler
        print(engine.kernels.__file__)
    """)
    done = venv.run("python", "-c", check)
    assert done.returncode == 0, done.stderr
    version, theirs, ours = done.stdout.splitlines()[-3:]
    site_packages = str(venv.bin.parent / "lib")
    assert ours.startswith(site_packages) and ours.endswith("engine/kernels/__init__.py")
    if venv.end == "oldest":
        assert version == OLDEST_TRANSFORMERS
    else:
        assert int(version.split(".")[0]) >= 5
        path, has_get_kernel = theirs.split()
        assert path.startswith(site_packages) and path.endswith("site-packages/kernels/__init__.py")
        assert has_get_kernel == "True"


def test_the_cpp_decode_attention_builds_from_the_installed_sources(venv):
    """The compiled CPU step's C++ attention is built from the .cpp the wheel carries, and agrees with the reference."""
    if venv.end != "newest":
        pytest.skip("the C++ build does not depend on transformers: built once, in the newest end's venv")
    check = textwrap.dedent("""
        import torch
        from engine.kernels import cpu, reference
        cpu.load()
        torch.manual_seed(0)
        k_cache, v_cache = torch.randn(2, 6, 16, 2, 32).unbind(0)
        q = torch.randn(3, 4, 32)
        block_tables = torch.tensor([[0, 1, -1], [2, -1, -1], [3, 4, 5]], dtype=torch.int32)
        seq_lens = torch.tensor([20, 5, 40], dtype=torch.int32)
        ours = cpu.paged_attention_decode(q, k_cache, v_cache, block_tables, seq_lens, 32 ** -0.5)
        oracle = reference.paged_attention_decode(q, k_cache, v_cache, block_tables, seq_lens, 32 ** -0.5)
        print((ours - oracle).abs().max().item())
    """)
    done = venv.run("python", "-c", check)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout.split()[-1]) < 1e-5


@pytest.fixture(scope="module")
def tiny_model(venv) -> Path:
    folder = venv.home / "tiny-llama"
    gguf = Path(venv.env["ENGINE_CACHE_DIR"]) / "gguf" / default_gguf_file().name
    done = venv.run("python", "-c", TINY_MODEL, str(gguf), str(folder))
    assert done.returncode == 0, done.stderr
    return folder


def test_engine_generate_on_the_default_and_a_tiny_model(venv, tiny_model):
    default = venv.run("engine", "generate", "The capital of France is", "--max-tokens", "8", "--enforce-eager")
    assert default.returncode == 0, default.stderr
    assert "Paris" in default.stdout
    tiny = venv.run("engine", "generate", "Hello", "--model", str(tiny_model), "--max-tokens", "8", "--enforce-eager")
    assert tiny.returncode == 0, tiny.stderr
    assert re.search(r"\d+ tokens in [\d.]+ s", tiny.stderr)


def test_engine_serve_answers_the_chat_page_and_a_chat_completion(venv, tiny_model):
    port = free_port()
    log_path = venv.home / "serve.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(["engine", "serve", str(tiny_model), "--host", "127.0.0.1", "--port", str(port),
                                   "--served-model-name", "tiny", "--enforce-eager"],
                                  cwd=venv.home, env=venv.env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(f"{url}/health", server, log_path, timeout_s=120)  # eager: no compile
        page = httpx.get(f"{url}/")
        assert page.status_code == 200 and "<title>engine chat</title>" in page.text
        assert httpx.get(f"{url}/ui/chat.js").status_code == 200
        client = OpenAI(base_url=f"{url}/v1", api_key="unused")
        reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                               max_tokens=8, extra_body={"ignore_eos": True})
        assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 8
        assert isinstance(reply.choices[0].message.content, str)
    finally:
        server.terminate()
        server.wait(timeout=60)
