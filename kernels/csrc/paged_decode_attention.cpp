// Paged decode attention on the CPU: one query token per sequence over its cached tokens,
// reading K/V in place through the block table (no gathered copy).
//
//   q            [num_seqs, num_heads, head_dim]                 fp32 or bf16
//   k/v_cache    [num_blocks, block_size, num_kv_heads, head_dim] same dtype as q
//   block_tables int32 [num_seqs, max_blocks], -1 padded (never read past seq_lens)
//   seq_lens     int32 [num_seqs], >= 1
//   window       > 0: only the last `window` positions are attended (sliding-window layers)
//   softcap      > 0: scores become softcap * tanh(score / softcap) before the softmax (Gemma 2)
//   -> out       like q
//
// One work item is a (sequence, kv head) pair. Each cached key or value row is loaded once,
// widened to fp32 in registers, and used by the `group` query heads that share it; for the
// common shapes (head_dim a multiple of the SIMD width up to 128, group up to 4) the queries and
// the output accumulators stay in registers for the whole sequence. Scores, softmax and the
// weighted sum are fp32. ATen's Vectorized<float> is AVX-512, AVX2 or plain C++ depending on the
// CPU_CAPABILITY the library is built for (the one inductor picks for this machine).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int kMaxGroup = 4;

// kVecs * Vec::size() consecutive values of a row, widened to fp32 vectors.
template <typename T, int kVecs>
inline void load(const T* src, Vec (&dst)[kVecs]) {
  if constexpr (std::is_same_v<T, float>) {
    for (int i = 0; i < kVecs; ++i) dst[i] = Vec::loadu(src + i * Vec::size());
  } else {
    using Reduced = at::vec::Vectorized<T>;  // twice Vec::size() elements
    for (int i = 0; i < kVecs; i += 2) {
      auto [low, high] = at::vec::convert_to_float<T>(Reduced::loadu(src + i * Vec::size()));
      dst[i] = low;
      dst[i + 1] = high;
    }
  }
}

struct Shapes {
  int64_t num_heads, block_size, num_kv_heads, group, table_width;
};

// A sequence's attended positions [first, first + length): the last `window` of its `seq_len`.
struct Span {
  int64_t first, length;
};

inline float capped(float score, float softcap) { return softcap > 0.f ? softcap * std::tanh(score / softcap) : score; }

// One (sequence, kv head): the `group` query heads over `length` cached tokens; kVecs = head_dim / Vec::size().
template <typename T, int kVecs, int kGroup>
void attend(const T* q, const T* k_cache, const T* v_cache, const int32_t* table, Span span, int64_t kv_head,
            float scale, float softcap, const Shapes& s, std::vector<float>& scores, T* out) {
  const int64_t length = span.length;
  constexpr int64_t head_dim = kVecs * Vec::size();
  const int64_t row_stride = s.num_kv_heads * head_dim;
  auto row_of = [&](int64_t pos) {
    return (static_cast<int64_t>(table[pos / s.block_size]) * s.block_size + pos % s.block_size) * row_stride +
           kv_head * head_dim;
  };
  Vec queries[kGroup][kVecs];
  for (int g = 0; g < kGroup; ++g) {
    load<T, kVecs>(q + g * head_dim, queries[g]);
    for (int i = 0; i < kVecs; ++i) queries[g][i] = queries[g][i] * Vec(scale);
  }
  scores.resize(kGroup * length);
  float maxima[kGroup];
  std::fill(maxima, maxima + kGroup, -std::numeric_limits<float>::infinity());
  for (int64_t pos = 0; pos < length; ++pos) {
    Vec key[kVecs];
    load<T, kVecs>(k_cache + row_of(span.first + pos), key);
    for (int g = 0; g < kGroup; ++g) {
      Vec dot = queries[g][0] * key[0];
      for (int i = 1; i < kVecs; ++i) dot = at::vec::fmadd(queries[g][i], key[i], dot);
      const float score = capped(at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, dot), softcap);
      scores[g * length + pos] = score;
      maxima[g] = std::max(maxima[g], score);
    }
  }
  float totals[kGroup];
  for (int g = 0; g < kGroup; ++g) {
    float* row = scores.data() + g * length;
    at::vec::map([&](Vec x) { return (x - Vec(maxima[g])).exp_u20(); }, row, row, length);
    totals[g] = at::vec::reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, row, length);
  }
  Vec acc[kGroup][kVecs];
  for (int g = 0; g < kGroup; ++g)
    for (int i = 0; i < kVecs; ++i) acc[g][i] = Vec(0.f);
  for (int64_t pos = 0; pos < length; ++pos) {
    Vec value[kVecs];
    load<T, kVecs>(v_cache + row_of(span.first + pos), value);
    for (int g = 0; g < kGroup; ++g) {
      const Vec weight(scores[g * length + pos]);
      for (int i = 0; i < kVecs; ++i) acc[g][i] = at::vec::fmadd(weight, value[i], acc[g][i]);
    }
  }
  for (int g = 0; g < kGroup; ++g) {
    float result[head_dim];
    for (int i = 0; i < kVecs; ++i) (acc[g][i] * Vec(1.f / totals[g])).store(result + i * Vec::size());
    for (int64_t d = 0; d < head_dim; ++d) out[g * head_dim + d] = static_cast<T>(result[d]);
  }
}

// Any head_dim and group: the same algorithm with scalar loops (the compiler vectorises the inner ones).
template <typename T>
void attend_any(const T* q, const T* k_cache, const T* v_cache, const int32_t* table, Span span, int64_t kv_head,
                int64_t head_dim, float scale, float softcap, const Shapes& s, std::vector<float>& scores, T* out) {
  const int64_t group = s.group, row_stride = s.num_kv_heads * head_dim, length = span.length;
  auto row_of = [&](int64_t pos) {
    pos += span.first;
    return (static_cast<int64_t>(table[pos / s.block_size]) * s.block_size + pos % s.block_size) * row_stride +
           kv_head * head_dim;
  };
  std::vector<float> acc(group * head_dim, 0.f), maxima(group, -std::numeric_limits<float>::infinity());
  scores.resize(group * length);
  for (int64_t pos = 0; pos < length; ++pos) {
    const T* key = k_cache + row_of(pos);
    for (int64_t g = 0; g < group; ++g) {
      float dot = 0.f;
      for (int64_t d = 0; d < head_dim; ++d) dot += static_cast<float>(q[g * head_dim + d]) * static_cast<float>(key[d]);
      const float score = capped(dot * scale, softcap);
      scores[g * length + pos] = score;
      maxima[g] = std::max(maxima[g], score);
    }
  }
  std::vector<float> totals(group, 0.f);
  for (int64_t g = 0; g < group; ++g)
    for (int64_t pos = 0; pos < length; ++pos) {
      scores[g * length + pos] = std::exp(scores[g * length + pos] - maxima[g]);
      totals[g] += scores[g * length + pos];
    }
  for (int64_t pos = 0; pos < length; ++pos) {
    const T* value = v_cache + row_of(pos);
    for (int64_t g = 0; g < group; ++g)
      for (int64_t d = 0; d < head_dim; ++d) acc[g * head_dim + d] += scores[g * length + pos] * static_cast<float>(value[d]);
  }
  for (int64_t g = 0; g < group; ++g)
    for (int64_t d = 0; d < head_dim; ++d) out[g * head_dim + d] = static_cast<T>(acc[g * head_dim + d] / totals[g]);
}

template <typename T>
void decode_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                      const at::Tensor& block_tables, const at::Tensor& seq_lens, double scale, int64_t window,
                      double softcap, at::Tensor& out) {
  const int64_t num_seqs = q.size(0), head_dim = q.size(2);
  const Shapes s{q.size(1), k_cache.size(1), k_cache.size(2), q.size(1) / k_cache.size(2), block_tables.size(1)};
  const T* q_ptr = q.data_ptr<T>();
  const T* k_ptr = k_cache.data_ptr<T>();
  const T* v_ptr = v_cache.data_ptr<T>();
  const int32_t* tables = block_tables.data_ptr<int32_t>();
  const int32_t* lens = seq_lens.data_ptr<int32_t>();
  T* out_ptr = out.data_ptr<T>();
  const float fscale = static_cast<float>(scale), fcap = static_cast<float>(softcap);
  const bool even = head_dim % (2 * Vec::size()) == 0;  // bf16 loads come in pairs of fp32 vectors
  const int64_t vecs = head_dim / Vec::size();

  at::parallel_for(0, num_seqs * s.num_kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t seq = item / s.num_kv_heads, kv_head = item % s.num_kv_heads;
      const int64_t first_head = kv_head * s.group;
      const T* q_item = q_ptr + (seq * s.num_heads + first_head) * head_dim;
      T* out_item = out_ptr + (seq * s.num_heads + first_head) * head_dim;
      const int32_t* table = tables + seq * s.table_width;
      const int64_t seq_len = lens[seq];
      const int64_t first = window > 0 ? std::max<int64_t>(0, seq_len - window) : 0;
      const Span span{first, seq_len - first};
#define ENGINE_ATTEND(VECS, GROUP)                                                                              \
  if (even && vecs == VECS && s.group == GROUP) {                                                              \
    attend<T, VECS, GROUP>(q_item, k_ptr, v_ptr, table, span, kv_head, fscale, fcap, s, scores, out_item);     \
    continue;                                                                                                  \
  }
      ENGINE_ATTEND(2, 1) ENGINE_ATTEND(2, 2) ENGINE_ATTEND(2, 3) ENGINE_ATTEND(2, 4)
      ENGINE_ATTEND(4, 1) ENGINE_ATTEND(4, 2) ENGINE_ATTEND(4, 3) ENGINE_ATTEND(4, 4)
      ENGINE_ATTEND(8, 1) ENGINE_ATTEND(8, 2) ENGINE_ATTEND(8, 3) ENGINE_ATTEND(8, 4)
#undef ENGINE_ATTEND
      attend_any<T>(q_item, k_ptr, v_ptr, table, span, kv_head, head_dim, fscale, fcap, s, scores, out_item);
    }
  });
}

at::Tensor paged_decode_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                  const at::Tensor& block_tables, const at::Tensor& seq_lens, double scale,
                                  int64_t window, double softcap) {
  TORCH_CHECK(q.dim() == 3 && k_cache.dim() == 4 && v_cache.sizes() == k_cache.sizes(), "bad q or cache shapes");
  TORCH_CHECK(q.size(1) % k_cache.size(2) == 0 && q.size(2) == k_cache.size(3), "heads or head_dim mismatch");
  TORCH_CHECK(q.scalar_type() == k_cache.scalar_type() && k_cache.scalar_type() == v_cache.scalar_type(),
              "q and the caches must share a dtype");
  TORCH_CHECK(block_tables.scalar_type() == at::kInt && seq_lens.scalar_type() == at::kInt,
              "block_tables and seq_lens must be int32");
  TORCH_CHECK(block_tables.size(0) == q.size(0) && seq_lens.size(0) == q.size(0), "one table row and length per sequence");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "the caches must be contiguous");
  const at::Tensor queries = q.contiguous(), tables = block_tables.contiguous(), lens = seq_lens.contiguous();
  at::Tensor out = at::empty_like(queries);
  if (q.scalar_type() == at::kFloat) {
    decode_attention<float>(queries, k_cache, v_cache, tables, lens, scale, window, softcap, out);
  } else {
    TORCH_CHECK(q.scalar_type() == at::kBFloat16, "paged_decode_attention takes fp32 or bf16");
    decode_attention<c10::BFloat16>(queries, k_cache, v_cache, tables, lens, scale, window, softcap, out);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY(engine_cpu, m) {
  m.def("paged_decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_tables, Tensor seq_lens, "
        "float scale, int window, float softcap) -> Tensor");
}

TORCH_LIBRARY_IMPL(engine_cpu, CPU, m) { m.impl("paged_decode_attention", &paged_decode_attention); }
