// build: sm_90a
//
// bf16 GEMM for Hopper (sm_90a only): wgmma.mma_async tensor cores fed by the tensor memory
// accelerator (TMA), fp32 accumulation, strided-batched, the same three layouts and epilogue as
// kernels/gemm.cu (row-major everywhere):
//   NT  C[m,n] = Σ_k A[m,k]·B[n,k]   (A [M,K], B [N,K]: both K-major; Y = X·Wᵀ)
//   NN  C[m,n] = Σ_k A[m,k]·B[k,n]   (A [M,K] K-major, B [K,N] N-major; dX = dY·W)
//   TN  C[m,n] = Σ_k A[k,m]·B[k,n]   (A [K,M] M-major, B [K,N] N-major; dW = dYᵀ·X)
// Batch b reads A + b·M·K, B + b·K·N (the tensor maps' third dimension) and writes C + b·M·N.
// With `accumulate`, C ← C + A·B (read, added in f32, rounded once); otherwise C ← A·B. Output
// f32 or bf16 (round to nearest even). Host side, fallbacks and the env switch:
// src/backend/cuda/gemm_wgmma.rs. Tests: tests/cuda_kernels/gemm.rs (f64 on the CPU).
//
// Scheme (the standard Hopper "warp-specialised persistent cooperative" GEMM, as CUTLASS's
// sm90 KernelTmaWarpSpecializedCooperative):
// - 384 threads = 3 warpgroups. Warpgroup 0 is the producer: after `setmaxnreg.dec` to 40
//   registers one thread issues every TMA copy. Warpgroups 1 and 2 are consumers: after
//   `setmaxnreg.inc` to 232 registers each owns 64 rows of the 128×BN block tile and issues
//   wgmma.m64nBNk16 (A and B both from shared memory), BN/2 f32 accumulators per thread.
//   Register pool: 128·40 + 256·232 = 64512 ≤ 65536, and the launch cap of 384 threads × 1
//   block is 65536/384 → 168 registers, so the producer frees 128·128 = 16384 registers and the
//   consumers take 256·64 = 16384 (setmaxnreg needs the cap at entry: __launch_bounds__(384, 1)).
// - Two tiles, one kernel each (the host picks per product, gemm_wgmma.rs `wgmma_tile_for`):
//   BN = 256 (the default: most FLOPs per operand byte) and BN = 128 (`_n128`: twice the tiles,
//   for shapes whose last wave of 128×256 tiles would leave many SMs idle, e.g. m 2048 with n
//   11008: 688 tiles = 5.2 waves on 132 SMs, against 1376 half-size tiles = 10.4).
// - K advances BK = 64 (one 128-byte swizzle row of bf16) at a time through a ring of 192 KiB:
//   4 stages of 16 KiB of A + 32 KiB of B (BN 256) or 6 of 16 + 16 KiB (BN 128), every stage
//   1024-byte aligned. Per stage a `full` mbarrier (1 arrival: the producer's
//   arrive.expect_tx, plus the TMA's transaction bytes) and an `empty` mbarrier (8 arrivals:
//   lane 0 of every consumer warp once its wgmmas reading the stage are complete).
// - Consumer loop per k-block: wait full → wgmma.fence → 4 × wgmma (k16 steps) →
//   commit_group → wait_group 1 (the previous k-block's group is then complete) → arrive on the
//   previous stage's empty barrier. One wgmma group stays in flight across the barrier wait.
// - Persistent grid: min(tiles, SMs) blocks walk tile t = blockIdx.x + i·gridDim.x; the tile
//   order is grouped (GROUP_M = 16 tile rows walk the N tiles together, batch outermost), so the
//   ~132 tiles resident at once share A row-panels and B column-panels in L2. The producer runs
//   ahead into the next tile while the consumers store the last one.
// - Edges: TMA zero-fills the parts of a box outside the tensor (PTX ISA 9.0 §5.5.3.3 "Out of
//   Boundary Access", zero fill mode = CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE), so M, N, K tails
//   add zeros; an MN-major 64-wide sub-box that lies wholly past M or N is not issued at all
//   (its shared memory keeps stale data, which only reaches rows/columns of C that the
//   epilogue never stores). The epilogue bounds-checks every store. The host requires TMA's
//   16-byte global strides (K-major: K % 8 == 0; MN-major: M or N % 8 == 0) and 16-byte
//   aligned bases, else it takes kernels/gemm.cu.
// - Epilogue, TMA (the default where C's rows are 16-byte multiples and C is 16-byte aligned):
//   each consumer warpgroup writes its 64×BN accumulators box by box (64 rows × 128 bytes: 64
//   bf16 or 32 f32 columns) into one of its two 8 KiB shared buffers, in the 128-byte swizzle
//   (conflict-free: the 8 rows of a warp's store land on 8 different 16-byte chunks), fences
//   the writes to the async proxy, and its first thread issues a TMA store of the box, or with
//   `accumulate` a TMA reduce-add (f32: C + A·B added in L2, one rounding, as the register path
//   does). TMA clips the boxes at M and N. The warpgroup goes on to the next tile's main loop
//   while the stores drain (the first H100 run cost ~8-13 µs per tile in the register epilogue,
//   during which the tensor cores idled); the issuing thread waits only before reusing a buffer
//   (wait_group.read 1) and, all stores complete, before the block exits.
// - Epilogue, registers (odd N, unaligned C, and bf16 C += A·B, which must round C + A·B once):
//   straight from the accumulator fragments to global memory, pairs (c, c+1) as 8-byte (f32)
//   or 4-byte (bf16) stores when N is even, scalar otherwise; with `accumulate` the old values
//   are loaded 8 pairs at a time before the adds, to keep loads in flight.
// - 2-CTA clusters (`_mc` kernels; the host picks them per product, gemm_wgmma/plan.rs): a
//   cluster of 2 blocks (x) takes a pair of tiles one above the other, (m0, n0) and
//   (m0 + 128, n0), which read the same B. Each block loads its own A and one half of B
//   (N-wise) with `cp.async.bulk.tensor ... .multicast::cluster`, CTA mask 0b11, so both halves
//   land in both blocks' rings at the same offsets and signal both blocks' `full` barriers:
//   L2 → SM traffic per pair falls from 2·(A + B) to 2·A + B (48 → 32 KiB per block and
//   k-block at 128 × 256). Each `full` barrier expects its block's A bytes plus all of B's
//   (half from each producer); each `empty` barrier counts 16 arrivals, the 8 consumer warps
//   of both blocks (a remote arrival through mapa), because either producer writes into both
//   rings. Both blocks walk the same pairs and k-blocks in the same order, so the barriers'
//   phases stay in step. A cluster-wide barrier follows the barrier inits (nothing reaches a
//   peer's barrier before it exists) and precedes the exit (no block leaves while its peer may
//   still arrive on its barriers). When the tile rows are odd, the last pair row has no second
//   tile: rank 1 then loads no A, still multicasts its half of B and runs the barrier protocol,
//   and stores nothing. Same k order and instructions per tile as the 1-block kernels, so C
//   is bit-identical to theirs.
//
// PTX ISA references (PTX ISA 9.0 numbering; sections move between versions, names do not):
// - §9.7.15.5.1.1.1 "Matrix Fragments for wgmma.mma_async.m64nNk16", Figure "WGMMA .m64nNk16
//   register fragment layout for accumulator matrix D": warp w of the warpgroup holds rows
//   16w..16w+15; lane l holds d[4j+0], d[4j+1] at row 16w + l/4, columns 8j + 2(l%4) + {0,1},
//   and d[4j+2], d[4j+3] at row 16w + l/4 + 8, same columns, for j = 0 .. N/8−1.
//   (CUTLASS writes the same as CLayout_64xN = ((4,8,4),(2,2,N/8)):((128,1,16),(64,8,512)).)
// - §9.7.15.5.1.2 "Shared Memory Matrix Layout": imm-trans = 0 → K-major, 1 → M/N-major
//   (transpose is supported for .bf16 with descriptors, §9.7.15.5.2 "wgmma.mma_async").
//   Canonical layouts in units of T = 8 bf16 (16 bytes), 128-byte swizzle = Swizzle<3,4,3>:
//     K-major:  ((8,m),(T,2k)):((8T,SBO),(1,T))   → rows of 128 B, SBO = 8 rows = 1024 B,
//               LBO unused ("assumed 1"), §9.7.15.5.1.2.1.1;
//     MN-major: ((T,8,m),(8,k)):((1,T,LBO),(8T,SBO)) → 64 M/N elements per 128-B row, LBO =
//               offset between 64-element M/N chunks, SBO = offset between groups of 8 K rows.
//   TMA with CU_TENSOR_MAP_SWIZZLE_128B and a 128-byte inner box writes exactly this pattern
//   (16-byte chunk index XOR row%8 inside each 1024-byte block; §5.5.6 "Swizzling Modes").
// - §9.7.15.5.1.2.2 "Matrix Descriptor Format": bits 0–13 (addr & 0x3FFFF) >> 4, bits 16–29
//   LBO >> 4, bits 32–45 SBO >> 4, bits 49–51 base offset (0: every swizzle pattern starts on
//   a 1024-byte boundary here), bits 62–63 swizzle mode (1 = 128-byte).
//   A k16 step inside a stage: K-major +32 B on the start address (inside the 128-B swizzled
//   row, as CUTLASS's and DeepGEMM's descriptor iterators do), MN-major +16 rows = +2048 B.
// - §9.7.15.5.2 "wgmma.mma_async": `wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 d,
//   a-desc, b-desc, scale-d, imm-scale-a, imm-scale-b, imm-trans-a, imm-trans-b`; scale-d is a
//   predicate: false → D = A·B (the first k16 step of a tile), true → D = A·B + D.
// - §9.7.15.7.1–3 wgmma.fence / commit_group / wait_group: a fence before the first wgmma and
//   after any other access to the accumulators; wait_group N before reading them.
// - §9.7.13.15 mbarrier (init, arrive, arrive.expect_tx, try_wait.parity): try_wait.parity P
//   succeeds once the phase of parity P has completed; on a fresh barrier (phase 0 in progress)
//   parity 1 names the preceding phase and succeeds at once, so the producer waits on `empty`
//   with parity phase^1 and its first STAGES waits pass.
// - §9.7.9.25.5.2 "cp.async.bulk.tensor": `.3d.shared::cluster.global.tile.mbarrier::
//   complete_tx::bytes [dst], [tensorMap, {c0, c1, c2}], [mbar]`, c0 innermost, in elements.
// - Clusters (hopper.cuh's wrappers, end of the file): §9.7.9.25.5.2 `.multicast::cluster`
//   with a 16-bit ctaMask; §9.7.13.15.13 mbarrier.arrive `.release.cluster.shared::cluster`
//   on an address from §9.7.9.22 mapa; §9.7.13.4 barrier.cluster.arrive/wait; special
//   registers %cluster_ctarank, %clusterid, %nclusterid (§10).
// - §9.7.19.5 "setmaxnreg" (sm_90a): `setmaxnreg.{inc,dec}.sync.aligned.u32 N`, executed by
//   every warp of the warpgroup.
#include "common.cuh"

#include <cuda.h>

#include "hopper.cuh"

namespace wgmma_gemm {

constexpr int BM = 128, BK = 64, CONSUMERS = 2;
constexpr int THREADS = 128 * (CONSUMERS + 1);
[[maybe_unused]] constexpr int GROUP_M = 16;  // tile rows per group of the tile order (sm_90a)
constexpr uint32_t A_BYTES = BM * BK * 2;        // 16 KiB
constexpr uint32_t BOX_BYTES = 64 * BK * 2;      // one 64 (M/N) × 64 (K) box: 8 KiB
constexpr uint32_t SWIZZLE_ATOM = 1024;          // 8 rows × 128 B
constexpr uint32_t RING_BYTES = 196608;          // 4 stages of 128×256 tiles or 6 of 128×128
// Epilogue staging (TMA epilogue): per consumer warpgroup 2 buffers of one C box, 64 rows × 128
// bytes (64 bf16 or 32 f32 columns) in the 128-byte swizzle, so that one is written while the
// TMA store of the other reads it.
constexpr int EPI_BUFFERS = 2;
constexpr uint32_t EPI_BOX_BYTES = 64 * 128;     // 8 KiB
constexpr uint32_t EPI_BYTES = CONSUMERS * EPI_BUFFERS * EPI_BOX_BYTES;
// Dynamic shared memory: ring, epilogue buffers, and slack to align them to 1024 bytes
// (gemm_wgmma.rs); with the barriers it stays under the 227 KiB a block may have.
constexpr uint32_t SMEM_BYTES = RING_BYTES + EPI_BYTES + SWIZZLE_ATOM;
constexpr int MAX_STAGES = 6;
constexpr int PRODUCER_REGS = 40, CONSUMER_REGS = 232;
static_assert(BM == 64 * CONSUMERS, "one consumer warpgroup per 64 rows (wgmma M = 64)");
static_assert(SMEM_BYTES == 230400, "shared bytes (gemm_wgmma.rs)");
// Static: the barriers of both epilogue instantiations (2 × 2 × MAX_STAGES × 8 bytes at most).
static_assert(SMEM_BYTES + 32 * MAX_STAGES <= 232448, "227 KiB of shared memory per block");
static_assert(128 * PRODUCER_REGS + 128 * CONSUMERS * CONSUMER_REGS <= 65536, "register pool");

// The block tile's width: BN = 256 (4 stages, 128 f32 accumulators per consumer thread) or
// 128 (6 stages, 64 accumulators): the host picks per shape (fewer waves on the SMs).
template <int BN>
struct Tile {
  static_assert(BN == 128 || BN == 256, "wgmma tiles are 128 × 256 or 128 × 128");
  static constexpr uint32_t B_BYTES = BN * BK * 2;  // 32 or 16 KiB
  static constexpr uint32_t STAGE_BYTES = A_BYTES + B_BYTES;
  static constexpr int STAGES = RING_BYTES / STAGE_BYTES;  // 4 or 6
  static constexpr int ACC = BN / 2;                       // 64 × BN f32 over 128 threads
  static_assert(STAGES * STAGE_BYTES == RING_BYTES && STAGES <= MAX_STAGES, "ring");
  static_assert(A_BYTES % SWIZZLE_ATOM == 0 && STAGE_BYTES % SWIZZLE_ATOM == 0,
                "every tile and box starts on a swizzle-atom boundary (base offset 0)");
  static_assert(2 * BOX_BYTES == A_BYTES && (BN / 64) * BOX_BYTES == B_BYTES,
                "an M-major A tile is 2 boxes of 64 × 64, an N-major B tile BN / 64");
};

struct TileCoord {
  int m0, n0, b;
};

// Unit t of the grouped order, a unit being `bm` rows × `bn` columns: batch outermost; inside a
// batch, groups of `group_m` unit rows, each walked column by column (the existing kernels'
// order, kernels/gemm.cu). A unit is one tile (bm = BM), or with 2-CTA clusters a pair of tiles
// one above the other (bm = 2·BM, group_m = GROUP_M / 2: the same 16 tile rows per group).
__device__ __forceinline__ TileCoord tile_coord(int t, int units_m, int units_n, int bm, int bn,
                                                int group_m) {
  const int units_mn = units_m * units_n;
  const int b = t / units_mn;
  const int r = t - b * units_mn;
  const int width = group_m * units_n;
  const int group = r / width;
  const int first_m = group * group_m;
  const int rows = min(units_m - first_m, group_m);
  const int q = r - group * width;
  return {(first_m + q % rows) * bm, (q / rows) * bn, b};
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

using namespace hopper;

// ---- epilogue through registers (odd N, unaligned C, bf16 accumulate) ----
// The old value of the pair (col, col+1) of `row` (0 past N); `pair_ok`: N even and col < N.
__device__ __forceinline__ float2 load_pair(const float* row, int col, int N, bool pair_ok) {
  if (pair_ok) return *reinterpret_cast<const float2*>(row + col);
  return make_float2(col < N ? row[col] : 0.0f, col + 1 < N ? row[col + 1] : 0.0f);
}
__device__ __forceinline__ float2 load_pair(const bf16* row, int col, int N, bool pair_ok) {
  if (pair_ok) return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(row + col));
  return make_float2(col < N ? __bfloat162float(row[col]) : 0.0f,
                     col + 1 < N ? __bfloat162float(row[col + 1]) : 0.0f);
}
__device__ __forceinline__ void store_pair(float* row, int col, int N, bool pair_ok, float v0,
                                           float v1) {
  if (pair_ok) {
    *reinterpret_cast<float2*>(row + col) = make_float2(v0, v1);
  } else {
    if (col < N) row[col] = v0;
    if (col + 1 < N) row[col + 1] = v1;
  }
}
__device__ __forceinline__ void store_pair(bf16* row, int col, int N, bool pair_ok, float v0,
                                           float v1) {
  if (pair_ok) {
    *reinterpret_cast<__nv_bfloat162*>(row + col) = __floats2bfloat162_rn(v0, v1);
  } else {
    if (col < N) row[col] = __float2bfloat16_rn(v0);
    if (col + 1 < N) row[col + 1] = __float2bfloat16_rn(v1);
  }
}

// Writes one warpgroup's 64×BN accumulators: this thread's rows row0 and row0 + 8, columns
// col0 + 8j (+1) for j = 0..BN/8−1 (fragment layout in the header).
template <int BN, typename OutT>
__device__ __forceinline__ void store_tile_registers(const float (&d)[BN / 2],
                                                     OutT* __restrict__ C, int M, int N, int row0,
                                                     int col0, bool accumulate) {
  const bool n_even = (N & 1) == 0;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int row = row0 + 8 * h;
    if (row >= M) continue;
    OutT* crow = C + static_cast<size_t>(row) * N;
    if (accumulate) {
      // 8 pairs loaded before any is added and stored: 8 loads in flight per thread.
#pragma unroll
      for (int jg = 0; jg < BN / 64; ++jg) {
        float2 old[8];
#pragma unroll
        for (int jj = 0; jj < 8; ++jj) {
          const int col = col0 + 8 * (8 * jg + jj);
          old[jj] = load_pair(crow, col, N, n_even && col < N);
        }
#pragma unroll
        for (int jj = 0; jj < 8; ++jj) {
          const int j = 8 * jg + jj;
          const int col = col0 + 8 * j;
          store_pair(crow, col, N, n_even && col < N, d[4 * j + 2 * h] + old[jj].x,
                     d[4 * j + 2 * h + 1] + old[jj].y);
        }
      }
    } else {
#pragma unroll
      for (int j = 0; j < BN / 8; ++j) {
        const int col = col0 + 8 * j;
        store_pair(crow, col, N, n_even && col < N, d[4 * j + 2 * h], d[4 * j + 2 * h + 1]);
      }
    }
  }
}

// ---- epilogue through TMA (the default where C's rows are 16-byte multiples) ----
// §9.7.13.1 bar.sync with a thread count: one consumer warpgroup (ids 1, 2; 0 is __syncthreads).
__device__ __forceinline__ void warpgroup_barrier(int id) {
  asm volatile("bar.sync %0, 128;\n" ::"r"(id) : "memory");
}
__device__ __forceinline__ void st_shared_pair(uint32_t addr, float v0, float v1, float) {
  asm volatile("st.shared.v2.f32 [%0], {%1, %2};\n" ::"r"(addr), "f"(v0), "f"(v1) : "memory");
}
__device__ __forceinline__ void st_shared_pair(uint32_t addr, float v0, float v1, bf16) {
  const __nv_bfloat162 p = __floats2bfloat162_rn(v0, v1);
  asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr),
               "r"(*reinterpret_cast<const uint32_t*>(&p))
               : "memory");
}

// Writes one warpgroup's 64×BN accumulators through `epi` (its two 8 KiB buffers) and TMA:
// box by box (64 rows × 128 bytes: 64 bf16 or 32 f32 columns), each box written into the
// buffer in the 128-byte swizzle (16-byte chunk c of row r at chunk c ^ (r % 8): the 8 rows a
// warp's store touches land on 8 different chunks, no bank conflicts), then stored (or, with
// `reduce`, added into C) by the warpgroup's first thread, which waits before reusing a
// buffer until the store from it two boxes ago has read it. The stores of the tile's last
// boxes run on while the warpgroup starts the next tile. `boxes`: the running count of boxes
// this warpgroup has issued (which buffer is next).
template <int BN, typename OutT>
__device__ __forceinline__ void store_tile_tma(const float (&d)[BN / 2],
                                               const CUtensorMap* tma_c, uint32_t epi, int row0,
                                               int n0, int b, int N, bool reduce, int cw,
                                               uint32_t& boxes) {
  constexpr int COLS = 128 / static_cast<int>(sizeof(OutT));  // columns per box
  constexpr int J_PER_BOX = COLS / 8;                          // 8-column fragment groups
  const int warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  const bool leader = threadIdx.x % 128 == 0;
  const uint32_t r_lo = warp * 16 + lane / 4;  // rows r_lo and r_lo + 8; both ≡ lane/4 mod 8
  const uint32_t swz = lane / 4;
#pragma unroll
  for (int s = 0; s < BN / COLS; ++s) {
    const int c0 = n0 + s * COLS;
    if (c0 >= N) break;  // the same for the whole warpgroup
    const uint32_t buf = epi + (boxes & 1) * EPI_BOX_BYTES;
    if (leader) tma_store_wait_read<1>();  // the store from `buf` two boxes ago has read it
    warpgroup_barrier(1 + cw);
#pragma unroll
    for (int jj = 0; jj < J_PER_BOX; ++jj) {
      const int j = s * J_PER_BOX + jj;
      const uint32_t byte = (8 * jj + 2 * (lane % 4)) * sizeof(OutT);  // inside the 128-B row
      const uint32_t chunk = ((byte >> 4) ^ swz) << 4;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const uint32_t addr = buf + (r_lo + 8 * h) * 128 + chunk + (byte & 15);
        st_shared_pair(addr, d[4 * j + 2 * h], d[4 * j + 2 * h + 1], OutT());
      }
    }
    fence_proxy_async_shared();  // the writes above, visible to the TMA unit
    warpgroup_barrier(1 + cw);
    if (leader) {
      if (reduce) {
        tma_reduce_add_3d(tma_c, buf, c0, row0, b);
      } else {
        tma_store_3d(tma_c, buf, c0, row0, b);
      }
      tma_store_commit();
    }
    ++boxes;
  }
}

// The whole kernel. A_MN / B_MN: the operand is stored M/N-major (transposed for wgmma).
// `tma_epilogue`: store C through tma_c (accumulate: TMA reduce-add, f32 only), else from
// registers. CLUSTER = 2: launched in clusters of 2 blocks (x) that take the two tiles of a
// pair (m0, n0) and (m0 + BM, n0), which share B: each block loads its own A and half of B
// (N-wise: rows n0 + rank·BN/2 .. of a K-major B, whose tensor map then has BN/2-row boxes;
// boxes rank·BN/128 .. of an N-major B) and multicasts that half to both blocks (see the
// header's "2-CTA clusters").
template <int BN, int CLUSTER, bool A_MN, bool B_MN, bool TMA_EPILOGUE, typename OutT>
__device__ __forceinline__ void gemm_persistent(const CUtensorMap* tma_a, const CUtensorMap* tma_b,
                                                const CUtensorMap* tma_c, OutT* __restrict__ C,
                                                int M, int N, int K, int batch, int accumulate) {
  using T = Tile<BN>;
  constexpr int STAGES = T::STAGES;
  constexpr uint32_t STAGE_BYTES = T::STAGE_BYTES;
  extern __shared__ uint8_t wgmma_smem[];
  __shared__ __align__(8) uint64_t bars[2 * STAGES];  // full[0..STAGES), empty[STAGES..)

  // 1024-byte aligned ring (the dynamic window's start is only 16-byte aligned for sure).
  const uint32_t ring = (smem_u32(wgmma_smem) + (SWIZZLE_ATOM - 1)) & ~(SWIZZLE_ATOM - 1);
  const uint32_t full0 = smem_u32(&bars[0]);
  const uint32_t empty0 = smem_u32(&bars[STAGES]);
  const int warpgroup = threadIdx.x / 128;
  static_assert(CLUSTER == 1 || CLUSTER == 2, "clusters of 1 or 2 blocks");
  // This block's rank in its cluster: which tile of the pair and which half of B it loads.
  const uint32_t rank = CLUSTER == 2 ? cluster_ctarank() : 0;

  if (threadIdx.x == 0) {
#pragma unroll
    for (int s = 0; s < STAGES; ++s) {
      mbar_init(full0 + 8 * s, 1);
      // With a cluster, the stage is written by both blocks' producers (the multicast halves of
      // B), so it is free only once the consumers of both blocks are done with it.
      mbar_init(empty0 + 8 * s, CONSUMERS * 4 * CLUSTER);
    }
    mbar_fence_init();
  }
  // With a cluster: the peer's barriers are initialised before any multicast or remote arrival
  // reaches them.
  if constexpr (CLUSTER == 2) {
    cluster_sync();
  } else {
    __syncthreads();
  }

  const int tiles_m = (M + BM - 1) / BM, tiles_n = (N + BN - 1) / BN;
  // Units of work: tiles, or pairs of tiles (the last pair row lacks its second tile when
  // tiles_m is odd). The host checked that the tile count fits an int.
  const int units_m = (tiles_m + CLUSTER - 1) / CLUSTER;
  const int units = units_m * tiles_n * batch;
  const int first_unit = CLUSTER == 2 ? static_cast<int>(cluster_id_x()) : blockIdx.x;
  const int unit_step = CLUSTER == 2 ? static_cast<int>(cluster_count_x()) : gridDim.x;
  const int k_blocks = (K + BK - 1) / BK;  // ≥ 1: the host never launches K = 0

  if (warpgroup == 0) {
    // ---- producer ----
    setmaxnreg_dec<PRODUCER_REGS>();
    if (threadIdx.x == 0) {
      tma_prefetch_map(tma_a);
      tma_prefetch_map(tma_b);
      int stage = 0;
      uint32_t phase = 0;
      for (int t = first_unit; t < units; t += unit_step) {
        TileCoord tc = tile_coord(t, units_m, tiles_n, CLUSTER * BM, BN, GROUP_M / CLUSTER);
        tc.m0 += rank * BM;
        // Rank 1 of the last pair row when tiles_m is odd: no tile of its own, but it still
        // loads and multicasts its half of B (its peer needs it) and keeps the barriers going.
        const bool has_tile = tc.m0 < M;
        // Bytes this tile's stages receive: MN-major 64-wide sub-boxes wholly past M or N are
        // skipped (see the header); a K-major box always starts inside the matrix, except a
        // second half of B that starts past N (skipped as well).
        const int a_boxes = !has_tile ? 0 : A_MN ? (tc.m0 + 64 < M ? 2 : 1) : 1;
        const uint32_t a_tx = A_MN ? a_boxes * BOX_BYTES : a_boxes * A_BYTES;
        int b_boxes = 1;  // N-major: 64-wide boxes; K-major with a cluster: halves
        if (B_MN) b_boxes = min(BN / 64, (N - tc.n0 + 63) / 64);
        if (!B_MN && CLUSTER == 2) b_boxes = tc.n0 + BN / 2 < N ? 2 : 1;
        const uint32_t b_tx = B_MN ? b_boxes * BOX_BYTES : b_boxes * (T::B_BYTES / CLUSTER);
        const uint32_t tx = a_tx + b_tx;  // both halves of B land here, one from each block
        for (int kb = 0; kb < k_blocks; ++kb) {
          // The consumers (of both blocks, with a cluster) released this stage.
          if constexpr (CLUSTER == 2) {
            mbar_wait_cluster(empty0 + 8 * stage, phase ^ 1);
          } else {
            mbar_wait(empty0 + 8 * stage, phase ^ 1);
          }
          const uint32_t full = full0 + 8 * stage;
          mbar_arrive_expect_tx(full, tx);
          const uint32_t sa = ring + stage * STAGE_BYTES, sb = sa + A_BYTES;
          const int k0 = kb * BK;
          if (A_MN) {  // A [K][M]: boxes {64 m, 64 k} at m0, m0 + 64
            for (int j = 0; j < a_boxes; ++j)
              tma_load_3d(sa + j * BOX_BYTES, tma_a, full, tc.m0 + 64 * j, k0, tc.b);
          } else if (has_tile) {  // A [M][K]: one box {64 k, 128 m}
            tma_load_3d(sa, tma_a, full, k0, tc.m0, tc.b);
          }
          if constexpr (CLUSTER == 2) {
            // This block's half of B, to both blocks (mask 0b11), at the same offsets.
            constexpr int HALF = BN / 2;
            if (B_MN) {  // boxes {64 n, 64 k} j = rank·HALF/64 .. of those inside N
#pragma unroll
              for (int jj = 0; jj < HALF / 64; ++jj) {
                const int j = rank * (HALF / 64) + jj;
                if (j < b_boxes)
                  tma_load_3d_multicast(sb + j * BOX_BYTES, tma_b, full, tc.n0 + 64 * j, k0,
                                        tc.b, 0x3);
              }
            } else if (rank < b_boxes) {  // one box {64 k, BN/2 n} at n0 + rank·BN/2
              tma_load_3d_multicast(sb + rank * (T::B_BYTES / 2), tma_b, full,
                                    k0, tc.n0 + rank * HALF, tc.b, 0x3);
            }
          } else if (B_MN) {  // B [K][N]: boxes {64 n, 64 k} at n0 + 64j
            for (int j = 0; j < b_boxes; ++j)
              tma_load_3d(sb + j * BOX_BYTES, tma_b, full, tc.n0 + 64 * j, k0, tc.b);
          } else {  // B [N][K]: one box {64 k, BN n}
            tma_load_3d(sb, tma_b, full, k0, tc.n0, tc.b);
          }
          if (++stage == STAGES) {
            stage = 0;
            phase ^= 1;
          }
        }
      }
    }
  } else {
    // ---- consumers ----
    setmaxnreg_inc<CONSUMER_REGS>();
    const int cw = warpgroup - 1;  // rows 64·cw .. 64·cw + 63 of the tile
    const int warp_in_wg = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
    constexpr bool use_tma = TMA_EPILOGUE;
    if (use_tma && threadIdx.x % 128 == 0) tma_prefetch_map(tma_c);
    const uint32_t epi = ring + RING_BYTES + cw * EPI_BUFFERS * EPI_BOX_BYTES;
    uint32_t boxes = 0;
    // Descriptors of stage 0, k step 0. A: this warpgroup's 64 rows are 8 KiB in (K-major: 64
    // rows × 128 B; M-major: the second 64-wide box). K-major LBO is unused (encoded 1 = 16 B).
    const uint64_t desc_a0 = make_desc(ring + cw * BOX_BYTES, A_MN ? BOX_BYTES : 16, SWIZZLE_ATOM);
    const uint64_t desc_b0 = make_desc(ring + A_BYTES, B_MN ? BOX_BYTES : 16, SWIZZLE_ATOM);
    // Descriptor units (16 B) per k16 step and per stage (added to the start-address field,
    // which never carries: every address stays below 2^18).
    constexpr uint64_t A_K16 = (A_MN ? 16 * 128 : 16 * 2) >> 4;
    constexpr uint64_t B_K16 = (B_MN ? 16 * 128 : 16 * 2) >> 4;
    constexpr uint64_t STAGE16 = STAGE_BYTES >> 4;

    float acc[T::ACC];
#pragma unroll
    for (int i = 0; i < T::ACC; ++i) acc[i] = 0.0f;
    int stage = 0;
    uint32_t phase = 0;
    // Releases a stage: one arrival per warp on its empty barrier, in both blocks with a
    // cluster (either block's producer multicasts into it).
    const auto release = [&](int s) {
      if constexpr (CLUSTER == 2) {
#pragma unroll
        for (uint32_t r = 0; r < 2; ++r) mbar_arrive_cluster(mapa_shared(empty0 + 8 * s, r));
      } else {
        mbar_arrive(empty0 + 8 * s);
      }
    };
    for (int t = first_unit; t < units; t += unit_step) {
      TileCoord tc = tile_coord(t, units_m, tiles_n, CLUSTER * BM, BN, GROUP_M / CLUSTER);
      tc.m0 += rank * BM;
      // No tile (rank 1 of an odd last pair row): run the loop for the barriers, store nothing.
      // Its A stages are stale; the products only feed the accumulators, which are dropped.
      const bool has_tile = tc.m0 < M;
      int prev_stage = 0;
      for (int kb = 0; kb < k_blocks; ++kb) {
        mbar_wait(full0 + 8 * stage, phase);  // the TMA bytes of this stage have landed
        fence_accumulators(acc);
        wgmma_fence();
        const uint64_t da = desc_a0 + stage * STAGE16, db = desc_b0 + stage * STAGE16;
#pragma unroll
        for (int kk = 0; kk < BK / 16; ++kk) {
          const int scale_d = (kb > 0 || kk > 0) ? 1 : 0;
          // m64n{BN}k16: hopper::wgmma_ss's overload for acc's BN / 2 floats.
          wgmma_ss<A_MN ? 1 : 0, B_MN ? 1 : 0>(acc, da + kk * A_K16, db + kk * B_K16, scale_d);
        }
        wgmma_commit();
        // The previous k-block's group is complete: its stage can be refilled.
        wgmma_wait<1>();
        fence_accumulators(acc);
        if (kb > 0 && lane == 0) release(prev_stage);
        prev_stage = stage;
        if (++stage == STAGES) {
          stage = 0;
          phase ^= 1;
        }
      }
      wgmma_wait<0>();
      fence_accumulators(acc);
      if (lane == 0) release(prev_stage);

      if (!has_tile) continue;
      if constexpr (use_tma) {
        // Rows wholly past M: nothing to store (the same for the whole warpgroup).
        if (tc.m0 + 64 * cw < M)
          store_tile_tma<BN, OutT>(acc, tma_c, epi, tc.m0 + 64 * cw, tc.n0, tc.b, N,
                                   accumulate != 0, cw, boxes);
      } else {
        OutT* Cb = C + static_cast<size_t>(tc.b) * M * N;
        const int row0 = tc.m0 + cw * 64 + warp_in_wg * 16 + lane / 4;
        const int col0 = tc.n0 + 2 * (lane % 4);
        store_tile_registers<BN, OutT>(acc, Cb, M, N, row0, col0, accumulate != 0);
      }
    }
    // The block's shared memory must outlive the TMA stores reading it, and their writes
    // complete before the block ends.
    if (use_tma && threadIdx.x % 128 == 0) bulk_wait_all();
  }
  // With a cluster, no block exits while its peer may still arrive on its barriers (the
  // consumers' last releases) or multicast into its ring: all of both blocks meet here first.
  if constexpr (CLUSTER == 2) cluster_sync();
}

#endif  // __CUDA_ARCH_FEAT_SM90_ALL

}  // namespace wgmma_gemm

// One kernel per (tile, cluster, layout, output type); `tma_epilogue` picks the epilogue at run
// time (two instantiations, so that each fits 168 registers without spills). Launch
// (gemm_wgmma.rs): block 384, grid (min(tiles, SMs), 1, 1), dynamic shared memory
// wgmma_gemm::SMEM_BYTES (opt-in attribute); tma_c is C's tensor map (unused, zeros, with the
// register epilogue). The `_mc` kernels (2-CTA clusters, B multicast) are launched with
// cuLaunchKernelEx and a cluster dimension of (2, 1, 1), an even grid of at most 2 × the
// clusters that fit at once, and B's tensor map in boxes of BN/2 rows when B is K-major.
// Built for sm_80/sm_90 too (build.rs compiles every file for them): there the body traps, and
// the host never launches these kernels on anything but a compute-capability-9.0 device whose
// loaded image is the sm_90a one (gemm_wgmma_probe).
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define WGMMA_BODY(BN, CL, AMN, BMN, OUT)                                                      \
  if (tma_epilogue)                                                                            \
    wgmma_gemm::gemm_persistent<BN, CL, AMN, BMN, true, OUT>(&tma_a, &tma_b, &tma_c, C, M, N, K, \
                                                             batch, accumulate);               \
  else                                                                                         \
    wgmma_gemm::gemm_persistent<BN, CL, AMN, BMN, false, OUT>(&tma_a, &tma_b, &tma_c, C, M, N,   \
                                                              K, batch, accumulate)
#else
#define WGMMA_BODY(BN, CL, AMN, BMN, OUT) __trap()
#endif

#define WGMMA_KERNEL(NAME, BN, CL, AMN, BMN, OUT)                                             \
  extern "C" __global__ void __launch_bounds__(wgmma_gemm::THREADS, 1)                       \
      NAME(const __grid_constant__ CUtensorMap tma_a, const __grid_constant__ CUtensorMap tma_b, \
           const __grid_constant__ CUtensorMap tma_c, OUT* __restrict__ C, int M, int N, int K, \
           int batch, int accumulate, int tma_epilogue) {                                     \
    WGMMA_BODY(BN, CL, AMN, BMN, OUT);                                                        \
  }

// 128 × 256 tiles.
// HOT: gemm_wgmma_nt_bf16 gemm_wgmma_nt_f32 gemm_wgmma_nn_bf16 gemm_wgmma_nn_f32 gemm_wgmma_tn_bf16
// HOT: gemm_wgmma_tn_f32
WGMMA_KERNEL(gemm_wgmma_nt_bf16, 256, 1, false, false, bf16)
WGMMA_KERNEL(gemm_wgmma_nt_f32, 256, 1, false, false, float)
WGMMA_KERNEL(gemm_wgmma_nn_bf16, 256, 1, false, true, bf16)
WGMMA_KERNEL(gemm_wgmma_nn_f32, 256, 1, false, true, float)
WGMMA_KERNEL(gemm_wgmma_tn_bf16, 256, 1, true, true, bf16)
WGMMA_KERNEL(gemm_wgmma_tn_f32, 256, 1, true, true, float)
// 128 × 128 tiles.
// HOT: gemm_wgmma_nt_bf16_n128 gemm_wgmma_nt_f32_n128 gemm_wgmma_nn_bf16_n128
// HOT: gemm_wgmma_nn_f32_n128 gemm_wgmma_tn_bf16_n128 gemm_wgmma_tn_f32_n128
WGMMA_KERNEL(gemm_wgmma_nt_bf16_n128, 128, 1, false, false, bf16)
WGMMA_KERNEL(gemm_wgmma_nt_f32_n128, 128, 1, false, false, float)
WGMMA_KERNEL(gemm_wgmma_nn_bf16_n128, 128, 1, false, true, bf16)
WGMMA_KERNEL(gemm_wgmma_nn_f32_n128, 128, 1, false, true, float)
WGMMA_KERNEL(gemm_wgmma_tn_bf16_n128, 128, 1, true, true, bf16)
WGMMA_KERNEL(gemm_wgmma_tn_f32_n128, 128, 1, true, true, float)
// 2-CTA clusters with B multicast, 128 × 256 tiles.
// HOT: gemm_wgmma_nt_bf16_mc gemm_wgmma_nt_f32_mc gemm_wgmma_nn_bf16_mc gemm_wgmma_nn_f32_mc
// HOT: gemm_wgmma_tn_bf16_mc gemm_wgmma_tn_f32_mc
WGMMA_KERNEL(gemm_wgmma_nt_bf16_mc, 256, 2, false, false, bf16)
WGMMA_KERNEL(gemm_wgmma_nt_f32_mc, 256, 2, false, false, float)
WGMMA_KERNEL(gemm_wgmma_nn_bf16_mc, 256, 2, false, true, bf16)
WGMMA_KERNEL(gemm_wgmma_nn_f32_mc, 256, 2, false, true, float)
WGMMA_KERNEL(gemm_wgmma_tn_bf16_mc, 256, 2, true, true, bf16)
WGMMA_KERNEL(gemm_wgmma_tn_f32_mc, 256, 2, true, true, float)
// 2-CTA clusters with B multicast, 128 × 128 tiles.
// HOT: gemm_wgmma_nt_bf16_n128_mc gemm_wgmma_nt_f32_n128_mc gemm_wgmma_nn_bf16_n128_mc
// HOT: gemm_wgmma_nn_f32_n128_mc gemm_wgmma_tn_bf16_n128_mc gemm_wgmma_tn_f32_n128_mc
WGMMA_KERNEL(gemm_wgmma_nt_bf16_n128_mc, 128, 2, false, false, bf16)
WGMMA_KERNEL(gemm_wgmma_nt_f32_n128_mc, 128, 2, false, false, float)
WGMMA_KERNEL(gemm_wgmma_nn_bf16_n128_mc, 128, 2, false, true, bf16)
WGMMA_KERNEL(gemm_wgmma_nn_f32_n128_mc, 128, 2, false, true, float)
WGMMA_KERNEL(gemm_wgmma_tn_bf16_n128_mc, 128, 2, true, true, bf16)
WGMMA_KERNEL(gemm_wgmma_tn_f32_n128_mc, 128, 2, true, true, float)

// Which image of this file the driver loaded: 1 for the sm_90a one (the only one whose GEMM
// kernels do anything), 0 otherwise. The host runs it once per context before the first GEMM.
extern "C" __global__ void gemm_wgmma_probe(unsigned int* out) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  *out = 1u;
#else
  *out = 0u;
#endif
}
