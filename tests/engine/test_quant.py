"""AWQ and GPTQ: packing rules, loading every supported variant, and exact agreement with dequantized weights."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM

from engine import LLM, SamplingParams
from engine.kernels import reference
from engine.kernels.quant_pack import pack_awq, pack_gptq, unpack_awq, unpack_gptq
from engine.model.quant.checkpoint import is_quantized_linear, quantize_folder_rtn
from engine.model.quant.format import QuantFormat


@settings(max_examples=40, deadline=None)
@given(fmt=st.sampled_from(["awq", "gptq4v1", "gptq4v2", "gptq8v1", "gptq8v2"]), k_words=st.integers(1, 4),
       n_words=st.integers(1, 4), groups=st.sampled_from([1, 2, 4]), seed=st.integers(0, 2**16))
def test_pack_then_unpack_returns_the_codes(fmt, k_words, n_words, groups, seed):
    gen = torch.Generator().manual_seed(seed)
    bits = 8 if "8" in fmt else 4
    k, n = 8 * k_words * groups, 8 * n_words
    codes = torch.randint(0, 1 << bits, (k, n), generator=gen)
    low = 1 if fmt.endswith("v1") else 0  # a v1 file cannot store a true zero of 0
    zeros = torch.randint(low, 1 << bits, (groups, n), generator=gen)
    if fmt == "awq":
        got = unpack_awq(*pack_awq(codes, zeros))
    else:
        v1 = fmt.endswith("v1")
        got = unpack_gptq(*pack_gptq(codes, zeros, bits, v1), bits, v1)
    assert torch.equal(got[0], codes.int()) and torch.equal(got[1], zeros.int())


def test_known_words_from_the_format_notes():
    codes = torch.arange(8).reshape(1, 8)
    awq_word = pack_awq(codes, codes)[0]
    assert awq_word.item() & 0xFFFFFFFF == 0x75316420
    v1_sym_zero = pack_gptq(torch.zeros(8, 8, dtype=torch.int64), torch.full((1, 8), 8), 4, v1=True)[1]
    assert v1_sym_zero.item() & 0xFFFFFFFF == 0x77777777
    # dequantize_w4 on hand-built words: codes 0..7 in one AWQ row, zero 1, scale 0.5
    qzeros = pack_awq(torch.ones(1, 8, dtype=torch.int64), torch.ones(1, 8, dtype=torch.int64))[1]
    weight = reference.dequantize_w4(awq_word, torch.full((1, 8), 0.5).half(), qzeros,
                                     torch.zeros(1, dtype=torch.int32), 1, "awq")
    assert weight.tolist() == [[-0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]]


SPECS = {
    "awq-g32": QuantFormat("awq", 4, 32),
    "gptq4-sym-v1": QuantFormat("gptq", 4, 32, sym=True, v1_zeros=True),
    "gptq4-asym-v2-act-order": QuantFormat("gptq", 4, 32, sym=False, desc_act=True),
    "gptq4-asym-v1-act-order": QuantFormat("gptq", 4, 64, sym=False, desc_act=True, v1_zeros=True),
    "gptq8-channel-v2": QuantFormat("gptq", 8, -1, sym=False),
}


def _dequantized_reference(fp_folder, quant_folder, spec):
    """transformers' model with every quantized linear replaced by its dequantized weight."""
    from safetensors import safe_open

    model = AutoModelForCausalLM.from_pretrained(fp_folder, dtype=torch.float32).eval()
    with safe_open(str(quant_folder / "model.safetensors"), framework="pt") as packed:
        state = model.state_dict()
        for name in list(state):
            if not is_quantized_linear(name):
                continue
            prefix = name.removesuffix(".weight")
            g_idx = packed.get_tensor(f"{prefix}.g_idx") if spec.method == "gptq" else None
            qweight, qzeros, scales = (packed.get_tensor(f"{prefix}.{t}") for t in ("qweight", "qzeros", "scales"))
            k = state[name].shape[1]
            if g_idx is None:
                group_size = k if spec.group_size == -1 else spec.group_size
                g_idx = (torch.arange(k) // group_size).int()
            if spec.v1_zeros:  # the loader's v1 -> v2 conversion, done the long way
                codes, zeros = unpack_gptq(qweight, qzeros, spec.bits, v1=True)
                qweight, qzeros = pack_gptq(codes, zeros, spec.bits, v1=False)
            state[name] = reference.dequantize_w4(qweight, scales, qzeros, g_idx, spec.group_size, spec.method).T
        model.load_state_dict(state)
    return model


@pytest.mark.parametrize("variant", sorted(SPECS))
def test_quantized_model_equals_its_dequantized_weights(variant, tiny_model_factory, tmp_path):
    spec = SPECS[variant]
    fp_folder = tiny_model_factory("llama")
    quant_folder = tmp_path / variant
    quantize_folder_rtn(fp_folder, quant_folder, spec)
    assert json.loads((quant_folder / "config.json").read_text())["quantization_config"]["quant_method"] == spec.method

    llm = LLM(str(quant_folder), max_model_len=128, dtype="float32", enforce_eager=True)  # no flag: the format comes from config.json
    prompt = "The quick brown fox jumps over the lazy dog"
    out = llm.generate(prompt, SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True, prompt_logprobs=0,
                                               logprobs=0), use_tqdm=False)[0]
    model = _dequantized_reference(fp_folder, quant_folder, spec)
    ids = out.prompt_token_ids + out.outputs[0].token_ids
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    num_prompt = len(out.prompt_token_ids)
    for position in range(1, len(ids)):
        token = ids[position]
        entry = out.prompt_logprobs[position] if position < num_prompt else out.outputs[0].logprobs[position - num_prompt]
        assert entry[token].logprob == pytest.approx(float(ref[position - 1, token]), abs=1e-4), position
    assert out.outputs[0].token_ids == [int(ref[p].argmax()) for p in range(num_prompt - 1, len(ids) - 1)]


@pytest.mark.parametrize("field, value, words", [
    ("version", "gemv", ["version", "gemv"]),
    ("bits", 3, ["bits", "3"]),
    ("checkpoint_format", "marlin", ["checkpoint_format", "marlin"]),
    ("pack_dtype", "int16", ["pack_dtype", "int16"]),
    ("dynamic", {"-:.*down.*": {}}, ["dynamic"]),
])
def test_unsupported_variants_fail_at_load_naming_the_field(field, value, words, tiny_model_factory, tmp_path):
    spec = QuantFormat("awq", 4, 32) if field == "version" else QuantFormat("gptq", 4, 32)
    folder = tmp_path / "model"
    quantize_folder_rtn(tiny_model_factory("llama"), folder, spec)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"][field] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError) as err:
        LLM(str(folder), max_model_len=64)
    assert all(word in str(err.value) for word in words), str(err.value)


def test_forcing_the_wrong_method_fails(tiny_model_factory, tmp_path):
    folder = tmp_path / "awq"
    quantize_folder_rtn(tiny_model_factory("llama"), folder, QuantFormat("awq", 4, 32))
    with pytest.raises(ValueError, match="'gptq'.*'awq'"):
        LLM(str(folder), quantization="gptq", max_model_len=64)
    with pytest.raises(ValueError, match="no quantization_config"):
        LLM(str(tiny_model_factory("llama")), quantization="awq", max_model_len=64)


@pytest.mark.parametrize("variant", ["awq-g32", "gptq4-asym-v2-act-order"])
def test_bf16_on_cpu_runs_quantized_layers_on_the_int4_kernel(variant, tiny_model_factory, tmp_path):
    """bf16 (the default where the CPU has it) keeps the 4-bit codes in torch's int4 kernel beside the
    dequantized weight, and stays near the fp32 path; fp32 computes on the dequantized weight only."""
    from engine.config import cpu_has_native_bf16
    from engine.model.layers.linear import Linear
    from engine.model.quant.lowbit import Int4Matmul, cpu_int4_available

    if not (cpu_has_native_bf16() and cpu_int4_available()):
        pytest.skip("no native bf16 or no CPU int4 kernel here")
    folder = tmp_path / variant
    quantize_folder_rtn(tiny_model_factory("llama", initializer_range=0.05), folder, SPECS[variant])
    prompt = {"prompt_token_ids": list(range(300, 340))}
    params = SamplingParams(max_tokens=1, prompt_logprobs=0)
    logprobs = {}
    for dtype in ("bfloat16", "float32"):
        llm = LLM(str(folder), max_model_len=128, dtype=dtype, enforce_eager=True)
        model = llm.engine.runner.model
        quantized = [m for name, m in model.named_modules() if name.endswith(("qkv_proj", "o_proj", "gate_up_proj", "down_proj"))]
        assert quantized and all(isinstance(m, Linear) for m in quantized)
        assert all(isinstance(m.low_bit, Int4Matmul) == (dtype == "bfloat16") for m in quantized)
        out = llm.generate(prompt, params, use_tqdm=False)[0]
        logprobs[dtype] = torch.tensor([e[t].logprob for e, t in zip(out.prompt_logprobs[1:], prompt["prompt_token_ids"][1:])])
    assert (logprobs["bfloat16"] - logprobs["float32"]).abs().mean() < 0.05, (logprobs["bfloat16"] - logprobs["float32"]).abs()
