//! The segmented embedding backward (`embedding_backward_planned`, kernels/embedding.cu
//! `embedding_bwd_sorted_*`) against the CPU's f64 sum: each touched row's old value plus its
//! tokens' gradients in token order, in f64, rounded once to f32. The kernel sums in that
//! order in f64 too, so the result must be equal bit for bit (not within a bound). Fresh random
//! ids drawn from a small part of the vocabulary (many repeats), ids past the vocabulary
//! (skipped), a table gradient that starts random (the rows not touched must keep their bits);
//! a second run gives the same bits.

use crate::common::gpu::{gpu, Dtype, Rng};
use half::bf16;
use implicit::backend::cuda::CudaBackend;

fn planned_case<T: Dtype>(
    gpu: &CudaBackend,
    rng: &mut Rng,
    tokens: usize,
    vocab: usize,
    dim: usize,
) {
    let tag = format!(
        "{} tokens {tokens} vocab {vocab} dim {dim}",
        std::any::type_name::<T>()
    );
    // Ids from the first quarter of the vocabulary (repeats), and every 50th past its end.
    let ids: Vec<u32> = (0..tokens)
        .map(|t| match t % 50 {
            49 => (vocab + rng.below(3)) as u32,
            _ => rng.below(vocab.div_ceil(4)) as u32,
        })
        .collect();
    let (dyq, dy) = T::quantize(&rng.vec(tokens * dim, 1.0));
    let table = rng.vec(vocab * dim, 0.5);
    let mut want = table.clone();
    for row in 0..vocab {
        let mine: Vec<usize> = (0..tokens).filter(|&t| ids[t] as usize == row).collect();
        if mine.is_empty() {
            continue;
        }
        for c in 0..dim {
            let mut acc = table[row * dim + c] as f64;
            for &t in &mine {
                acc += dy[t * dim + c] as f64;
            }
            want[row * dim + c] = acc as f32;
        }
    }
    let plan = gpu.embedding_grad_plan(&ids, vocab).unwrap();
    let gdy = gpu.upload(&dyq).unwrap();
    let mut gtable = gpu.upload(&table).unwrap();
    gpu.embedding_backward_planned(&plan, &gdy, dim, &mut gtable)
        .unwrap();
    let got = gpu.download(&gtable).unwrap();
    let differ = got
        .iter()
        .zip(&want)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    eprintln!("embedding_backward_planned {tag}: {differ} elements differ from the f64 sum");
    assert_eq!(differ, 0, "{tag}: not bit for bit the CPU's f64 sum");
    let mut again = gpu.upload(&table).unwrap();
    gpu.embedding_backward_planned(&plan, &gdy, dim, &mut again)
        .unwrap();
    assert_eq!(
        gpu.download(&again).unwrap(),
        got,
        "{tag}: differs between runs"
    );
}

#[test]
fn planned_embedding_backward_is_the_f64_sum_bit_for_bit() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("embedding_sorted");
    // dim 4096 the paper's (16-byte path, 4 block columns), 30 the scalar path, 1028 one block
    // column plus a part; 2048 tokens over 8000 rows: ~2 tokens a touched row, some 5+.
    for (tokens, vocab, dim) in [
        (2048, 32000, 4096),
        (300, 40, 30),
        (513, 64, 1028),
        (1, 1, 4),
    ] {
        planned_case::<f32>(gpu, &mut rng, tokens, vocab, dim);
        planned_case::<bf16>(gpu, &mut rng, tokens, vocab, dim);
    }
}

#[test]
fn planned_embedding_backward_checks_its_plan() {
    let Some(gpu) = gpu() else { return };
    let plan = gpu.embedding_grad_plan(&[1, 2], 8).unwrap();
    let dy = gpu.upload(&[0.0f32; 8]).unwrap();
    let mut wrong_vocab = gpu.upload(&[0.0f32; 9 * 4]).unwrap();
    let err = gpu
        .embedding_backward_planned(&plan, &dy, 4, &mut wrong_vocab)
        .unwrap_err()
        .to_string();
    assert!(err.contains("9 rows") && err.contains("for 8"), "{err}");
    let mut table = gpu.upload(&[0.0f32; 8 * 4]).unwrap();
    let short = gpu.upload(&[0.0f32; 4]).unwrap();
    let err = gpu
        .embedding_backward_planned(&plan, &short, 4, &mut table)
        .unwrap_err()
        .to_string();
    assert!(err.contains("dy"), "{err}");
}
