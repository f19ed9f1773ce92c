"""What the one decoder needs to know of an architecture, read once from its Hugging Face config.

The families we run differ in a handful of choices, each an option of the same decoder:

- Llama / Mistral / Qwen2 / Qwen3: pre-norm blocks, SwiGLU; Qwen2 has q/k/v biases, Qwen3 q/k norms.
- Gemma 2 / Gemma 3: "sandwich" norms (before and after both attention and the MLP) scaling by
  ``1 + w``, a GeGLU MLP (tanh GELU), embeddings scaled by sqrt(hidden), attention scaled by
  ``query_pre_attn_scalar``; Gemma 2 caps attention scores and logits with tanh, Gemma 3 has q/k
  norms and its own rotary base on sliding-window layers.
- Sliding windows: per layer, from ``layer_types`` (Gemma, Qwen2 with ``use_sliding_window``,
  newer configs) or, for Mistral and Phi-3, one ``sliding_window`` for every layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.model.parallel import Shard, TensorParallel
from engine.model.quant.format import QuantFormat


@dataclass(frozen=True)
class ArchitectureFlags:
    """An architecture's fixed choices (the config supplies the sizes)."""

    qkv_bias: bool | None = None  # None: the config's ``attention_bias``
    qk_norm: bool = False
    gemma: bool = False  # sandwich norms, 1 + w norms, GeGLU, scaled embeddings, query_pre_attn_scalar
    local_rope: bool = False  # sliding-window layers rotate with ``rope_local_base_freq`` (Gemma 3)
    windows_from_config: bool = False  # one ``sliding_window`` for all layers where no ``layer_types`` says (Mistral, Phi-3)


@dataclass(frozen=True)
class DecoderSpec:
    """The architecture facts the forward pass needs."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    qkv_bias: bool
    qk_norm: bool
    tie_word_embeddings: bool
    max_position: int
    quant: QuantFormat | None = None
    tp: TensorParallel = TensorParallel()
    layer_windows: tuple[int, ...] = ()  # per layer: its sliding window in tokens, 0 for full attention
    local_rope_layers: frozenset[int] = field(default_factory=frozenset)  # layers on the local rotary table
    gemma: bool = False
    attention_scale: float = 0.0  # 0: head_dim ** -0.5
    attn_softcap: float = 0.0
    final_softcap: float = 0.0

    @property
    def kv_shard(self) -> Shard:
        """This rank's KV heads; it holds the query heads that read them too."""
        return self.tp.kv_heads(self.num_kv_heads)

    @property
    def local_kv_heads(self) -> int:
        return self.kv_shard.size

    @property
    def local_heads(self) -> int:
        return self.kv_shard.size * (self.num_heads // self.num_kv_heads)

    @property
    def norm_offset(self) -> float:
        return 1.0 if self.gemma else 0.0

    def window(self, layer: int) -> int:
        return self.layer_windows[layer] if self.layer_windows else 0

    @classmethod
    def from_hf_config(cls, hf_config, flags: ArchitectureFlags, quant: QuantFormat | None = None,
                       tp: TensorParallel = TensorParallel()) -> "DecoderSpec":
        num_heads = hf_config.num_attention_heads
        head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // num_heads
        num_layers = hf_config.num_hidden_layers
        windows = layer_windows(hf_config, num_layers, flags.windows_from_config)
        gemma = flags.gemma
        scalar = getattr(hf_config, "query_pre_attn_scalar", None) if gemma else None
        qkv_bias = flags.qkv_bias if flags.qkv_bias is not None else bool(getattr(hf_config, "attention_bias", False))
        return cls(
            vocab_size=hf_config.vocab_size,
            hidden_size=hf_config.hidden_size,
            intermediate_size=hf_config.intermediate_size,
            num_layers=num_layers,
            num_heads=num_heads,
            num_kv_heads=getattr(hf_config, "num_key_value_heads", None) or num_heads,
            head_dim=head_dim,
            rms_norm_eps=hf_config.rms_norm_eps,
            qkv_bias=qkv_bias,
            qk_norm=flags.qk_norm,
            tie_word_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
            max_position=hf_config.max_position_embeddings,
            quant=quant,
            tp=tp,
            layer_windows=windows if any(windows) else (),
            local_rope_layers=frozenset(i for i, w in enumerate(windows) if w) if flags.local_rope else frozenset(),
            gemma=gemma,
            attention_scale=scalar**-0.5 if scalar else 0.0,
            attn_softcap=float(getattr(hf_config, "attn_logit_softcapping", None) or 0.0),
            final_softcap=float(getattr(hf_config, "final_logit_softcapping", None) or 0.0),
        )


def layer_windows(hf_config, num_layers: int, from_config: bool) -> tuple[int, ...]:
    """Each layer's sliding window (0: full attention), as transformers applies them: ``layer_types``
    where the config lists them; else Gemma's patterns of transformers before 4.53; else Qwen2's
    ``use_sliding_window`` from ``max_window_layers`` on; else, for Mistral and Phi-3
    (``from_config``), ``sliding_window`` on every layer."""
    window = int(getattr(hf_config, "sliding_window", None) or 0)
    types = getattr(hf_config, "layer_types", None)
    if types:
        return tuple(window if kind == "sliding_attention" else 0 for kind in types)
    if pattern := getattr(hf_config, "sliding_window_pattern", None):  # Gemma 3: every pattern-th layer global
        return tuple(window if (i + 1) % pattern else 0 for i in range(num_layers))
    if getattr(hf_config, "model_type", None) == "gemma2":  # sliding and global layers alternate
        return tuple(0 if i % 2 else window for i in range(num_layers))
    if hasattr(hf_config, "use_sliding_window"):
        first = getattr(hf_config, "max_window_layers", num_layers)
        return tuple(window if hf_config.use_sliding_window and i >= first else 0 for i in range(num_layers))
    return (window if from_config else 0,) * num_layers
