// A 4-bit matmul whose every output is one fixed sequence of operations, whatever the number of rows:
// the batch-invariant engine's matmul on the CPU (engine/model/quant/lowbit.py, RowsMatmul).
//
//   x       bf16 [M, K], K even
//   codes   uint8 [N / 16, K / 2, 16]: byte (block, p, lane) holds the codes of inputs 2p and 2p + 1 in its
//           low and high nibbles, the 16 outputs of a block in the lane order RowsMatmul packs them in
//   scales, shifts  fp32 [N / 16, K / group, 16]: w = code * scale + shift, rounded to bf16
//   -> bf16 [M, n_out]
//
// Each output accumulates its K / 2 pairs in input order with AVX512-BF16 dot products into one fp32
// lane, from zero, then rounds to bf16: a row's bits do not depend on the other rows, nor on whether
// the weights were dequantized into a panel shared by many rows (M > kTile) or in registers (one tile).
// At one row it reads the 4-bit codes (a quarter of a bf16 weight's bytes); at 32 rows the dequantized
// panel of a block of 16 outputs is reused by every row.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>

#include <vector>

namespace {

constexpr int64_t kLanes = 16;  // outputs per block: one fp32 vector of accumulators per row
constexpr int kTile = 8;        // rows whose accumulators live in registers together

#define ENGINE_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))

struct Block {
  const uint8_t* codes;
  const float* scales;
  const float* shifts;
};

// The bf16 weights of input pair p of a block, arranged for dot products: accumulator lane i gets
// (w[2p, i], w[2p + 1, i]) once RowsMatmul has put output i of the block at the vector position the
// unpack instructions move to lane i. `scale`, `shift`: the pair's group's, by lane.
ENGINE_BF16_TARGET inline __m512bh weights(const uint8_t* codes, int64_t p, __m512 scale, __m512 shift) {
  const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + p * kLanes)));
  const __m512 even = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(bytes, _mm512_set1_epi32(15))), scale, shift);
  const __m512 odd = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(bytes, 4)), scale, shift);
  return _mm512_cvtne2ps_pbh(_mm512_unpackhi_ps(even, odd), _mm512_unpacklo_ps(even, odd));
}

// kRows rows of x (input pairs as uint32) against kBlocks blocks of 16 outputs. `panel` (kBlocks panels of
// `pairs` weight vectors) holds the blocks' dequantized weights; null: they are dequantized in registers.
template <int kBlocks, int kRows>
ENGINE_BF16_TARGET void tile(const uint32_t* x, int64_t pairs, const Block* blocks, const uint16_t* panel,
                             int64_t group, at::BFloat16* out, int64_t n_out, int64_t first) {
  __m512 acc[kRows][kBlocks];
  for (int r = 0; r < kRows; ++r)
    for (int j = 0; j < kBlocks; ++j) acc[r][j] = _mm512_setzero_ps();
  for (int64_t first_pair = 0; first_pair < pairs; first_pair += group / 2) {
    __m512 scale[kBlocks], shift[kBlocks];
    for (int j = 0; j < kBlocks; ++j) {
      scale[j] = _mm512_loadu_ps(blocks[j].scales + first_pair * 2 / group * kLanes);
      shift[j] = _mm512_loadu_ps(blocks[j].shifts + first_pair * 2 / group * kLanes);
    }
    for (int64_t p = first_pair; p < first_pair + group / 2; ++p) {
      __m512bh w[kBlocks];
      for (int j = 0; j < kBlocks; ++j)
        w[j] = panel ? reinterpret_cast<__m512bh>(_mm512_loadu_si512(panel + (j * pairs + p) * 2 * kLanes))
                     : weights(blocks[j].codes, p, scale[j], shift[j]);
      for (int r = 0; r < kRows; ++r) {
        const __m512bh input = reinterpret_cast<__m512bh>(_mm512_set1_epi32(x[r * pairs + p]));
        for (int j = 0; j < kBlocks; ++j) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], w[j], input);
      }
    }
  }
  for (int j = 0; j < kBlocks; ++j) {
    const int64_t start = first + j * kLanes, width = std::min<int64_t>(kLanes, n_out - start);
    const __mmask16 mask = width == kLanes ? 0xFFFF : static_cast<__mmask16>((1u << width) - 1);
    for (int r = 0; r < kRows; ++r)
      _mm256_mask_storeu_epi16(out + r * n_out + start, mask, reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(acc[r][j])));
  }
}

// kBlocks blocks of outputs for every row, a tile of rows at a time. Vector values never cross into code built
// without AVX-512 (their calling convention differs there): this is the unit the thread loop calls.
template <int kBlocks>
ENGINE_BF16_TARGET void blocks_rows(const uint32_t* x, int64_t m, int64_t pairs, const Block* blocks, uint16_t* panel,
                                    int64_t group, at::BFloat16* out, int64_t n_out, int64_t first) {
  if (panel != nullptr)
    for (int j = 0; j < kBlocks; ++j)
      for (int64_t g = 0; g < pairs * 2 / group; ++g) {
        const __m512 scale = _mm512_loadu_ps(blocks[j].scales + g * kLanes);
        const __m512 shift = _mm512_loadu_ps(blocks[j].shifts + g * kLanes);
        for (int64_t p = g * group / 2; p < (g + 1) * group / 2; ++p)
          _mm512_storeu_si512(panel + (j * pairs + p) * 2 * kLanes,
                              reinterpret_cast<__m512i>(weights(blocks[j].codes, p, scale, shift)));
      }
  for (int64_t row = 0; row < m; row += kTile) {
    const uint32_t* rows = x + row * pairs;
    at::BFloat16* rows_out = out + row * n_out;
    switch (std::min<int64_t>(kTile, m - row)) {
#define ENGINE_TILE(R) \
  case R: tile<kBlocks, R>(rows, pairs, blocks, panel, group, rows_out, n_out, first); break;
      ENGINE_TILE(1) ENGINE_TILE(2) ENGINE_TILE(3) ENGINE_TILE(4) ENGINE_TILE(5) ENGINE_TILE(6) ENGINE_TILE(7)
      ENGINE_TILE(8)
#undef ENGINE_TILE
    }
  }
}

void matmul(const uint32_t* x, int64_t m, int64_t k, const uint8_t* codes, const float* scales, const float* shifts,
            int64_t group, int64_t num_blocks, at::BFloat16* out, int64_t n_out) {
  const int64_t pairs = k / 2, groups = k / group, block_bytes = pairs * kLanes;
  auto block = [&](int64_t index) {
    return Block{codes + index * block_bytes, scales + index * groups * kLanes, shifts + index * groups * kLanes};
  };
  // work items of two blocks (32 outputs): each input broadcast serves two dot products
  at::parallel_for(0, (num_blocks + 1) / 2, 1, [&](int64_t begin, int64_t end) {
    std::vector<uint16_t> panel(m > kTile ? 2 * pairs * 2 * kLanes : 0);  // bf16 weights shared by the row tiles
    uint16_t* shared = m > kTile ? panel.data() : nullptr;
    for (int64_t item = begin; item < end; ++item) {
      const Block blocks[2] = {block(2 * item), block(std::min(2 * item + 1, num_blocks - 1))};
      if (2 * item + 1 < num_blocks)
        blocks_rows<2>(x, m, pairs, blocks, shared, group, out, n_out, 2 * item * kLanes);
      else
        blocks_rows<1>(x, m, pairs, blocks, shared, group, out, n_out, 2 * item * kLanes);
    }
  });
}

at::Tensor rows_matmul(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales, const at::Tensor& shifts,
                       int64_t n_out) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kBFloat16, "x must be bf16 [M, K]");
  TORCH_CHECK(codes.scalar_type() == at::kByte && codes.is_contiguous() && scales.is_contiguous() &&
              shifts.is_contiguous(), "the packed tensors must be contiguous, codes uint8");
  TORCH_CHECK(codes.dim() == 3 && scales.dim() == 3 && scales.sizes() == shifts.sizes(), "bad packed shapes");
  const int64_t m = x.size(0), k = x.size(1), blocks = scales.size(0);
  TORCH_CHECK(k % 2 == 0 && codes.size(1) * 2 == k && scales.size(1) > 0 && k % scales.size(1) == 0,
              "x's K does not match the packed weight");
  TORCH_CHECK(n_out <= blocks * kLanes && n_out > (blocks - 1) * kLanes, "n_out does not match the blocks");
  const int64_t group = k / scales.size(1);
  TORCH_CHECK(group % 2 == 0, "groups must hold whole input pairs");
  const at::Tensor input = x.contiguous();
  at::Tensor out = at::empty({m, n_out}, x.options());
  if (m == 0) return out;
  const auto* rows = reinterpret_cast<const uint32_t*>(input.data_ptr<at::BFloat16>());
  const auto* packed = static_cast<const uint8_t*>(codes.data_ptr());
  matmul(rows, m, k, packed, scales.data_ptr<float>(), shifts.data_ptr<float>(), group, blocks,
         out.data_ptr<at::BFloat16>(), n_out);
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(engine_cpu, m) {
  m.def("rows_matmul(Tensor x, Tensor codes, Tensor scales, Tensor shifts, int n_out) -> Tensor");
}

TORCH_LIBRARY_IMPL(engine_cpu, CPU, m) { m.impl("rows_matmul", &rows_matmul); }
