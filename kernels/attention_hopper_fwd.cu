// build: sm_90a
//
// Causal grouped-query flash attention FORWARD for Hopper (sm_90a only), in the manner of
// FlashAttention-3 (Shah et al. 2024; Dao-AILab/flash-attention hopper/): wgmma tensor cores fed
// by the tensor memory accelerator (TMA), producer/consumer warp specialisation, the softmax of
// one key block overlapped with the next block's products. Same contract as the forward of
// kernels/flash_attention.cu (src/backend/cuda/flash_attention.rs's module docs): q, out
// [batch, queries, heads, d], k, v [batch, keys, kv_heads, d], lse [batch, heads, queries] =
// ln Σ_j exp(q_i·k_j/√d) over the keys query i sees (positions ≤ keys − queries + i); out bf16
// rounded to nearest even; query head h reads KV head h / (heads / kv_heads); d = 64 or 128.
// Host side: src/backend/cuda/attention_hopper_fwd.rs. Tests: tests/cuda_kernels/
// attention_hopper_fwd.rs (f64 CPU reference).
//
// Scheme. One block = one query head × BM = 128 queries of one sequence; 384 threads:
// - Warpgroup 0, the producer (setmaxnreg.dec to 24 registers): one thread issues every TMA copy.
//   Q (128 × d) once; then the K and V tiles (BN = 128 keys × d each) of the key blocks this
//   query tile sees, LAST block first (the diagonal blocks, which need the mask, come first and
//   the mask-free ones after, as FA3 orders them), through a STAGES = 2 ring with separate
//   full/empty mbarriers for K and V (a stage's K is released as soon as S = QKᵀ is done, its V
//   only after O += PV). Every tile is d/64 boxes of 64 columns (128 bytes: the 128-byte swizzle)
//   × 128 rows, 16 KiB each, written by TMA in the canonical 128-byte-swizzled pattern.
// - Warpgroups 1 and 2, the consumers (setmaxnreg.inc to 240): each owns 64 query rows.
//   S = Q·Kᵀ: wgmma.m64n128k16, A = Q and B = K both K-major from shared memory (d/16 steps);
//   O += P·V: wgmma.m64n{d}k16 with P from REGISTERS as the A operand and V from shared memory
//   N-major (imm-trans-b = 1; 128/16 steps). The f32 accumulator layout of S (lane l of warp w:
//   d[4j], d[4j+1] at row 16w + l/4, columns 8j + 2(l%4) + {0,1}; d[4j+2], d[4j+3] at row + 8)
//   is, pair by pair, the bf16 A-fragment layout of a k16 step (a0..a7: rows l/4 and l/4 + 8,
//   columns 2(l%4) + {0,1} and + 8), so P's registers are p[i] = bf16x2(s[2i], s[2i+1]) with no
//   data movement (FA3's "RS" PV product).
//   Intra-warpgroup overlap (FA3 §3.2): in the steady state the consumer issues S_n = Q·K_nᵀ and
//   then O += P_{n+1}·V_{n+1} (the previous block's probabilities) back to back, waits only for
//   S_n (wait_group 1), and runs the softmax of S_n on the CUDA cores while the tensor cores
//   still work on P_{n+1}·V_{n+1}. At the top of the next iteration it waits for that product
//   (wait_group 0), rescales O by exp2(m_old − m_new) and packs P_n. Register budget per
//   consumer thread (d 128): O 64 + S 64 + P 32 f32/b32 (ptxas: up to R183).
// - Online softmax in f32 with exp2 and the scale folded in: p = exp2(s·scale·log2e − m·scale·
//   log2e) as one FFMA and one MUFU.EX2; m is the row's running raw maximum, with the usual
//   guard (a row that has seen only masked keys has m = −inf and uses 0 as its base, so no
//   −inf − −inf = NaN). The row sums stay per thread (a quarter row) and are reduced across the
//   four lanes of a row once, in the epilogue. lse = (m·scale·log2e + log2 l)·ln 2.
// - Causal mask only on the blocks that cross the warpgroup's diagonal: block n needs it iff its
//   last key (n+1)·BN − 1 lies past the warpgroup's first query position, i.e. n ≥
//   (offset + row0 + 1) / BN; those are the first blocks processed. Keys past `keys` in the last
//   block (TMA zero-fills them) are past every real query's position, so the same mask hides
//   them; query rows past `queries` (zero-filled Q) compute finite garbage that is never stored.
// - Grid (heads, query tiles, batch) with blockIdx.y reversed: the longest query tiles (most key
//   blocks) of every head start first, the short ones fill in at the end; consecutive blocks are
//   consecutive heads, so the query heads of a KV group read the same K/V from L2.
// - Epilogue: O / l rounded to bf16 and stored straight from the fragments (4-byte pairs), lse
//   by the lane holding column 0 of each row.
//
// PTX ISA references (9.0 numbering) as in kernels/gemm_wgmma.cu's header (descriptors, the
// canonical K-major and MN-major 128-byte-swizzle layouts, wgmma fence/commit/wait, mbarrier
// parity, cp.async.bulk.tensor, setmaxnreg); the register-A form of wgmma is §9.7.15.5.2
// (`wgmma.mma_async.sync.aligned.shape.f32.bf16.bf16 d, {a0..a3}, b-desc, scale-d, imm-scale-a,
// imm-scale-b, imm-trans-b`) with the A fragment of §9.7.15.5.1.1.1 "Register Fragments", Figure
// "WGMMA .m64nNk16 register fragment layout for matrix A".
#include "common.cuh"

#include <cuda.h>

#include "hopper.cuh"

namespace attn_hopper_fwd {

constexpr int BM = 128;  // queries per block: 64 per consumer warpgroup
constexpr int BN = 128;  // keys per K/V tile
constexpr int STAGES = 2;
constexpr int CONSUMERS = 2;
constexpr int THREADS = 128 * (CONSUMERS + 1);
constexpr int PRODUCER_REGS = 24, CONSUMER_REGS = 240;
constexpr uint32_t CHUNK_BYTES = 128 * 128;  // 64 columns (128 bytes) × 128 rows: one TMA box
constexpr uint32_t SWIZZLE_ATOM = 1024;      // 8 rows × 128 B

// Shared memory of a head dim: Q, then STAGES K tiles, then STAGES V tiles, each d/64 boxes;
// plus one atom to align the start to 1024 bytes (the dynamic window is only 16-byte aligned).
template <int HD>
struct Smem {
  static constexpr uint32_t TILE = (HD / 64) * CHUNK_BYTES;
  static constexpr uint32_t K0 = TILE;
  static constexpr uint32_t V0 = K0 + STAGES * TILE;
  static constexpr uint32_t BYTES = V0 + STAGES * TILE + SWIZZLE_ATOM;
};
static_assert(Smem<64>::BYTES == 82944 && Smem<128>::BYTES == 164864,
              "shared bytes (attention_hopper_fwd.rs)");
static_assert(128 * PRODUCER_REGS + 128 * CONSUMERS * CONSUMER_REGS <= 65536, "register pool");
static_assert(BM == 64 * CONSUMERS && BN == 128, "the wgmma shapes below assume these tiles");

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

using namespace hopper;

constexpr float LN2 = 0.6931471805599453f;

// mbarrier wait for the consumers, with no timeout: hopper::mbar_wait's __trap makes ptxas
// drop the setmaxnreg.inc budget of the code around it (the consumers would get 168 registers
// and spill; measured with ptxas 13.0). The producer keeps the trapping wait and, after its last
// copy, waits with it until the consumers have released every stage: if the protocol ever
// breaks and a consumer hangs, the producer traps within 4 s and the launch fails.
__device__ __forceinline__ void consumer_wait(uint32_t bar, uint32_t parity) {
  while (!mbar_try_wait(bar, parity)) {
  }
}

// Keeps the P registers alive (and unmoved) until here: the PV wgmma reads them asynchronously,
// behind the compiler's back, until its wait_group.
__device__ __forceinline__ void fence_operands(uint32_t (&p)[8][4]) {
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) asm volatile("" : "+r"(p[i][j])::"memory");
}

// S = Q·Kᵀ for one warpgroup (64 × 128 f32), Q and K K-major: d/16 steps, each +32 bytes inside
// a 128-byte swizzled row, the next 64-column box after four.
template <int HD>
__device__ __forceinline__ void issue_scores(float (&s)[64], uint64_t desc_q, uint64_t desc_k) {
#pragma unroll
  for (int kk = 0; kk < HD / 16; ++kk) {
    const uint64_t step = ((kk / 4) * CHUNK_BYTES + (kk % 4) * 32) >> 4;
    wgmma_ss<0, 0>(s, desc_q + step, desc_k + step, kk > 0 ? 1 : 0);
  }
}

// O += P·V: 8 steps of 16 keys, V N-major (16 key rows of 128 bytes = 2048 bytes a step).
template <int HD>
__device__ __forceinline__ void issue_pv(float (&o)[HD / 2], const uint32_t (&p)[8][4],
                                         uint64_t desc_v) {
#pragma unroll
  for (int kk = 0; kk < BN / 16; ++kk) {
    wgmma_rs(o, p[kk], desc_v + ((kk * 2048) >> 4));  // m64n{HD}k16: o has HD / 2
  }
}

// −inf on the scores of keys past each of this thread's two rows' positions (pos, pos + 8);
// `key0` is the block's first key, the thread's columns 8j + 2(lane%4) + {0,1}.
__device__ __forceinline__ void mask_scores(float (&s)[64], int key0, int pos, int lane) {
#pragma unroll
  for (int j = 0; j < 16; ++j) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int key = key0 + 8 * j + 2 * (lane % 4) + e;
      if (key > pos) s[4 * j + e] = -INFINITY;
      if (key > pos + 8) s[4 * j + 2 + e] = -INFINITY;
    }
  }
}

// Online softmax of one block for this thread's two rows: the new running maxima, `alpha` =
// exp2((m_old − m_new)·scale·log2e) to rescale O and the sums by, s ← exp2(s·scale·log2e − base),
// and the per-thread partial row sums updated.
__device__ __forceinline__ void softmax_block(float (&s)[64], float (&row_max)[2],
                                              float (&row_sum)[2], float (&alpha)[2],
                                              float scale_log2) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float mx = row_max[r];
#pragma unroll
    for (int j = 0; j < 16; ++j) mx = fmaxf(mx, fmaxf(s[4 * j + 2 * r], s[4 * j + 2 * r + 1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    // A row with no visible key yet keeps m = −inf: base 0 gives p = 0, not NaN.
    const float base = mx == -INFINITY ? 0.0f : mx * scale_log2;
    alpha[r] = exp2_approx(row_max[r] * scale_log2 - base);
    row_max[r] = mx;
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const float pe = exp2_approx(fmaf(s[4 * j + 2 * r + e], scale_log2, -base));
        s[4 * j + 2 * r + e] = pe;
        sum += pe;
      }
    }
    row_sum[r] = row_sum[r] * alpha[r] + sum;
  }
}

// O ← O · alpha, row by row (the running maximum moved by the last softmax).
template <int HD>
__device__ __forceinline__ void rescale_o(float (&o)[HD / 2], const float (&alpha)[2]) {
#pragma unroll
  for (int j = 0; j < HD / 8; ++j) {
    o[4 * j] *= alpha[0];
    o[4 * j + 1] *= alpha[0];
    o[4 * j + 2] *= alpha[1];
    o[4 * j + 3] *= alpha[1];
  }
}

// P's bf16 A fragments from the probabilities: p[kk][i] = bf16x2(s[8kk + 2i], s[8kk + 2i + 1]).
__device__ __forceinline__ void pack_probabilities(const float (&s)[64], uint32_t (&p)[8][4]) {
#pragma unroll
  for (int kk = 0; kk < 8; ++kk)
#pragma unroll
    for (int i = 0; i < 4; ++i) p[kk][i] = pack_bf16(s[8 * kk + 2 * i], s[8 * kk + 2 * i + 1]);
}

// The consumer warpgroup `cw` (query rows 64·cw .. 64·cw + 63 of the tile): S, softmax, O, and
// the epilogue.
template <int HD>
__device__ __forceinline__ void consume(uint32_t base, uint32_t q_full, uint32_t k_full0,
                                        uint32_t v_full0, uint32_t k_empty0, uint32_t v_empty0,
                                        bf16* __restrict__ out, float* __restrict__ lse,
                                        int queries, int heads, int offset, int m0, int n_blocks,
                                        int cw, float scale_log2) {
  using L = Smem<HD>;
  const int h = blockIdx.x, b = blockIdx.z;
  const int lane = threadIdx.x % 32, warp = (threadIdx.x / 32) % 4;
  const int row0 = cw * 64 + warp * 16 + lane / 4;  // this thread's rows: row0, row0 + 8
  const int pos0 = offset + m0 + row0;              // their positions: pos0, pos0 + 8
  // Blocks from here on have keys past this warpgroup's first position: they need the mask.
  const int mask_from = (offset + m0 + cw * 64 + 1) / BN;
  // Descriptors (stage 0, step 0). Q: this warpgroup's 64 rows start 64 · 128 B into each box;
  // K-major LBO is unused (encoded as 16 B). V N-major: LBO = the next 64-column box.
  const uint64_t desc_q = make_desc(base + cw * 64 * 128, 16, SWIZZLE_ATOM);
  const uint64_t desc_k0 = make_desc(base + L::K0, 16, SWIZZLE_ATOM);
  const uint64_t desc_v0 = make_desc(base + L::V0, CHUNK_BYTES, SWIZZLE_ATOM);
  constexpr uint64_t TILE16 = L::TILE >> 4;  // a stage, in descriptor address units

  float o[HD / 2];
#pragma unroll
  for (int i = 0; i < HD / 2; ++i) o[i] = 0.0f;
  float s[64];
  uint32_t p[8][4];
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f}, alpha[2];

  consumer_wait(q_full, 0);
  int stage = 0;
  uint32_t phase = 0;
  // The first (last-positioned) block's scores alone.
  int n = n_blocks - 1;
  consumer_wait(k_full0 + 8 * stage, phase);
  wgmma_fence();
  issue_scores<HD>(s, desc_q, desc_k0 + stage * TILE16);
  wgmma_commit();
  wgmma_wait<0>();
  fence_accumulators(s);
  if (lane == 0) mbar_arrive(k_empty0 + 8 * stage);
  if (n >= mask_from) mask_scores(s, n * BN, pos0, lane);
  softmax_block(s, row_max, row_sum, alpha, scale_log2);
  int prev_stage = stage;  // the stage of the block whose probabilities s holds
  uint32_t prev_phase = phase;
  int pv_stage = -1;  // the stage whose PV product is in flight (none yet)
  if (++stage == STAGES) {
    stage = 0;
    phase ^= 1;
  }

  // Steady state, one key block per iteration: S_n and the previous block's PV in flight
  // together, the softmax of S_n under the PV. The previous PV is waited for at the top of the
  // next iteration, after the K barrier's spin loop: in the same basic block as the softmax,
  // ptxas hoists the wait_group 0 above the whole softmax (seen in the SASS), serialising it
  // with the PV product; a loop between them keeps it where it is.
  for (n = n_blocks - 2; n >= 0; --n) {
    consumer_wait(k_full0 + 8 * stage, phase);
    wgmma_wait<0>();  // the PV in flight is complete: O and P may be touched
    fence_accumulators(o);
    fence_operands(p);
    if (pv_stage >= 0 && lane == 0) mbar_arrive(v_empty0 + 8 * pv_stage);
    rescale_o<HD>(o, alpha);
    pack_probabilities(s, p);
    wgmma_fence();
    issue_scores<HD>(s, desc_q, desc_k0 + stage * TILE16);
    wgmma_commit();
    consumer_wait(v_full0 + 8 * prev_stage, prev_phase);
    issue_pv<HD>(o, p, desc_v0 + prev_stage * TILE16);
    wgmma_commit();
    pv_stage = prev_stage;
    wgmma_wait<1>();  // S_n complete (groups complete in order); the PV may still run
    fence_accumulators(s);
    if (lane == 0) mbar_arrive(k_empty0 + 8 * stage);
    if (n >= mask_from) mask_scores(s, n * BN, pos0, lane);
    softmax_block(s, row_max, row_sum, alpha, scale_log2);
    prev_stage = stage;
    prev_phase = phase;
    if (++stage == STAGES) {
      stage = 0;
      phase ^= 1;
    }
  }

  // The last PV (block 0).
  wgmma_wait<0>();
  fence_accumulators(o);
  fence_operands(p);
  if (pv_stage >= 0 && lane == 0) mbar_arrive(v_empty0 + 8 * pv_stage);
  rescale_o<HD>(o, alpha);
  pack_probabilities(s, p);
  consumer_wait(v_full0 + 8 * prev_stage, prev_phase);
  wgmma_fence();
  issue_pv<HD>(o, p, desc_v0 + prev_stage * TILE16);
  wgmma_commit();
  wgmma_wait<0>();
  fence_accumulators(o);
  fence_operands(p);
  if (lane == 0) mbar_arrive(v_empty0 + 8 * prev_stage);

  // ---- epilogue: O / l as bf16, lse ----
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float total = row_sum[r];
    total += __shfl_xor_sync(0xffffffffu, total, 1);
    total += __shfl_xor_sync(0xffffffffu, total, 2);
    const int i = m0 + row0 + 8 * r;
    if (i >= queries) continue;
    const float inv = 1.0f / total;  // every real query sees key 0: total ≥ 1
    bf16* orow = out + ((static_cast<size_t>(b) * queries + i) * heads + h) * HD;
#pragma unroll
    for (int j = 0; j < HD / 8; ++j) {
      *reinterpret_cast<__nv_bfloat162*>(orow + 8 * j + 2 * (lane % 4)) =
          __floats2bfloat162_rn(o[4 * j + 2 * r] * inv, o[4 * j + 2 * r + 1] * inv);
    }
    if (lane % 4 == 0)
      lse[(static_cast<size_t>(b) * heads + h) * queries + i] =
          (row_max[r] * scale_log2 + log2f(total)) * LN2;
  }
}

template <int HD>
__device__ __forceinline__ void attention_forward(const CUtensorMap* tma_q,
                                                  const CUtensorMap* tma_k,
                                                  const CUtensorMap* tma_v, bf16* __restrict__ out,
                                                  float* __restrict__ lse, int queries, int keys,
                                                  int heads, int kv_heads, float scale_log2) {
  using L = Smem<HD>;
  extern __shared__ uint8_t attn_smem[];
  // q_full, then k_full[STAGES], v_full[STAGES], k_empty[STAGES], v_empty[STAGES].
  __shared__ __align__(8) uint64_t bars[1 + 4 * STAGES];

  const uint32_t base = (smem_u32(attn_smem) + (SWIZZLE_ATOM - 1)) & ~(SWIZZLE_ATOM - 1);
  const uint32_t q_full = smem_u32(&bars[0]);
  const uint32_t k_full0 = q_full + 8, v_full0 = k_full0 + 8 * STAGES;
  const uint32_t k_empty0 = v_full0 + 8 * STAGES, v_empty0 = k_empty0 + 8 * STAGES;
  const int h = blockIdx.x;
  const int m0 = (gridDim.y - 1 - blockIdx.y) * BM;  // longest query tiles first
  const int b = blockIdx.z;
  const int offset = keys - queries;  // query i sits at position offset + i
  // Key blocks 0 .. n_blocks − 1: up to the tile's last position (or the last key).
  const int n_blocks = min(offset + m0 + BM - 1, keys - 1) / BN + 1;
  const int warpgroup = threadIdx.x / 128;

  if (threadIdx.x == 0) {
    mbar_init(q_full, 1);
#pragma unroll
    for (int s = 0; s < STAGES; ++s) {
      mbar_init(k_full0 + 8 * s, 1);
      mbar_init(v_full0 + 8 * s, 1);
      mbar_init(k_empty0 + 8 * s, CONSUMERS * 4);
      mbar_init(v_empty0 + 8 * s, CONSUMERS * 4);
    }
    mbar_fence_init();
  }
  __syncthreads();

  if (warpgroup == 0) {
    // ---- producer ----
    setmaxnreg_dec<PRODUCER_REGS>();
    if (threadIdx.x == 0) {
      tma_prefetch_map(tma_q);
      tma_prefetch_map(tma_k);
      tma_prefetch_map(tma_v);
      const int kv_head = h / (heads / kv_heads);
      // Boxes are {64 columns, 1 head, 128 rows, 1 sequence} at (column, head, row, sequence),
      // 128 rows of 128 bytes in shared memory; a box partly past the rows is zero-filled and
      // still delivers all its bytes.
      mbar_arrive_expect_tx(q_full, L::TILE);
#pragma unroll
      for (int c = 0; c < HD / 64; ++c)
        tma_load_4d(base + c * CHUNK_BYTES, tma_q, q_full, 64 * c, h, m0, b);
      int stage = 0;
      uint32_t phase = 0;
      for (int n = n_blocks - 1; n >= 0; --n) {
        const uint32_t k_full = k_full0 + 8 * stage, v_full = v_full0 + 8 * stage;
        mbar_wait(k_empty0 + 8 * stage, phase ^ 1);  // both consumers' S of this stage done
        mbar_arrive_expect_tx(k_full, L::TILE);
#pragma unroll
        for (int c = 0; c < HD / 64; ++c)
          tma_load_4d(base + L::K0 + stage * L::TILE + c * CHUNK_BYTES, tma_k, k_full, 64 * c,
                      kv_head, n * BN, b);
        mbar_wait(v_empty0 + 8 * stage, phase ^ 1);  // both consumers' PV of this stage done
        mbar_arrive_expect_tx(v_full, L::TILE);
#pragma unroll
        for (int c = 0; c < HD / 64; ++c)
          tma_load_4d(base + L::V0 + stage * L::TILE + c * CHUNK_BYTES, tma_v, v_full, 64 * c,
                      kv_head, n * BN, b);
        if (++stage == STAGES) {
          stage = 0;
          phase ^= 1;
        }
      }
      // Watchdog: every stage released (all PV products done) before the producer leaves.
#pragma unroll
      for (int i = 0; i < STAGES; ++i) {
        mbar_wait(v_empty0 + 8 * stage, phase ^ 1);
        if (++stage == STAGES) {
          stage = 0;
          phase ^= 1;
        }
      }
    }
  } else {
    setmaxnreg_inc<CONSUMER_REGS>();
    consume<HD>(base, q_full, k_full0, v_full0, k_empty0, v_empty0, out, lse, queries, heads,
                offset, m0, n_blocks, warpgroup - 1, scale_log2);
  }
}

#endif  // __CUDA_ARCH_FEAT_SM90_ALL

}  // namespace attn_hopper_fwd

// One kernel per head dim. Launch (attention_hopper_fwd.rs): block 384, grid (heads, query tiles
// of 128, batch), dynamic shared memory attn_hopper_fwd::Smem<d>::BYTES (opt-in attribute); the
// tensor maps are 4-d bf16 (d, heads, rows, sequences), boxes {64, 1, 128, 1}, 128-byte swizzle.
// Built for sm_80 too (build.rs compiles every file for it): there the body traps, and the host
// launches these only on a compute-capability-9.0 device running the sm_90a image.
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define ATTN_HOPPER_FWD_BODY(HD)                                                               \
  attn_hopper_fwd::attention_forward<HD>(&tma_q, &tma_k, &tma_v, out, lse, queries, keys, heads, \
                                         kv_heads, scale_log2)
#else
#define ATTN_HOPPER_FWD_BODY(HD) __trap()
#endif

#define ATTN_HOPPER_FWD_KERNEL(NAME, HD)                                                         \
  extern "C" __global__ void __launch_bounds__(attn_hopper_fwd::THREADS, 1)                     \
      NAME(const __grid_constant__ CUtensorMap tma_q, const __grid_constant__ CUtensorMap tma_k, \
           const __grid_constant__ CUtensorMap tma_v, bf16* __restrict__ out,                   \
           float* __restrict__ lse, int queries, int keys, int heads, int kv_heads,             \
           float scale_log2) {                                                                  \
    ATTN_HOPPER_FWD_BODY(HD);                                                                   \
  }

// HOT: attention_hopper_fwd_hd64 attention_hopper_fwd_hd128
ATTN_HOPPER_FWD_KERNEL(attention_hopper_fwd_hd64, 64)
ATTN_HOPPER_FWD_KERNEL(attention_hopper_fwd_hd128, 128)
