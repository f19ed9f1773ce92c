"""A linear layer over AWQ/GPTQ packed weights, computing through the kernel set's ``w4a16_gemm``.

Fused projections (q/k/v, gate/up) concatenate their parts along the output dimension; the
packed tensors' output-dimension stride differs per tensor, which ``load_checkpoint`` accounts for.
After loading, ``finalize`` turns GPTQ v1 zeros into true zeros and fills a missing g_idx. The
packed layer computes on CUDA (the Triton w4a16 kernel); on the CPU, ``to_linear`` gives the
``Linear`` that replaces it (also wherever ``quantization='none'``): the weight dequantized once, plus, in bf16, torch's int4 kernel over
the same codes for small steps.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.kernels import KernelSet, reference
from engine.kernels.quant_pack import pack_cols, unpack_cols, unpack_layer
from engine.model.layers.linear import Linear, LinearShards
from engine.model.parallel import Shard

from .format import QuantFormat
from .lowbit import LowBitKernels, int4_groups_from_packed, low_bit_matmul


class QuantLinear(nn.Module):
    def __init__(self, shards: LinearShards, bias: bool, config: QuantFormat, ops: KernelSet) -> None:
        """Built at the whole checkpoint layer's size: packed words and groups are loaded whole, and
        ``finalize`` keeps the tensor-parallel rank's share (``shards``)."""
        super().__init__()
        self.ops, self.shards = ops, shards
        self._has_g_idx = False
        k, n, pf = shards.in_features, sum(shards.part_sizes), config.pack_factor
        group_size = k if config.group_size == -1 else config.group_size
        if k % group_size or n % pf or (config.method == "gptq" and k % pf):
            raise ValueError(f"a {k}x{n} layer cannot be packed with group_size={config.group_size}, "
                             f"{config.bits} bits")
        groups = k // group_size
        self.config, self.group_size = config, group_size
        self.in_features, self.out_features = k, n
        qweight_shape = (k, n // 8) if config.method == "awq" else (k // pf, n)
        self.register_buffer("qweight", torch.empty(qweight_shape, dtype=torch.int32))
        self.register_buffer("qzeros", torch.empty((groups, n // pf), dtype=torch.int32))
        self.register_buffer("scales", torch.empty((groups, n), dtype=torch.float16))
        self.register_buffer("g_idx", torch.empty((k,), dtype=torch.int32))
        self.bias = nn.Parameter(torch.empty(n), requires_grad=False) if bias else None

    def columns_per_entry(self, name: str) -> int:
        """How many output columns one entry of this tensor's last dimension covers."""
        if name == "qzeros" or (name == "qweight" and self.config.method == "awq"):
            return self.config.pack_factor
        return 1

    @torch.no_grad()
    def load_checkpoint(self, name: str, tensor: torch.Tensor, part: int | None) -> None:
        """Place a checkpoint tensor (part ``part`` of a fused layer) at its output columns; the parts of a
        fused layer share one input, so their g_idx must agree."""
        sizes = self.shards.part_sizes
        if part is None and len(sizes) > 1:
            raise ValueError("fused packed projections are not supported")
        if name == "g_idx":
            if self._has_g_idx and not torch.equal(self.g_idx, tensor.to(self.g_idx.dtype)):
                raise ValueError("differs from its fused siblings' g_idx")
            destination, self._has_g_idx = self.g_idx, True
        else:
            destination = getattr(self, name)
            if len(sizes) > 1:
                per = self.columns_per_entry(name)
                start = self.shards.part_starts[part]
                destination = destination.narrow(destination.dim() - 1, start // per, sizes[part] // per)
        if destination.shape != tensor.shape:
            raise ValueError(f"has shape {tuple(tensor.shape)}, expected {tuple(destination.shape)}")
        destination.copy_(tensor.to(destination.dtype))

    @torch.no_grad()
    def finalize(self) -> None:
        """GPTQ v1 zeros made true zeros, a missing g_idx filled, then the rank's share kept."""
        if self.config.v1_zeros:
            zeros = unpack_cols(self.qzeros, self.config.bits) + 1
            if int(zeros.max()) >= 1 << self.config.bits:
                raise ValueError("GPTQ v1 qzeros hold a zero point past the top code; the checkpoint is corrupt")
            self.qzeros.copy_(pack_cols(zeros, self.config.bits))
        if not self._has_g_idx:  # AWQ, and GPTQ files written without one
            self.g_idx.copy_(torch.arange(self.in_features, device=self.g_idx.device) // self.group_size)
        self._keep_share(self.shards.output_ranges, self.shards.input_range)

    def _keep_share(self, outputs: list[Shard] | None, inputs: Shard | None) -> None:
        """Keep a tensor-parallel rank's part of the loaded layer: the output columns in ``outputs`` (column-
        parallel; each range whole packed words) or the inputs ``inputs`` (row-parallel) with the groups they
        use, renumbered. Any g_idx order (act-order too) stays exact: groups move with their inputs."""
        pf = self.config.pack_factor
        if outputs:
            if any(s.start % pf or s.size % pf for s in outputs):
                raise ValueError(f"a tensor-parallel share of outputs {outputs} cuts {pf}-column packed words")
            columns = torch.cat([torch.arange(s.start, s.start + s.size) for s in outputs])
            words = columns[::pf] // pf
            self.qweight = self.qweight[:, words if self.config.method == "awq" else columns].contiguous()
            self.qzeros = self.qzeros[:, words].contiguous()
            self.scales = self.scales[:, columns].contiguous()
            if self.bias is not None:
                self.bias = nn.Parameter(self.bias[columns].contiguous(), requires_grad=False)
            self.out_features = len(columns)
        if inputs is not None:
            rows_per_word = 1 if self.config.method == "awq" else pf  # GPTQ packs along the inputs
            if inputs.start % rows_per_word or inputs.size % rows_per_word:
                raise ValueError(f"a tensor-parallel share of inputs {inputs} cuts packed words")
            self.qweight = self.qweight[inputs.start // rows_per_word:
                                        (inputs.start + inputs.size) // rows_per_word].contiguous()
            g_idx = self.g_idx[inputs.start : inputs.start + inputs.size].long()
            used = torch.unique(g_idx)
            self.qzeros, self.scales = self.qzeros[used].contiguous(), self.scales[used].contiguous()
            self.g_idx = torch.searchsorted(used, g_idx).to(torch.int32)
            self.in_features = inputs.size

    @torch.no_grad()
    def to_linear(self, low_bit: LowBitKernels | None) -> Linear:
        """The dense layer of the same weights; ``low_bit``: with that family's 4-bit kernel where it can hold the codes."""
        weight = reference.dequantize_w4(self.qweight, self.scales, self.qzeros, self.g_idx, self.group_size,
                                          self.config.method)
        linear = Linear.dense(self.in_features, self.out_features, self.bias is not None).to(self.scales.dtype)
        linear.weight.data.copy_(weight.T)
        if self.bias is not None:
            linear.bias.data.copy_(self.bias)
        if low_bit and self.config.bits == 4:
            codes, zeros = unpack_layer(self.qweight, self.qzeros, self.in_features, self.config.method)
            consecutive = int4_groups_from_packed(codes, zeros, self.scales, self.g_idx)
            if consecutive is not None:
                linear.low_bit = low_bit_matmul(*consecutive, kernels=low_bit)
        return linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.ops.w4a16_gemm(x, self.qweight, self.scales, self.qzeros, self.g_idx, self.group_size,
                                  self.config.method)
        return out if self.bias is None else out + self.bias
