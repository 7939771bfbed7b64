//! `rope_bf16_vec` (bf16 with head_dim a multiple of 16) against the CPU reference
//! `backend::cpu::ops::rope`, both layouts, forward and inverse, on fresh random inputs: head
//! counts that leave the last group of 4 heads partial (1, 3, 5, 33) and the paper's 32,
//! head_dim 16 (one chunk) to 256, odd token counts, and positions up to 2^17 (angles past
//! sincosf's fast range, 105615). RoPE runs in place, so its output cannot be poisoned first;
//! instead every head is checked on its own, and positions are ≥ 1, so a head the kernel
//! skipped keeps its input and fails its check. Bound: bf16's (one rounding of an f32 result,
//! 2⁻⁹ relative at most, under 8e-3), which holds for every subset of the elements.

use crate::common::gpu::{check, f64s, gpu, Dtype, Rng};
use half::bf16;
use implicit::backend::cpu::ops::{self, RopeLayout, RopeSpec};
use implicit::backend::cuda::CudaBackend;

/// Head `h` of every token of a `[tokens, heads, hd]` tensor.
fn head<T: Copy>(v: &[T], tokens: usize, heads: usize, hd: usize, h: usize) -> Vec<T> {
    (0..tokens)
        .flat_map(|t| {
            v[(t * heads + h) * hd..(t * heads + h + 1) * hd]
                .iter()
                .copied()
        })
        .collect()
}

fn case(gpu: &CudaBackend, rng: &mut Rng, tokens: usize, heads: usize, hd: usize, max_pos: usize) {
    for layout in [RopeLayout::HalfRotation, RopeLayout::Interleaved] {
        let spec = RopeSpec {
            heads,
            head_dim: hd,
            base: 10000.0,
            layout,
        };
        let (xq, x) = bf16::quantize(&rng.vec(tokens * heads * hd, 1.0));
        let positions: Vec<u32> = (0..tokens).map(|_| 1 + rng.below(max_pos) as u32).collect();
        let pos: Vec<usize> = positions.iter().map(|&p| p as usize).collect();
        let gpos = gpu.upload(&positions).unwrap();
        for inverse in [false, true] {
            let mut reference = x.clone();
            ops::rope(&mut reference, &pos, spec, inverse);
            let mut gx = gpu.upload(&xq).unwrap();
            gpu.rope(&mut gx, &gpos, spec, inverse).unwrap();
            let out = gpu.download(&gx).unwrap();
            for h in 0..heads {
                let what = format!(
                    "rope_bf16_vec {tokens}x{heads}x{hd} head {h} {layout:?} inverse {inverse} \
                     positions ≤ {max_pos}"
                );
                let want = f64s(&head(&reference, tokens, heads, hd, h));
                check(&what, &head(&out, tokens, heads, hd, h), &want, bf16::BOUND);
            }
        }
    }
}

#[test]
fn rope_bf16_vec_matches_cpu_on_partial_head_groups_and_large_positions() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("rope_vec");
    for (tokens, heads, hd, max_pos) in [
        (5, 32, 128, 4096),    // Llama-2-7B
        (129, 32, 128, 4096),  // more than one block, the last one partial
        (7, 1, 16, 4096),      // one head, one chunk
        (3, 3, 32, 4096),      // one group, three heads
        (9, 5, 64, 4096),      // two groups, the second one head wide
        (2, 33, 256, 4096),    // nine groups, the last one head wide; 16 chunks
        (11, 8, 128, 1 << 17), // angles beyond sincosf's fast path
    ] {
        case(gpu, &mut rng, tokens, heads, hd, max_pos);
    }
}
