// build: sm_90a
//
// Causal grouped-query flash attention BACKWARD for Hopper (sm_90a only), in the manner of
// FlashAttention-3 (Shah et al. 2024; Dao-AILab/flash-attention hopper/, read, not copied):
// wgmma tensor cores, TMA loads through an mbarrier pipeline, dK and dV in registers, dQ
// reduced into an f32 accumulator with bulk reductions. Same contract as
// kernels/flash_attention.cu's backward (layouts in src/backend/cuda/flash_attention.rs's module
// docs); host side, scratch buffers and tensor maps: src/backend/cuda/attention_hopper_bwd.rs.
// Reference: backend::cpu::attention::causal_attention_backward; tests in
// tests/cuda_kernels/attention_hopper_bwd.rs.
//
// Notation: S = τ·Q·Kᵀ (τ = 1/√d), P = exp(S − L) with L the forward's natural log-sum-exp,
// dP = dO·Vᵀ, D = rowsum(dO ∘ O), dS = P ∘ (dP − D); dV = Pᵀ·dO, dK = τ·dSᵀ·Q, dQ = τ·dS·K.
// Scores in base 2: P = exp2(Q·Kᵀ·τ·log₂e − L·log₂e).
//
// Three kernels per call:
// 1. flash_bwd_hopper_preprocess: per query row, D and L·log₂e into [batch, heads, qpad] f32
//    buffers padded to qpad = 64·⌈queries/64⌉ (the host zeroes them, so the pad reads as 0),
//    which the main kernel copies 64 rows at a time with plain bulk copies.
// 2. flash_bwd_hopper_hd{64,128}: one CTA per (block of BN = 128 keys, KV head, sequence),
//    heaviest key blocks first (block 0 sees every query). 256 threads = 2 warpgroups, and
//    no producer warp: thread 0 issues every load (K and V once: TMA, 4-d maps over [batch,
//    seq, heads, d], boxes of 64 rows × 64 dims = 128 B, 128-byte swizzle; then for every query
//    head of the KV head's group and every 64-query block that sees the keys, Q, dO (TMA) and
//    L·log₂e, D (bulk copies) into a STAGES = 3 ring, issued STAGES − 1 blocks ahead; full and
//    empty mbarriers as kernels/gemm_wgmma.cu's). Why not FA3's producer warpgroup and
//    setmaxnreg: the d = 128 compute needs ~237 registers a thread, and ptxas (13.0) kept the
//    consumers of a 384-thread (or 288-thread: 3 warps on one SM sub-partition) kernel near
//    its 168-register entry cap even after setmaxnreg.inc 240 (at most R176 used, 612 bytes of
//    spills, wgmma serialised); with 256 threads the cap is 255 and nothing spills.
//    - warpgroup w (0 or 1) owns keys 64w..64w+63 of the block and keeps dK, dV (64 × d f32) in registers for the whole CTA. Per query
//      block, everything transposed (keys as wgmma's M):
//        Sᵀ = K_w·Qᵀ, dPᵀ = V_w·dOᵀ            wgmma m64n64k16, A and B K-major in shared
//        Pᵀ = exp2(Sᵀ·τlog₂e − L₂), masked       (only on blocks the diagonal or a tail crosses)
//        dV_w += Pᵀ·dO                           wgmma m64n{d}k16, Pᵀ from registers (the
//                                                accumulator layout of two n8 tiles is the A
//                                                layout of one k16 step), dO N-major
//        dSᵀ = Pᵀ ∘ (dPᵀ − D) (Pᵀ as rounded to bf16 for dV: the f32 Sᵀ need not stay live)
//                                                → registers, and a bf16 copy in shared memory
//        dK_w += dSᵀ·Q                           wgmma, dSᵀ from registers, Q N-major
//        dQ_part = dS·K                          wgmma m64n64k16, dS M-major from shared memory,
//                                                K N-major: at d = 128 warpgroup w takes dims
//                                                64w..64w+63 over all 128 keys; at d = 64 it
//                                                takes all 64 dims over its own 64 keys
//        dQ_part → 16 KiB of shared memory (f32) → one cp.reduce.async.bulk .add.f32 into the
//        global f32 accumulator (FA3's dQaccum; its tile layout is the fragment order below)
//      dK (× τ) and dV are written once at the end, bf16: deterministic, and the group's query
//      heads are summed into their KV head in f32 on the way.
// 3. flash_bwd_hopper_convert_dq: dq = bf16(τ · accumulator), back into [batch, queries, heads,
//    d]. dq's last bits depend on the order of the f32 reductions (as with the sm80 kernel).
//
// dQ accumulator layout, [batch, heads, qpad/64] tiles of 64 × d f32, each d/64 chunks of
// 64 × 64 = 16 KiB in fragment order: float2 slot (p, thread) at 8·(128·p + thread), p = 2j + hh
// (j = 0..7, hh = 0..1), holding row 16·(thread/32) + (thread%32)/4 + 8·hh, columns
// 64·chunk + 8j + 2·(thread%4) + {0, 1} (the wgmma accumulator layout, kernels/gemm_wgmma.cu's
// header) — conflict-free 8-byte shared stores, and the bulk reduce needs no layout at all.
//
// Shared memory layouts (all 128-byte swizzle, every box 1024-byte aligned; see
// kernels/gemm_wgmma.cu's header for the descriptor formats): K and V [key half][dim chunk]
// boxes of 64 keys × 64 dims; a Q or dO stage [dim chunk] boxes of 64 queries × 64 dims; dSᵀ
// [128 keys][64 queries] (two buffers, alternate query blocks). As wgmma operands: K-major
// (rows of 64 dims): start + 32 B per k16 step, + one box per 64 dims, SBO 1024; N-major for dO
// and Q as B of Pᵀ·dO, dSᵀ·Q (N = dims, K = queries): LBO = one box (next 64 dims), SBO 1024,
// + 2048 B per k16 step; dS as M-major A (M = queries, K = keys) and K as N-major B of dS·K:
// + 2048 B per 16 keys, + 2 boxes (d = 128) or one (d = 64) per key half.
//
// Synchronisation per query block (named barriers: 1 = both warpgroups, 2 + w = warpgroup w):
// the issuing thread of each warpgroup waits for its previous bulk reduce to have read its
// staging buffer; dSᵀ stores, fence.proxy.async, barrier (both warpgroups at d = 128: each
// reads the other's dSᵀ rows; its own at d = 64); dK and dQ wgmmas; wait; the stage goes back
// to thread 0's loads (8 warp arrivals); dQ staging stores, fence.proxy.async, warpgroup barrier,
// one thread issues the bulk reduce. Two dSᵀ buffers make the one barrier enough: buffer
// (n+1)%2 was last read by the other warpgroup in block n−1, which it finished before it
// reached block n's barrier.
//
// Edges: TMA zero-fills rows past `queries` and `keys` (a partly outside box still delivers
// all its bytes). A key half wholly past `keys` is not loaded; its warpgroup zeroes those K and
// V boxes itself (the other warpgroup's dQ product reads them). The padded L₂ and D rows are 0
// and masked. Rows of dK, dV past `keys` and of dq past `queries` are never stored.
#include "common.cuh"

#include <cuda.h>

#include "hopper.cuh"

namespace attn_bwd {

constexpr int BN = 128;  // keys per CTA (two consumer warpgroups of 64)
constexpr int BM = 64;   // queries per pipeline stage
constexpr int STAGES = 3;
constexpr int THREADS = 256;  // two warpgroups, 255 registers each (see the header)
constexpr uint32_t BOX_BYTES = 64 * 64 * 2;    // 64 rows × 64 bf16 = one 128-byte swizzle box
constexpr uint32_t DQ_PART_BYTES = 64 * 64 * 4;  // one warpgroup's dQ part, f32
constexpr uint32_t ROW_BYTES = BM * 4;           // 64 f32 of L₂ or D
constexpr uint32_t ALIGN = 1024;

template <int D>
struct Smem {
  static constexpr int CHUNKS = D / 64;
  static constexpr uint32_t KV = BN * D * 2;  // K or V
  static constexpr uint32_t TILE = BM * D * 2;  // one Q or dO tile
  static constexpr uint32_t K_AT = 0;
  static constexpr uint32_t V_AT = KV;
  static constexpr uint32_t STAGE_AT = 2 * KV;  // stage s: Q at +2·TILE·s, dO at + TILE
  static constexpr uint32_t DS = BN * BM * 2;
  static constexpr uint32_t DS_AT = STAGE_AT + STAGES * 2 * TILE;  // two buffers
  static constexpr uint32_t DQ_AT = DS_AT + 2 * DS;                // one per warpgroup
  static constexpr uint32_t ROWS_AT = DQ_AT + 2 * DQ_PART_BYTES;   // stage s: L₂ then D
  static constexpr uint32_t BYTES = ROWS_AT + STAGES * 2 * ROW_BYTES + ALIGN;
};
static_assert(Smem<128>::BYTES == 231936, "shared bytes at d 128 (attention_hopper_bwd.rs)");
static_assert(Smem<64>::BYTES == 150016, "shared bytes at d 64 (attention_hopper_bwd.rs)");
static_assert(Smem<128>::KV == 4 * BOX_BYTES && Smem<128>::TILE == 2 * BOX_BYTES,
              "K, V: 2 key halves × 2 dim chunks of boxes; a Q or dO tile: 2 dim chunks");
static_assert(Smem<128>::BYTES + 64 <= 232448, "over the 227 KiB a block may have (+ the barriers)");

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

using namespace hopper;

__device__ __forceinline__ void named_barrier(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ float2 unpack_bf16(uint32_t v) {
  return make_float2(__uint_as_float(v << 16), __uint_as_float(v & 0xFFFF0000u));
}
__device__ __forceinline__ void st_shared_u32(uint32_t addr, uint32_t v) {
  asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(addr), "r"(v) : "memory");
}
__device__ __forceinline__ void st_shared_f32x2(uint32_t addr, float a, float b) {
  asm volatile("st.shared.v2.f32 [%0], {%1, %2};\n" ::"r"(addr), "f"(a), "f"(b) : "memory");
}

// K-major descriptor (LBO unused, SBO = 8 rows of 128 B) and M/N-major one (LBO = the next 64
// elements of M/N, one box on).
__device__ __forceinline__ uint64_t desc_k(uint32_t addr) { return make_desc(addr, 16, 1024); }
__device__ __forceinline__ uint64_t desc_mn(uint32_t addr) {
  return make_desc(addr, BOX_BYTES, 1024);
}

// The value, hidden from the optimiser: descriptors derived from it are recomputed (one add)
// where they are used instead of being hoisted out of the loop, where the 16 + 16 + 8 of them
// would hold 80 registers for the whole loop.
__device__ __forceinline__ uint64_t opaque(uint64_t x) {
  asm volatile("" : "+l"(x));
  return x;
}

// Writes one warpgroup's 64 rows (keys key0 + 16·warp + lane/4 + {0, 8}) of dK or dV, scaled.
template <int D>
__device__ __forceinline__ void store_rows(const float (&acc)[D / 2], bf16* __restrict__ out,
                                           int key0, int keys, int kv_heads, int kvh, int b,
                                           float scale, int warp, int lane) {
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    const int key = key0 + 16 * warp + lane / 4 + 8 * hh;
    if (key >= keys) continue;
    bf16* row = out + ((static_cast<size_t>(b) * keys + key) * kv_heads + kvh) * D;
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      const int col = 8 * j + 2 * (lane % 4);
      *reinterpret_cast<uint32_t*>(row + col) =
          pack_bf16(acc[4 * j + 2 * hh] * scale, acc[4 * j + 2 * hh + 1] * scale);
    }
  }
}

template <int D>
__device__ __forceinline__ void backward_block(const CUtensorMap* map_q, const CUtensorMap* map_k,
                                               const CUtensorMap* map_v,
                                               const CUtensorMap* map_do,
                                               const float* __restrict__ lse2,
                                               const float* __restrict__ delta,
                                               float* __restrict__ dq_acc, bf16* __restrict__ dk,
                                               bf16* __restrict__ dv, int queries, int keys,
                                               int heads, int kv_heads, float scale,
                                               float scale_log2) {
  using L = Smem<D>;
  constexpr int CH = L::CHUNKS;
  extern __shared__ uint8_t attn_bwd_smem[];
  // full[STAGES], empty[STAGES], kv
  __shared__ __align__(8) uint64_t bars[2 * STAGES + 1];

  const uint32_t base = (smem_u32(attn_bwd_smem) + (ALIGN - 1)) & ~(ALIGN - 1);
  const uint32_t full0 = smem_u32(&bars[0]), empty0 = smem_u32(&bars[STAGES]);
  const uint32_t kv_bar = smem_u32(&bars[2 * STAGES]);
  const int warpgroup = threadIdx.x / 128;

  // Grid (kv_heads·batch, key blocks): blocks start in x-fastest order, so every (KV head,
  // sequence) of key block 0 (the heaviest: every query sees it) goes first, then block 1, ...
  const int kb = blockIdx.y;
  const int kvh = blockIdx.x % kv_heads;
  const int b = blockIdx.x / kv_heads;
  const int key0 = kb * BN;
  const int group = heads / kv_heads;
  const int offset = keys - queries;  // query i sits at position offset + i
  const int q_blocks = (queries + BM - 1) / BM;
  const int qpad = q_blocks * BM;
  // First query block with a query that sees key0: 64·qb + 63 + offset ≥ key0.
  const int first = key0 - offset > 0 ? (key0 - offset) / BM : 0;
  const int count = first < q_blocks ? (q_blocks - first) * group : 0;

  if (threadIdx.x == 0) {
#pragma unroll
    for (int s = 0; s < STAGES; ++s) {
      mbar_init(full0 + 8 * s, 1);
      mbar_init(empty0 + 8 * s, 8);  // lane 0 of each consumer warp
    }
    mbar_init(kv_bar, 1);
    mbar_fence_init();
  }
  __syncthreads();

  // ---- loads: thread 0 (see the header: no producer warp) ----
  // Q, dO, L₂, D of iteration n (query head kvh·group + n / blocks, query block first +
  // n % blocks) into the next stage of the ring, once the consumers released it.
  const int blocks = q_blocks - first;
  int load_stage = 0;
  uint32_t load_phase = 0;
  auto load_iteration = [&](int n) {
    const int h = kvh * group + n / blocks;
    const int qb = first + n % blocks;
    mbar_wait(empty0 + 8 * load_stage, load_phase ^ 1);
    const uint32_t full = full0 + 8 * load_stage;
    mbar_arrive_expect_tx(full, 2 * L::TILE + 2 * ROW_BYTES);
    const uint32_t qs = base + L::STAGE_AT + load_stage * 2 * L::TILE;
#pragma unroll
    for (int c = 0; c < CH; ++c) {
      tma_load_4d(qs + c * BOX_BYTES, map_q, full, 64 * c, h, qb * BM, b);
      tma_load_4d(qs + L::TILE + c * BOX_BYTES, map_do, full, 64 * c, h, qb * BM, b);
    }
    const size_t row = (static_cast<size_t>(b) * heads + h) * qpad + qb * BM;
    const uint32_t rows = base + L::ROWS_AT + load_stage * 2 * ROW_BYTES;
    bulk_load(rows, lse2 + row, ROW_BYTES, full);
    bulk_load(rows + ROW_BYTES, delta + row, ROW_BYTES, full);
    if (++load_stage == STAGES) {
      load_stage = 0;
      load_phase ^= 1;
    }
  };
  if (threadIdx.x == 0) {
    const int halves = key0 + 64 < keys ? 2 : 1;
    mbar_arrive_expect_tx(kv_bar, 2 * halves * CH * BOX_BYTES);
    for (int kh = 0; kh < halves; ++kh) {
#pragma unroll
      for (int c = 0; c < CH; ++c) {
        const uint32_t at = (kh * CH + c) * BOX_BYTES;
        tma_load_4d(base + L::K_AT + at, map_k, kv_bar, 64 * c, kvh, key0 + 64 * kh, b);
        tma_load_4d(base + L::V_AT + at, map_v, kv_bar, 64 * c, kvh, key0 + 64 * kh, b);
      }
    }
    for (int n = 0; n < STAGES - 1 && n < count; ++n) load_iteration(n);
  }

  // ---- compute: warpgroup w ----
  const int w = warpgroup;  // keys key0 + 64w .. + 63
  const int ct = threadIdx.x % 128, warp = ct / 32, lane = ct % 32;
  const int g = lane / 4, t = lane % 4;
  const bool issuer = ct == 0;  // this warpgroup's bulk reductions

  float dk_acc[D / 2], dv_acc[D / 2];
#pragma unroll
  for (int i = 0; i < D / 2; ++i) {
    dk_acc[i] = 0.0f;
    dv_acc[i] = 0.0f;
  }

  mbar_wait(kv_bar, 0);
  if (key0 + 64 * w >= keys) {
    // This half was not loaded: zeros, not stale bytes, for the other warpgroup's dS·K.
    for (int c = 0; c < CH; ++c) {
      const uint32_t at = (w * CH + c) * BOX_BYTES;
      for (uint32_t x = 16 * ct; x < BOX_BYTES; x += 16 * 128) {
        asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};\n" ::"r"(base + L::K_AT + at + x),
                     "r"(0)
                     : "memory");
        asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};\n" ::"r"(base + L::V_AT + at + x),
                     "r"(0)
                     : "memory");
      }
    }
    fence_proxy_async_shared();
    named_barrier(2 + w, 128);
  }

  // This warpgroup's K and V rows as wgmma A (K-major): box (w, c), + 32 B per k16 step.
  const uint32_t k_rows = base + L::K_AT + w * CH * BOX_BYTES;
  const uint32_t v_rows = base + L::V_AT + w * CH * BOX_BYTES;
  const uint32_t staging = base + L::DQ_AT + w * DQ_PART_BYTES;
  // The key rows this thread's accumulators hold: key0 + 64w + 16·warp + g + 8·hh.
  const int my_key = key0 + 64 * w + 16 * warp + g;

  int stage = 0;
  uint32_t phase = 0;
  for (int it = 0; it < count; ++it) {
    const int h = kvh * group + it / (q_blocks - first);
    const int qb = first + it % (q_blocks - first);
    const int q0 = qb * BM;
    // Iteration it + STAGES − 1 into the stage iteration it − 1 used (both warpgroups release
    // it at the end of that iteration): STAGES − 1 iterations of time for the loads.
    if (threadIdx.x == 0 && it + STAGES - 1 < count) load_iteration(it + STAGES - 1);
    mbar_wait(full0 + 8 * stage, phase);
    const uint32_t qs = base + L::STAGE_AT + stage * 2 * L::TILE;
    const uint32_t dos = qs + L::TILE;
    const uint32_t rows = base + L::ROWS_AT + stage * 2 * ROW_BYTES;

    // Sᵀ = K_w·Qᵀ and dPᵀ = V_w·dOᵀ (K = d), two groups.
    // Descriptor start addresses count 16-byte units: + (bytes >> 4), never carrying out of
    // the 14-bit field (shared addresses < 256 KiB).
    float s[32], dp[32];
    const uint64_t k_desc = opaque(desc_k(k_rows)), q_desc = desc_k(qs);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const uint32_t at = ((kk / 4) * BOX_BYTES + (kk % 4) * 32) >> 4;
      wgmma_ss<0, 0>(s, k_desc + at, q_desc + at, kk > 0);
    }
    wgmma_commit();
    const uint64_t v_desc = opaque(desc_k(v_rows)), do_desc = desc_k(dos);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const uint32_t at = ((kk / 4) * BOX_BYTES + (kk % 4) * 32) >> 4;
      wgmma_ss<0, 0>(dp, v_desc + at, do_desc + at, kk > 0);
    }
    wgmma_commit();
    wgmma_wait<1>();
    fence_accumulators(s);

    // Pᵀ = exp2(Sᵀ·τlog₂e − L₂), zero where the key is after the query or the query is past
    // the end, packed to bf16 at once as wgmma A fragments (pair i = 2j + hh holds accumulators
    // 4j + 2hh, +1: two n8 tiles make one k16 step's four registers). The columns (queries)
    // this thread holds: q0 + 8j + 2t + {0, 1}. Only the bf16 Pᵀ stays live (not the f32 Sᵀ)
    // while dPᵀ lands: 32 registers fewer at the kernel's peak (dK, dV, dPᵀ, Pᵀ).
    const float* lse_s =
        reinterpret_cast<const float*>(attn_bwd_smem + (rows - smem_u32(attn_bwd_smem)));
    const float* delta_s = lse_s + BM;
    const bool masked = q0 + offset < key0 + BN - 1 || q0 + BM > queries;
    uint32_t pa[16];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float2 l2 = *reinterpret_cast<const float2*>(lse_s + 8 * j + 2 * t);
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        float p0 = exp2_approx(fmaf(s[4 * j + 2 * hh], scale_log2, -l2.x));
        float p1 = exp2_approx(fmaf(s[4 * j + 2 * hh + 1], scale_log2, -l2.y));
        if (masked) {
          const int qi = q0 + 8 * j + 2 * t, key = my_key + 8 * hh;
          if (!(qi < queries && key <= qi + offset)) p0 = 0.0f;
          if (!(qi + 1 < queries && key <= qi + 1 + offset)) p1 = 0.0f;
        }
        pa[2 * j + hh] = pack_bf16(p0, p1);
      }
    }
    wgmma_wait<0>();
    fence_accumulators(dp);

    // dSᵀ = Pᵀ ∘ (dPᵀ − D) from the bf16 Pᵀ (the one dV is made of), packed as A fragments
    // for dK and stored to shared memory for dS·K.
    const uint32_t ds_buf = base + L::DS_AT + (it & 1) * L::DS;
    uint32_t da[16];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float2 dd = *reinterpret_cast<const float2*>(delta_s + 8 * j + 2 * t);
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const float2 p = unpack_bf16(pa[2 * j + hh]);
        da[2 * j + hh] =
            pack_bf16(p.x * (dp[4 * j + 2 * hh] - dd.x), p.y * (dp[4 * j + 2 * hh + 1] - dd.y));
        // Row r = 64w + 16·warp + g + 8hh of dSᵀ, 16-byte chunk j swizzled by r % 8 = g.
        const uint32_t r = 64 * w + 16 * warp + g + 8 * hh;
        st_shared_u32(ds_buf + r * 128 + ((j ^ g) * 16) + 4 * t, da[2 * j + hh]);
      }
    }
    fence_proxy_async_shared();

    // dV_w += Pᵀ·dO and dK_w += dSᵀ·Q (K = the 64 queries), A from registers.
    const uint64_t do_mn = desc_mn(dos), q_mn = desc_mn(qs);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) wgmma_rs(dv_acc, &pa[4 * kk], do_mn + kk * (2048 >> 4));
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) wgmma_rs(dk_acc, &da[4 * kk], q_mn + kk * (2048 >> 4));
    wgmma_commit();

    if (issuer) tma_store_wait_read<0>();  // the previous bulk reduce has read the staging
    if constexpr (D == 128) {
      named_barrier(1, 256);  // both halves of dSᵀ are in shared memory
    } else {
      named_barrier(2 + w, 128);
    }

    // This warpgroup's part of dQ = dS·K.
    // At d = 128: keys 0..127 (both halves of dSᵀ), dims 64w..64w+63 (box (key half, w) of
    // K); at d = 64: keys 64w..64w+63 (this warpgroup's half), all 64 dims (box (w, 0)).
    float dq[32];
    constexpr int DQ_STEPS = D == 128 ? 8 : 4;
    const uint32_t first_row = D == 128 ? 0 : 64 * w;
    const uint64_t ds_desc = desc_mn(ds_buf + first_row * 128);
    const uint64_t kt_desc =
        opaque(desc_mn(base + L::K_AT + (D == 128 ? w : w * CH) * BOX_BYTES));
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < DQ_STEPS; ++kk) {
      // k16 step kk: 16 rows (keys) on = 2048 B in dSᵀ; in K, 2048 B inside a key half and
      // CH boxes on from one half to the next.
      const uint32_t k_at = (((kk / 4) * CH * BOX_BYTES) + (kk % 4) * 2048) >> 4;
      wgmma_ss<1, 1>(dq, ds_desc + kk * (2048 >> 4), kt_desc + k_at, kk > 0);
    }
    wgmma_commit();
    wgmma_wait<0>();
    fence_accumulators(dk_acc);
    fence_accumulators(dv_acc);
    fence_accumulators(dq);
    if (lane == 0) mbar_arrive(empty0 + 8 * stage);  // Q, dO, L₂, D of this stage are read

    // dQ part → staging (fragment order) → one bulk reduce into the accumulator tile.
#pragma unroll
    for (int p = 0; p < 16; ++p)
      st_shared_f32x2(staging + 8 * (128 * p + ct), dq[2 * p], dq[2 * p + 1]);
    fence_proxy_async_shared();
    named_barrier(2 + w, 128);
    if (issuer) {
      float* tile = dq_acc + ((static_cast<size_t>(b) * heads + h) * q_blocks + qb) * BM * D;
      bulk_reduce_add_f32(tile + (D == 128 ? w * 64 * 64 : 0), staging, DQ_PART_BYTES);
      tma_store_commit();
    }
    if (++stage == STAGES) {
      stage = 0;
      phase ^= 1;
    }
  }
  if (issuer) bulk_wait_all();

  store_rows<D>(dk_acc, dk, key0 + 64 * w, keys, kv_heads, kvh, b, scale, warp, lane);
  store_rows<D>(dv_acc, dv, key0 + 64 * w, keys, kv_heads, kvh, b, 1.0f, warp, lane);
}

#endif  // __CUDA_ARCH_FEAT_SM90_ALL

}  // namespace attn_bwd

// Launch (attention_hopper_bwd.rs): block 384, grid (kv_heads·batch, ⌈keys/128⌉), dynamic
// shared memory attn_bwd::Smem<D>::BYTES. lse2 and delta are the preprocess's padded buffers,
// dq_acc the zeroed accumulator; scale = 1/√d, scale_log2 = log₂e/√d. Elsewhere than sm_90a
// the body traps (the host launches it only on compute capability 9.0).
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define ATTN_BWD_BODY(D)                                                                       \
  attn_bwd::backward_block<D>(&map_q, &map_k, &map_v, &map_do, lse2, delta, dq_acc, dk, dv,   \
                              queries, keys, heads, kv_heads, scale, scale_log2)
#else
#define ATTN_BWD_BODY(D) __trap()
#endif

#define ATTN_BWD_KERNEL(NAME, D)                                                               \
  extern "C" __global__ void __launch_bounds__(attn_bwd::THREADS, 1)                          \
      NAME(const __grid_constant__ CUtensorMap map_q, const __grid_constant__ CUtensorMap map_k, \
           const __grid_constant__ CUtensorMap map_v,                                          \
           const __grid_constant__ CUtensorMap map_do, const float* __restrict__ lse2,         \
           const float* __restrict__ delta, float* __restrict__ dq_acc, bf16* __restrict__ dk,  \
           bf16* __restrict__ dv, int queries, int keys, int heads, int kv_heads, float scale,  \
           float scale_log2) {                                                                 \
    ATTN_BWD_BODY(D);                                                                          \
  }

// HOT: flash_bwd_hopper_hd64 flash_bwd_hopper_hd128
ATTN_BWD_KERNEL(flash_bwd_hopper_hd64, 64)
ATTN_BWD_KERNEL(flash_bwd_hopper_hd128, 128)

// D[b, h, i] = Σ_d dO[b, i, h, d]·O[b, i, h, d] and L₂[b, h, i] = lse[b, h, i]·log₂e, into the
// buffers padded to qpad rows per (b, h) (the host zeroed them); one warp per row (b, i, h) of
// `rows` = batch·queries·heads, grid-stride. hd even.
// HOT: flash_bwd_hopper_preprocess
extern "C" __global__ void __launch_bounds__(ROW_THREADS)
    flash_bwd_hopper_preprocess(const bf16* __restrict__ out, const bf16* __restrict__ dout,
                               const float* __restrict__ lse, float* __restrict__ delta,
                               float* __restrict__ lse2, long long rows, int queries, int heads,
                               int hd, int qpad) {
  const int lane = threadIdx.x & 31;
  const long long warps = (long long)gridDim.x * (ROW_THREADS / 32);
  for (long long row = (long long)blockIdx.x * (ROW_THREADS / 32) + (threadIdx.x >> 5);
       row < rows; row += warps) {
    const bf16* o = out + row * hd;
    const bf16* d = dout + row * hd;
    float sum = 0.0f;
    for (int c = 2 * lane; c < hd; c += 64) {
      const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(o + c));
      const float2 e = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(d + c));
      sum = fmaf(a.x, e.x, fmaf(a.y, e.y, sum));
    }
    sum = warp_sum(sum);
    if (lane == 0) {
      const long long h = row % heads, bi = row / heads;
      const long long i = bi % queries, b = bi / queries;
      delta[(b * heads + h) * qpad + i] = sum;
      lse2[(b * heads + h) * qpad + i] = lse[(b * heads + h) * queries + i] * 1.4426950408889634f;
    }
  }
}

// dq = bf16(scale · accumulator): one thread per float2 slot of the accumulator (`tiles` =
// batch·heads·qpad/64 tiles of 64 × hd, layout in the header), rows past `queries` skipped.
// HOT: flash_bwd_hopper_convert_dq
extern "C" __global__ void __launch_bounds__(ROW_THREADS)
    flash_bwd_hopper_convert_dq(const float* __restrict__ acc, bf16* __restrict__ dq,
                               long long tiles, int queries, int heads, int hd, float scale) {
  const long long per_tile = 32LL * hd;  // float2 slots per 64 × hd tile
  const long long slots = tiles * per_tile;
  const int q_blocks = (queries + 63) / 64;
  const long long stride = (long long)gridDim.x * ROW_THREADS;
  for (long long x = (long long)blockIdx.x * ROW_THREADS + threadIdx.x; x < slots; x += stride) {
    const long long tile = x / per_tile;
    const int within = static_cast<int>(x - tile * per_tile);
    const int chunk = within / 2048, slot = within % 2048;
    const int p = slot / 128, thread = slot % 128;
    const int row = 16 * (thread / 32) + (thread % 32) / 4 + 8 * (p % 2);
    const int col = 64 * chunk + 8 * (p / 2) + 2 * (thread % 4);
    const int qb = static_cast<int>(tile % q_blocks);
    const long long bh = tile / q_blocks;
    const int i = qb * 64 + row;
    if (i >= queries) continue;
    const long long h = bh % heads, b = bh / heads;
    const float2 v = reinterpret_cast<const float2*>(acc)[x];
    const __nv_bfloat162 out = __floats2bfloat162_rn(v.x * scale, v.y * scale);
    *reinterpret_cast<__nv_bfloat162*>(dq + ((b * queries + i) * heads + h) * hd + col) = out;
  }
}
