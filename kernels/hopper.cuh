// Hopper (sm_90a) primitives shared by the kernels that use the tensor memory accelerator and
// wgmma: kernels/gemm_wgmma.cu and the attention kernels written for Hopper. Inline PTX, each
// wrapper citing its PTX ISA section (9.0 numbering; see kernels/gemm_wgmma.cu's header for the
// descriptor and fragment layouts these serve). Only compiled for sm_90a, where
// __CUDA_ARCH_FEAT_SM90_ALL is defined; include it after common.cuh and <cuda.h>.
#pragma once

#include <cuda.h>
#include <stdint.h>

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

namespace hopper {

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// ---- mbarrier (PTX ISA §9.7.13.15) ----
__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
// Makes the initialised barriers visible to the async proxy (the TMA unit) and the other
// threads; a __syncthreads follows.
__device__ __forceinline__ void mbar_fence_init() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
// One arrival (the barrier's only expected one) that also raises the expected transaction
// count by `bytes`: the phase completes when the TMA copies have delivered them all.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ uint32_t mbar_try_wait(uint32_t bar, uint32_t parity) {
  uint32_t done;
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
      "selp.u32 %0, 1, 0, p;\n"
      "}\n"
      : "=r"(done)
      : "r"(bar), "r"(parity)
      : "memory");
  return done;
}
__device__ __forceinline__ uint64_t global_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(t));
  return t;
}
// Waits until the phase of parity `parity` has completed (acquire, CTA scope by default). A
// wait of more than 4 s means the protocol is broken (a wrong byte count or parity): trap, so
// that the launch fails with an error instead of hanging the GPU until something kills it.
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  if (mbar_try_wait(bar, parity)) return;
  const uint64_t start = global_ns();
  while (!mbar_try_wait(bar, parity)) {
    if (global_ns() - start > 4000000000ull) __trap();
  }
}

// ---- TMA (PTX ISA §9.7.9.25.5.2) ----
__device__ __forceinline__ void tma_prefetch_map(const CUtensorMap* map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}
// Box at element coordinates (c0 innermost, c1, c2 = batch) → shared `dst`, completing `bar`.
__device__ __forceinline__ void tma_load_3d(uint32_t dst, const CUtensorMap* map, uint32_t bar,
                                            int c0, int c1, int c2) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%3, %4, %5}], [%2];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1), "r"(c2)
      : "memory");
}

// Box at element coordinates (c0 innermost .. c3) → shared `dst`, completing `bar` (the 4-d form
// serves [batch, heads, seq, dim] tensors, as attention reads them).
__device__ __forceinline__ void tma_load_4d(uint32_t dst, const CUtensorMap* map, uint32_t bar,
                                            int c0, int c1, int c2, int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%3, %4, %5, %6}], [%2];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
}
// Shared `src` → the box at (c0 .. c2) of global memory (§9.7.9.25.5.2, the .global.shared::cta
// direction, completed through a bulk async-group). Elements past the tensor's bounds are not
// written. Before it, the threads that wrote `src` run fence_proxy_async_shared and a barrier.
__device__ __forceinline__ void tma_store_3d(const CUtensorMap* map, uint32_t src, int c0, int c1,
                                             int c2) {
  asm volatile(
      "cp.async.bulk.tensor.3d.global.shared::cta.tile.bulk_group [%0, {%2, %3, %4}], [%1];\n" ::
          "l"(reinterpret_cast<uint64_t>(map)),
      "r"(src), "r"(c0), "r"(c1), "r"(c2)
      : "memory");
}
__device__ __forceinline__ void tma_store_4d(const CUtensorMap* map, uint32_t src, int c0, int c1,
                                             int c2, int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.global.shared::cta.tile.bulk_group [%0, {%2, %3, %4, %5}], [%1];\n" ::
          "l"(reinterpret_cast<uint64_t>(map)),
      "r"(src), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
}
// §9.7.9.25.6 cp.async.bulk.commit_group / wait_group.read: closes the bulk group of the stores
// issued so far; waits until at most N groups still read their shared source (the buffer may
// then be written again).
__device__ __forceinline__ void tma_store_commit() {
  asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void tma_store_wait_read() {
  asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory");
}
// §9.7.9.25.6 cp.async.bulk.wait_group (without .read): every bulk group of this thread has
// completed, writes included; the issuing threads wait so before the block exits.
__device__ __forceinline__ void bulk_wait_all() {
  asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
}
// §9.7.9.25.5.2 / §9.7.9.26 cp.reduce.async.bulk.tensor: shared `src` added element-wise (f32,
// in L2) into the box at (c0 .. c2) of global memory; elements past the bounds are skipped.
__device__ __forceinline__ void tma_reduce_add_3d(const CUtensorMap* map, uint32_t src, int c0,
                                                  int c1, int c2) {
  asm volatile(
      "cp.reduce.async.bulk.tensor.3d.global.shared::cta.add.tile.bulk_group"
      " [%0, {%2, %3, %4}], [%1];\n" ::"l"(reinterpret_cast<uint64_t>(map)),
      "r"(src), "r"(c0), "r"(c1), "r"(c2)
      : "memory");
}
// Bulk copy (no tensor map) of `bytes` (multiple of 16, both ends 16-byte aligned) global →
// shared, completing `bar` (§9.7.9.25.4.1 cp.async.bulk).
__device__ __forceinline__ void bulk_load(uint32_t dst, const void* src, uint32_t bytes,
                                          uint32_t bar) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::
          "r"(dst),
      "l"(reinterpret_cast<uint64_t>(src)), "r"(bytes), "r"(bar)
      : "memory");
}
// global[dst..] += shared[src..] elementwise in f32, asynchronously (§9.7.9.25.4.2
// cp.reduce.async.bulk, bulk-group completion: tma_store_commit / wait as for TMA stores).
__device__ __forceinline__ void bulk_reduce_add_f32(float* dst, uint32_t src, uint32_t bytes) {
  asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::
                   "l"(reinterpret_cast<uint64_t>(dst)),
               "r"(src), "r"(bytes)
               : "memory");
}
// §9.7.13.4 membar/fence: makes the generic-proxy writes to shared memory before it visible to
// the async proxy (a TMA store reading them, or wgmma reading operands written by threads).
__device__ __forceinline__ void fence_proxy_async_shared() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// ---- register reallocation (PTX ISA §9.7.19.5, sm_90a) ----
// Every warp of the warpgroup executes it; the kernel's __launch_bounds__ fixes the cap at entry.
template <int REGS>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(REGS));
}
template <int REGS>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(REGS));
}

// ---- wgmma (PTX ISA §9.7.15) ----
// Shared-memory matrix descriptor, 128-byte swizzle (§9.7.15.5.1.2.2). Byte offsets must be
// multiples of 16; the start address is a shared-window address below 256 KiB.
__device__ __forceinline__ uint64_t make_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  uint64_t d = 0;
  d |= static_cast<uint64_t>((addr & 0x3FFFFu) >> 4);           // bits 0–13: start address
  d |= static_cast<uint64_t>((lbo & 0x3FFFFu) >> 4) << 16;      // bits 16–29: leading offset
  d |= static_cast<uint64_t>((sbo & 0x3FFFFu) >> 4) << 32;      // bits 32–45: stride offset
  // bits 49–51: base offset 0 (pattern starts 1024-aligned); bits 62–63: 1 = 128-byte swizzle.
  d |= static_cast<uint64_t>(1) << 62;
  return d;
}

__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// The wgmma products, one overload per accumulator size (N = 64, 128, 256: d has N / 2 f32 per
// thread), each a single wgmma.mma_async (§9.7.15.5.2) of shape m64nNk16 with f32 accumulators
// and bf16 inputs. The accumulators are operands %0 .. %(N/2 − 1); the macros below spell their
// operand and register lists, so that the overloads differ only in the shape and the numbering
// of the operands after them.
#define HOPPER_ACC8(i)                                                                            \
  "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]),    \
      "+f"(d[i + 6]), "+f"(d[i + 7])
#define HOPPER_ACC32 HOPPER_ACC8(0), HOPPER_ACC8(8), HOPPER_ACC8(16), HOPPER_ACC8(24)
#define HOPPER_ACC64 HOPPER_ACC32, HOPPER_ACC8(32), HOPPER_ACC8(40), HOPPER_ACC8(48), HOPPER_ACC8(56)
#define HOPPER_ACC128                                                                             \
  HOPPER_ACC64, HOPPER_ACC8(64), HOPPER_ACC8(72), HOPPER_ACC8(80), HOPPER_ACC8(88),               \
      HOPPER_ACC8(96), HOPPER_ACC8(104), HOPPER_ACC8(112), HOPPER_ACC8(120)
#define HOPPER_REGS32                                                                             \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                        \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define HOPPER_REGS64                                                                             \
  HOPPER_REGS32 ", %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, "   \
                "%47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, " \
                "%63"
#define HOPPER_REGS128                                                                            \
  HOPPER_REGS64 ", %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, "   \
                "%79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, " \
                "%95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, "  \
                "%109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, "   \
                "%122, %123, %124, %125, %126, %127"

// d (+)= A·B, A (64×16) and B (16×N) both from shared memory through descriptors (the "SS"
// form); TRANS_A / TRANS_B (imm-trans-a / -b): 0 = K-major, 1 = M/N-major. scale_d = 0
// overwrites d.
template <int TRANS_A, int TRANS_B>
__device__ __forceinline__ void wgmma_ss(float (&d)[32], uint64_t desc_a, uint64_t desc_b,
                                         int scale_d) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {" HOPPER_REGS32
      "}, %32, %33, p, 1, 1, %35, %36;\n"
      "}\n"
      : HOPPER_ACC32
      : "l"(desc_a), "l"(desc_b), "r"(scale_d), "n"(TRANS_A), "n"(TRANS_B));
}
template <int TRANS_A, int TRANS_B>
__device__ __forceinline__ void wgmma_ss(float (&d)[64], uint64_t desc_a, uint64_t desc_b,
                                         int scale_d) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {" HOPPER_REGS64
      "}, %64, %65, p, 1, 1, %67, %68;\n"
      "}\n"
      : HOPPER_ACC64
      : "l"(desc_a), "l"(desc_b), "r"(scale_d), "n"(TRANS_A), "n"(TRANS_B));
}
template <int TRANS_A, int TRANS_B>
__device__ __forceinline__ void wgmma_ss(float (&d)[128], uint64_t desc_a, uint64_t desc_b,
                                         int scale_d) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %130, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {" HOPPER_REGS128
      "}, %128, %129, p, 1, 1, %131, %132;\n"
      "}\n"
      : HOPPER_ACC128
      : "l"(desc_a), "l"(desc_b), "r"(scale_d), "n"(TRANS_A), "n"(TRANS_B));
}

// d += A·B, A (64×16 bf16) from REGISTERS (the "RS" form: a[0..3] in the A-fragment layout of
// §9.7.15.5.1.1.1, Figure "WGMMA .m64nNk16 register fragment layout for matrix A", the same as
// mma.m16n8k16's per warp of 16 rows), B (16×N) from shared memory M/N-major (imm-trans-b = 1).
__device__ __forceinline__ void wgmma_rs(float (&d)[32], const uint32_t* a, uint64_t desc_b) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {" HOPPER_REGS32
      "}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n"
      "}\n"
      : HOPPER_ACC32
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));
}
__device__ __forceinline__ void wgmma_rs(float (&d)[64], const uint32_t* a, uint64_t desc_b) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {" HOPPER_REGS64
      "}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n"
      "}\n"
      : HOPPER_ACC64
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));
}

#undef HOPPER_ACC8
#undef HOPPER_ACC32
#undef HOPPER_ACC64
#undef HOPPER_ACC128
#undef HOPPER_REGS32
#undef HOPPER_REGS64
#undef HOPPER_REGS128

// Tells the compiler that every accumulator may change here, so no read or write of them moves
// across a wait_group (the wgmma writes them asynchronously, behind the compiler's back).
template <int N>
__device__ __forceinline__ void fence_accumulators(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// ---- scalar helpers of the attention kernels ----
// 2^x on the SFU (ex2.approx.ftz.f32: relative error ~2⁻²²; exp2(−inf) = +0, as the masking
// needs).
__device__ __forceinline__ float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}
// Two floats as a bf16x2 (rounded to nearest even), `lo` in the low half.
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

}  // namespace hopper

#endif  // __CUDA_ARCH_FEAT_SM90_ALL

// ---- thread-block clusters (PTX ISA 9.0: §9.7.13.4 barrier.cluster, §9.7.9.22 mapa,
// §9.7.13.15.13 mbarrier.arrive, §9.7.13.15.16 mbarrier.try_wait, §9.7.9.25.5.2
// cp.async.bulk.tensor .multicast::cluster, §10.13 special registers %cluster_ctarank,
// %clusterid, %nclusterid). Used by kernels/gemm_wgmma.cu's 2-CTA variant. ----
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

namespace hopper {

// This block's rank in its cluster, the cluster's index in the grid (x) and the clusters in the
// grid (x).
__device__ __forceinline__ uint32_t cluster_ctarank() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
  return r;
}
__device__ __forceinline__ uint32_t cluster_id_x() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%clusterid.x;\n" : "=r"(r));
  return r;
}
__device__ __forceinline__ uint32_t cluster_count_x() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%nclusterid.x;\n" : "=r"(r));
  return r;
}
// Every non-exited thread of every block of the cluster arrives (release: its earlier writes,
// the mbarrier inits included, become visible cluster-wide) and waits (acquire) for all others.
// Not .aligned: callers may reach it from divergent code.
__device__ __forceinline__ void cluster_sync() {
  asm volatile(
      "barrier.cluster.arrive.release;\n"
      "barrier.cluster.wait.acquire;\n" ::
          : "memory");
}
// The shared::cluster address of `addr` (this block's shared window) in block `rank`'s window.
__device__ __forceinline__ uint32_t mapa_shared(uint32_t addr, uint32_t rank) {
  uint32_t r;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(r) : "r"(addr), "r"(rank));
  return r;
}
// One arrival on an mbarrier of any block of the cluster (`cluster_addr` from mapa_shared),
// releasing this thread's earlier accesses at cluster scope (the barrier's owner may then
// overwrite the memory they read).
__device__ __forceinline__ void mbar_arrive_cluster(uint32_t cluster_addr) {
  asm volatile("mbarrier.arrive.release.cluster.shared::cluster.b64 _, [%0];\n" ::"r"(
                   cluster_addr)
               : "memory");
}
// mbar_wait with cluster-scope acquire: for a barrier that the other blocks of the cluster
// arrive on (their releases pair with it). The same 4 s trap.
__device__ __forceinline__ uint32_t mbar_try_wait_cluster(uint32_t bar, uint32_t parity) {
  uint32_t done;
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%1], %2;\n"
      "selp.u32 %0, 1, 0, p;\n"
      "}\n"
      : "=r"(done)
      : "r"(bar), "r"(parity)
      : "memory");
  return done;
}
__device__ __forceinline__ void mbar_wait_cluster(uint32_t bar, uint32_t parity) {
  if (mbar_try_wait_cluster(bar, parity)) return;
  const uint64_t start = global_ns();
  while (!mbar_try_wait_cluster(bar, parity)) {
    if (global_ns() - start > 4000000000ull) __trap();
  }
}
// tma_load_3d to every block of the cluster named in `cta_mask` (bit r: rank r): the box lands
// at the same shared offset `dst` in each, and each block's mbarrier at offset `bar` receives
// the complete_tx of the bytes written into that block.
__device__ __forceinline__ void tma_load_3d_multicast(uint32_t dst, const CUtensorMap* map,
                                                      uint32_t bar, int c0, int c1, int c2,
                                                      uint16_t cta_mask) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
      ".multicast::cluster [%0], [%1, {%3, %4, %5}], [%2], %6;\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1), "r"(c2), "h"(cta_mask)
      : "memory");
}

}  // namespace hopper

#endif  // __CUDA_ARCH_FEAT_SM90_ALL
