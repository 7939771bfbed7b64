//! The rule adapter (kernels/rule_adapter.cu) against an f64 reference on the CPU
//! (`rule_reference`, on backend::cpu::ops' log-sum-exp and argmax), both kernels: one block per
//! row, and the row split over blocks whose last one combines (`RuleAdapterKernel::Split`), at
//! decode sizes [1, 7, 64, 256] × 32000, OLMo's 50280, small and odd vocabularies (1000, 33:
//! the scalar path) and chunk counts that do not divide the row; shared and per-row biases, an
//! EOS term, a planted exact tie. Outputs are poisoned first (tokens u32::MAX, log-probs NaN).
//! Bounds: the token exact unless the runner-up is within 1e-4 of the best; log-probs within
//! F32_BOUND (1e-5 relative), the bound this test held the per-row kernel to before the split
//! (both kernels sum the same f32 exponentials in another order, so the split one must meet it
//! too); split against per-row within 2·F32_BOUND (both within F32_BOUND of the reference).

use crate::common::gpu::{check, f64s, gpu, poisoned, rel_err, Dtype, Rng, F32_BOUND};
use half::bf16;
use implicit::backend::cpu::ops;
use implicit::backend::cuda::{
    CudaBackend, DeviceBuffer, RuleAdapterKernel, RuleAdapterOutput, RulePlan,
};

/// f64 reference of the rule adapter: (argmax of log_softmax(z) + s, its adapted log-prob,
/// its base log-prob, the gap to the runner-up).
fn rule_reference(z: &[f32], s: &[f64]) -> (usize, f64, f64, f64) {
    let zs = f64s(z);
    let lse = ops::log_sum_exp(&zs);
    let score: Vec<f64> = zs.iter().zip(s).map(|(&v, &b)| v - lse + b).collect();
    let best = ops::argmax(&score);
    let runner_up = (0..score.len())
        .filter(|&i| i != best)
        .map(|i| score[i])
        .fold(f64::NEG_INFINITY, f64::max);
    (
        best,
        score[best] - ops::log_sum_exp(&score),
        zs[best] - lse,
        score[best] - runner_up,
    )
}

/// One draw of inputs, on the GPU and as the reference saw them, with the reference's answers.
struct Case<T: Dtype> {
    tag: String,
    rows: usize,
    vocab: usize,
    logits: DeviceBuffer<T>,
    bias: DeviceBuffer<f32>,
    eos: u32,
    eos_bias: DeviceBuffer<f32>,
    /// Per row: (argmax, adapted log-prob, base log-prob, gap to the runner-up).
    want: Vec<(usize, f64, f64, f64)>,
}

/// What one launch wrote.
#[derive(PartialEq, Debug)]
struct Picks {
    tokens: Vec<u32>,
    logprobs: Vec<f32>,
    base_logprobs: Vec<f32>,
}

impl<T: Dtype> Case<T> {
    fn draw(gpu: &CudaBackend, rng: &mut Rng, rows: usize, vocab: usize, per_row: bool) -> Self {
        let tag = format!(
            "{} rows {rows} vocab {vocab} per-row bias {per_row}",
            std::any::type_name::<T>()
        );
        let (mut zq, mut z) = T::quantize(&rng.vec(rows * vocab, 6.0));
        let mut bias = rng.vec(if per_row { rows * vocab } else { vocab }, 3.0);
        let eos_bias = rng.vec(rows, 2.0);
        // With a shared bias, row 0 gets an exact tie for the maximum at indices 1 and vocab − 2
        // (same logit, same bias, EOS elsewhere; in different chunks of a split): the lower
        // index must win.
        let plant_tie = vocab > 4 && !per_row;
        let eos = if plant_tie {
            0
        } else {
            rng.below(vocab) as u32
        };
        if plant_tie {
            for i in [1, vocab - 2] {
                z[i] = 40.0;
                zq[i] = T::from_f32(40.0);
                bias[i] = 5.0;
            }
        }
        let want = (0..rows)
            .map(|r| {
                let s: Vec<f64> = (0..vocab)
                    .map(|i| {
                        let b = bias[if per_row { r * vocab + i } else { i }] as f64;
                        b + if i == eos as usize {
                            eos_bias[r] as f64
                        } else {
                            0.0
                        }
                    })
                    .collect();
                rule_reference(&z[r * vocab..][..vocab], &s)
            })
            .collect();
        Case {
            tag,
            rows,
            vocab,
            logits: gpu.upload(&zq).unwrap(),
            bias: gpu.upload(&bias).unwrap(),
            eos,
            eos_bias: gpu.upload(&eos_bias).unwrap(),
            want,
        }
    }

    /// The kernel's picks, written over poisoned outputs.
    fn run(&self, gpu: &CudaBackend, kernel: RuleAdapterKernel) -> Picks {
        let mut tokens = gpu.upload(&vec![u32::MAX; self.rows]).unwrap();
        let (mut lp, mut blp) = (
            poisoned::<f32>(gpu, self.rows),
            poisoned::<f32>(gpu, self.rows),
        );
        let out = RuleAdapterOutput {
            tokens: &mut tokens,
            logprobs: &mut lp,
            base_logprobs: &mut blp,
        };
        gpu.rule_adapter_with(
            kernel,
            &self.logits,
            self.vocab,
            &self.bias,
            self.eos,
            &self.eos_bias,
            out,
        )
        .unwrap();
        Picks {
            tokens: gpu.download(&tokens).unwrap(),
            logprobs: gpu.download(&lp).unwrap(),
            base_logprobs: gpu.download(&blp).unwrap(),
        }
    }

    /// Asserts `picks` against the reference.
    fn check(&self, picks: &Picks, what: &str) {
        let tag = format!("rule_adapter {what} {}", self.tag);
        let mut near_ties = 0;
        for (r, &(best, ..)) in self.want.iter().enumerate() {
            let gap = self.want[r].3;
            // Exact unless the runner-up is within rounding of the best (then either may win).
            if gap > 1e-4 || gap == 0.0 {
                assert_eq!(picks.tokens[r] as usize, best, "{tag} row {r}: argmax");
            } else {
                near_ties += 1;
            }
        }
        if near_ties > 0 {
            eprintln!("{tag}: {near_ties} near ties (gap ≤ 1e-4), argmax not compared");
        }
        let lp: Vec<f64> = self.want.iter().map(|w| w.1).collect();
        let blp: Vec<f64> = self.want.iter().map(|w| w.2).collect();
        check(&format!("{tag} logprob"), &picks.logprobs, &lp, F32_BOUND);
        check(
            &format!("{tag} base logprob"),
            &picks.base_logprobs,
            &blp,
            F32_BOUND,
        );
    }
}

/// The split kernel's picks against the per-row kernel's: the same tokens (but near ties), the
/// log-probs within 2·F32_BOUND; prints the measured difference.
fn split_against_per_row<T: Dtype>(case: &Case<T>, split: &Picks, per_row: &Picks) {
    for (r, w) in case.want.iter().enumerate() {
        if w.3 > 1e-4 || w.3 == 0.0 {
            assert_eq!(split.tokens[r], per_row.tokens[r], "{} row {r}", case.tag);
        }
    }
    for (what, a, b) in [
        ("logprob", &split.logprobs, &per_row.logprobs),
        ("base logprob", &split.base_logprobs, &per_row.base_logprobs),
    ] {
        let e = rel_err(a, &f64s(b));
        let max_abs = a
            .iter()
            .zip(b.iter())
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        eprintln!(
            "{}: split vs per-row {what}: rel {e:.2e}, max |Δ| {max_abs:.2e}",
            case.tag
        );
        assert!(
            e <= 2.0 * F32_BOUND,
            "{}: split vs per-row {what} {e:.3e}",
            case.tag
        );
    }
}

#[test]
fn rule_adapter_matches_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("rule_adapter");
    for (rows, vocab, per_row) in [
        (3, 7, false),
        (4, 1001, true),
        (8, 32000, false),
        (4, 32000, true),
        // Decode's batch of 64: on the per-row kernel every thread's last round of loads is
        // partial (4000 bf16 or 8000 f32 packs of 16 bytes against 1024 or 2048 per round).
        (64, 32000, false),
    ] {
        let f = Case::<f32>::draw(gpu, &mut rng, rows, vocab, per_row);
        let b = Case::<bf16>::draw(gpu, &mut rng, rows, vocab, per_row);
        for kernel in [RuleAdapterKernel::PerRow, RuleAdapterKernel::Auto] {
            let what = format!("{kernel:?}");
            f.check(&f.run(gpu, kernel), &what);
            b.check(&b.run(gpu, kernel), &what);
        }
    }
}

/// The split kernel at decode sizes and awkward splits, against the reference and against the
/// per-row kernel.
#[test]
fn rule_adapter_split_matches_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("rule_adapter_split");
    use RuleAdapterKernel::{Auto, Split};
    for (rows, vocab, per_row, kernel) in [
        // Decode sizes as the planner splits them (32, 32 and 4 chunks of 32000 on an H100).
        (1, 32000, false, Auto),
        (7, 32000, false, Auto),
        (64, 32000, false, Auto),
        // 256 rows take the per-row kernel by default: the split forced, 2 and 7 chunks (7 does
        // not divide 32000: six chunks of 4576 and one of 4544).
        (256, 32000, false, Split(2)),
        (256, 32000, false, Split(7)),
        (5, 32000, true, Split(7)),
        // OLMo's vocabulary (50 chunks of 1008 at batch 1, the last 888), and small ones.
        (1, 50280, false, Auto),
        (3, 50280, true, Split(13)),
        (5, 1000, false, Split(3)),
        // 33 is no whole number of 16-byte packs: the scalar path; chunks of 24 and 9, or of
        // 8 with a last chunk of one logit.
        (4, 33, false, Split(2)),
        (4, 33, true, Split(5)),
        // One chunk: the split kernel's record and combine with nothing to combine.
        (3, 1001, false, Split(1)),
    ] {
        for dtype in ["f32", "bf16"] {
            let plan = gpu.rule_adapter_plan(rows, vocab, kernel).unwrap();
            assert!(
                matches!(plan, RulePlan::Split { .. }),
                "rows {rows} vocab {vocab} {kernel:?}: {plan:?} is not a split"
            );
            let what = format!("{kernel:?} = {plan:?}");
            if dtype == "f32" {
                let case = Case::<f32>::draw(gpu, &mut rng, rows, vocab, per_row);
                let split = case.run(gpu, kernel);
                case.check(&split, &what);
                split_against_per_row(&case, &split, &case.run(gpu, RuleAdapterKernel::PerRow));
            } else {
                let case = Case::<bf16>::draw(gpu, &mut rng, rows, vocab, per_row);
                let split = case.run(gpu, kernel);
                case.check(&split, &what);
                split_against_per_row(&case, &split, &case.run(gpu, RuleAdapterKernel::PerRow));
            }
        }
    }
}

/// The same inputs give the same bits on every launch, and each launch leaves its row counters
/// at zero: a counter left behind would make the next launch's last block miss its turn and
/// leave the poisoned outputs, so launches of other shapes run in between.
#[test]
fn rule_adapter_split_is_deterministic_and_resets_its_counters() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("rule_adapter_split_determinism");
    let rows64 = Case::<f32>::draw(gpu, &mut rng, 64, 32000, false);
    let b1 = Case::<bf16>::draw(gpu, &mut rng, 1, 32000, false);
    let odd = Case::<f32>::draw(gpu, &mut rng, 5, 32000, true);
    let (k64, k1, k7) = (
        RuleAdapterKernel::Auto,
        RuleAdapterKernel::Auto,
        RuleAdapterKernel::Split(7),
    );
    let first = (rows64.run(gpu, k64), b1.run(gpu, k1), odd.run(gpu, k7));
    rows64.check(&first.0, "first");
    b1.check(&first.1, "first");
    odd.check(&first.2, "first");
    for round in 0..3 {
        let again = (rows64.run(gpu, k64), b1.run(gpu, k1), odd.run(gpu, k7));
        assert!(
            again.0 == first.0,
            "64 × 32000 f32, round {round}: bits differ"
        );
        assert!(
            again.1 == first.1,
            "1 × 32000 bf16, round {round}: bits differ"
        );
        assert!(
            again.2 == first.2,
            "5 × 32000 per-row bias, round {round}: bits differ"
        );
    }
}

/// `rule_adapter` (Auto) launches the split kernel at decode sizes and the per-row one at 256
/// rows, as its plan says; seen in a step profile's kernel names. The split is expected at 1, 7
/// and 64 rows on any GPU of 33 SMs or more (every sm_80+ data-centre part).
#[test]
fn rule_adapter_dispatch_takes_the_split_kernel_at_decode_sizes() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("rule_adapter_dispatch");
    for (rows, want) in [
        (1, "rule_adapter_split_f32"),
        (7, "rule_adapter_split_f32"),
        (64, "rule_adapter_split_f32"),
        (256, "rule_adapter_f32"),
    ] {
        let case = Case::<f32>::draw(gpu, &mut rng, rows, 32000, false);
        let plan = gpu
            .rule_adapter_plan(rows, 32000, RuleAdapterKernel::Auto)
            .unwrap();
        gpu.profile_start().unwrap();
        let picks = case.run(gpu, RuleAdapterKernel::Auto);
        let profile = gpu.profile_finish().unwrap();
        let launched: Vec<&str> = profile
            .spans
            .iter()
            .map(|s| s.name)
            .filter(|n| n.starts_with("rule_adapter"))
            .collect();
        eprintln!("rows {rows}: plan {plan:?}, launched {launched:?}");
        assert_eq!(launched, [want], "rows {rows}: plan {plan:?}");
        case.check(&picks, "Auto");
    }
}

#[test]
fn rule_adapter_bad_arguments_are_refused() {
    let Some(gpu) = gpu() else { return };
    let (rows, vocab) = (4, 1000);
    let logits = gpu.zeros::<f32>(rows * vocab).unwrap();
    let bias = gpu.zeros::<f32>(vocab).unwrap();
    let eos_bias = gpu.zeros::<f32>(rows).unwrap();
    let mut tokens = gpu.upload(&vec![u32::MAX; rows]).unwrap();
    let (mut lp, mut blp) = (poisoned::<f32>(gpu, rows), poisoned::<f32>(gpu, rows));
    let mut short = gpu.zeros::<f32>(rows - 1).unwrap();
    let auto = RuleAdapterKernel::Auto;
    let mut err =
        |kernel, vocab, bias: &DeviceBuffer<f32>, eos_bias: &DeviceBuffer<f32>, short_lp| {
            let out = RuleAdapterOutput {
                tokens: &mut tokens,
                logprobs: if short_lp { &mut short } else { &mut lp },
                base_logprobs: &mut blp,
            };
            gpu.rule_adapter_with(kernel, &logits, vocab, bias, 2, eos_bias, out)
                .unwrap_err()
                .to_string()
        };
    let wrong_bias = gpu.zeros::<f32>(vocab + 1).unwrap();
    let e = err(auto, vocab, &wrong_bias, &eos_bias, false);
    assert!(
        e.contains("rule_adapter_f32") && e.contains("bias has 1001"),
        "{e}"
    );
    let e = err(auto, vocab, &bias, &bias, false);
    assert!(
        e.contains("eos_bias has 1000") && e.contains("need 4"),
        "{e}"
    );
    let e = err(auto, vocab, &bias, &eos_bias, true);
    assert!(e.contains("logprobs has 3"), "{e}");
    let e = err(auto, 0, &bias, &eos_bias, false);
    assert!(e.contains("logits") && e.contains("rows of 0"), "{e}");
    let e = err(auto, 3000, &bias, &eos_bias, false);
    assert!(
        e.contains("logits has 4000") && e.contains("rows of 3000"),
        "{e}"
    );
    // A forced split beyond the workspace (256 rows × 64 chunks = 16384 records).
    let big = gpu.zeros::<f32>(256 * 32000).unwrap();
    let big_bias = gpu.zeros::<f32>(32000).unwrap();
    let big_eos = gpu.zeros::<f32>(256).unwrap();
    let mut big_tokens = gpu.zeros::<u32>(256).unwrap();
    let (mut big_lp, mut big_blp) = (poisoned::<f32>(gpu, 256), poisoned::<f32>(gpu, 256));
    let out = RuleAdapterOutput {
        tokens: &mut big_tokens,
        logprobs: &mut big_lp,
        base_logprobs: &mut big_blp,
    };
    let e = gpu
        .rule_adapter_with(
            RuleAdapterKernel::Split(64),
            &big,
            32000,
            &big_bias,
            2,
            &big_eos,
            out,
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("64 chunks per row") && e.contains("16384 records"),
        "{e}"
    );
    // Nothing was launched: the outputs are still poisoned.
    assert!(gpu
        .download(&tokens)
        .unwrap()
        .iter()
        .all(|&t| t == u32::MAX));
    assert!(gpu.download(&lp).unwrap().iter().all(|v| v.is_nan()));
    assert!(gpu.download(&big_lp).unwrap().iter().all(|v| v.is_nan()));
}
