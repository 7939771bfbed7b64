//! What a training run on the GPU costs, computed from the model's shape before anything is
//! allocated: the bytes the trainer keeps between steps (parameters, gradients, optimizer
//! state), the activations one micro-batch keeps for its backward, the largest working set on
//! top, and the model FLOPs per token. `train --memory-report` and `bench train` print this
//! plan beside the peak they measured, so that the model here is checked against the GPU.
//!
//! The byte counts follow `train::cuda::CudaTrainer` buffer by buffer (train/cuda/trainer/pass.rs):
//! - between steps, per parameter: the bf16 value (2), fp32 master (4), two fp32 moments (8)
//!   and the fp32 gradient (4); 18 bytes (6 with the master and moments on the host, 10 with
//!   bf16 moments and no master).
//! - kept per token and layer for the backward: the layer's input and the residual after
//!   attention (f32, 2·4d), q, k, v and the attention output (bf16, 2·(2q + 2kv)), the
//!   log-sum-exp (4 per head), gate and up (bf16, 2·2f); with checkpointing the input only (4d).
//! - the largest working set on top, per token: one layer's backward (its recomputed
//!   activations under checkpointing, the f32 residual gradient and its bf16 copy, the norm's
//!   input gradient, the SwiGLU gradients, dq/dk/dv and the flash dq accumulator), or the loss
//!   chunk (bf16 logits and their gradient for `logits_chunk_rows` rows).

use crate::model::ModelConfig;

/// Where the trainer keeps the fp32 master weights and AdamW moments, or whether it keeps bf16
/// moments and no master.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerPlacement {
    /// On the GPU with the parameters (18 bytes per parameter there).
    #[default]
    Device,
    /// In page-locked host memory, copied through the GPU at each step (6 bytes per parameter
    /// on the GPU, 12 on the host).
    Host,
    /// On the GPU without an fp32 master: bf16 moments, the parameter and moments written back
    /// with stochastic rounding (10 bytes per parameter; other numerics than fp32 master
    /// weights, so not the default).
    Bf16,
}

impl OptimizerPlacement {
    /// GPU bytes per parameter between steps: the bf16 value and fp32 gradient, plus the fp32
    /// master and two moments when they are on the GPU, or two bf16 moments.
    pub fn device_bytes_per_parameter(self) -> u64 {
        match self {
            OptimizerPlacement::Device => 2 + 4 + 4 + 4 + 4,
            OptimizerPlacement::Host => 2 + 4,
            OptimizerPlacement::Bf16 => 2 + 4 + 2 + 2,
        }
    }

    /// Host bytes per parameter: the master and the moments when they are kept there.
    pub fn host_bytes_per_parameter(self) -> u64 {
        match self {
            OptimizerPlacement::Device | OptimizerPlacement::Bf16 => 0,
            OptimizerPlacement::Host => 4 + 4 + 4,
        }
    }
}

/// Bytes of bf16 logits (and as many of their gradient) the loss holds at once
/// (`CudaTrainer::logits_chunk_rows` is derived from it).
pub const LOGITS_CHUNK_BYTES: u64 = 1 << 28;

/// Parameters of the matrices that multiply activations: every layer's projections and the
/// LM head (the embedding's when tied); not the embedding lookup or the norms.
pub fn matmul_parameters(c: &ModelConfig) -> u64 {
    let (d, f, v) = (
        c.hidden_size as u64,
        c.intermediate_size as u64,
        c.vocab_size as u64,
    );
    let (q, kv) = (
        (c.num_heads * c.head_dim) as u64,
        (c.num_kv_heads * c.head_dim) as u64,
    );
    c.num_layers as u64 * (2 * d * q + 2 * d * kv + 3 * d * f) + v * d
}

/// Model FLOPs per trained token (PaLM's convention): 6·N + 12·layers·(heads·head_dim)·seq,
/// N from [`matmul_parameters`]; recomputation does not count.
pub fn flops_per_token(c: &ModelConfig, seq: usize) -> f64 {
    6.0 * matmul_parameters(c) as f64
        + 12.0 * (c.num_layers * c.num_heads * c.head_dim) as f64 * seq as f64
}

/// The memory of one training configuration, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MemoryPlan {
    pub parameters: u64,
    pub placement: OptimizerPlacement,
    /// Parameters, gradients and (on the GPU) optimizer state, kept between steps.
    pub state: u64,
    /// Optimizer state in page-locked host memory.
    pub host: u64,
    /// What the forward of one micro-batch keeps for its backward.
    pub activations: u64,
    /// The largest working set on top of the kept activations.
    pub workspace: u64,
}

impl MemoryPlan {
    /// The plan for micro-batches of `micro_batch` sequences of `seq` tokens.
    pub fn new(
        c: &ModelConfig,
        seq: usize,
        micro_batch: usize,
        checkpointing: bool,
        placement: OptimizerPlacement,
    ) -> Self {
        let (d, f, v) = (
            c.hidden_size as u64,
            c.intermediate_size as u64,
            c.vocab_size as u64,
        );
        let (q, kv) = (
            (c.num_heads * c.head_dim) as u64,
            (c.num_kv_heads * c.head_dim) as u64,
        );
        let (heads, layers) = (c.num_heads as u64, c.num_layers as u64);
        let tokens = (seq * micro_batch) as u64;
        let layer_kept = 2 * 4 * d + 2 * (2 * q + 2 * kv) + 4 * heads + 2 * 2 * f;
        let per_layer = if checkpointing { 4 * d } else { layer_kept };
        // The embedding output and the last layer's output stay alive through the loss.
        let activations = tokens * (layers * per_layer + 4 * d);
        // One layer's backward: its recomputed activations (checkpointing) and the larger of
        // its two halves' working sets.
        let recomputed = if checkpointing { layer_kept - 4 * d } else { 0 };
        // MLP: the SwiGLU backward (dx, dy, d_act, d_gate, d_up), then dx, dy, d_gate, d_up,
        // h, dh and the norm's dx together.
        let mlp = (4 * d + 2 * d + 3 * 2 * f).max(4 * d + 2 * d + 2 * 2 * f + 2 * d + 2 * 4 * d);
        // Attention: the flash backward (dx, d_attn, rotated q and k, clamped v, dq, dk, dv,
        // the f32 dq accumulator and D), then dx, dq, dk, dv, h, dh and the norm's dx.
        let attention = (4 * d + 2 * (3 * q + 4 * kv) + 4 * q + 4 * heads)
            .max(4 * d + 2 * (q + 2 * kv) + 2 * d + 2 * 4 * d);
        let layer_backward = tokens * (recomputed + mlp.max(attention));
        let chunk_rows = (LOGITS_CHUNK_BYTES / (4 * v.max(1))).max(1).min(tokens);
        let loss = 2 * 2 * chunk_rows * v + tokens * 4 * d;
        // With the state on the host, the step stages one tensor's master and moments.
        let largest = (v * d).max(d * f).max(d * q);
        let staging = match placement {
            OptimizerPlacement::Device | OptimizerPlacement::Bf16 => 0,
            OptimizerPlacement::Host => 3 * 4 * largest,
        };
        let parameters = c.num_parameters() as u64;
        MemoryPlan {
            parameters,
            placement,
            state: parameters * placement.device_bytes_per_parameter(),
            host: parameters * placement.host_bytes_per_parameter(),
            activations,
            workspace: layer_backward.max(loss).max(staging),
        }
    }

    /// All of it: what the GPU must hold at the peak of a step.
    pub fn total(&self) -> u64 {
        self.state + self.activations + self.workspace
    }

    /// A few lines for a terminal, with the measured peak when there is one.
    pub fn describe(&self, measured_peak: Option<u64>, device_bytes: Option<u64>) -> String {
        let gib = |b: u64| format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64);
        let mut s = format!(
            "memory plan: {} parameters; GPU: state {} ({} bytes each: bf16 value, fp32 \
             gradient{}) + activations {} + workspace {} = {}",
            self.parameters,
            gib(self.state),
            self.placement.device_bytes_per_parameter(),
            match self.placement {
                OptimizerPlacement::Device => ", fp32 master and moments",
                OptimizerPlacement::Host => "",
                OptimizerPlacement::Bf16 => ", bf16 moments, no fp32 master",
            },
            gib(self.activations),
            gib(self.workspace),
            gib(self.total())
        );
        if self.host > 0 {
            s += &format!(
                "; host: fp32 master and moments {} (page-locked)",
                gib(self.host)
            );
        }
        if let Some(peak) = measured_peak {
            s += &format!(
                "\nmeasured peak: {} ({:+.1}% against the plan)",
                gib(peak),
                100.0 * (peak as f64 / self.total() as f64 - 1.0)
            );
        }
        if let Some(device) = device_bytes {
            if self.total() > device {
                s += &format!(
                    "\ndoes not fit the device's {}: use --checkpointing, fewer tokens per \
                     micro-batch, --optimizer-state bf16 (bf16 moments, no fp32 master: other \
                     numerics) or --optimizer-state host",
                    gib(device)
                );
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama2_7b() -> ModelConfig {
        ModelConfig::from_file(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/models/llama2-7b.json"),
        )
        .unwrap()
    }

    #[test]
    fn llama2_7b_counts() {
        let c = llama2_7b();
        assert_eq!(c.num_parameters(), 6_738_415_616);
        // Every parameter but the embedding table and the norms multiplies activations.
        let norms = 2 * 32 * 4096 + 4096;
        assert_eq!(matmul_parameters(&c), 6_738_415_616 - 32000 * 4096 - norms);
        let expected = 6.0 * matmul_parameters(&c) as f64 + 12.0 * 32.0 * 4096.0 * 2048.0;
        assert_eq!(flops_per_token(&c, 2048), expected);
    }

    #[test]
    fn llama2_7b_plan() {
        let c = llama2_7b();
        let kept = MemoryPlan::new(&c, 2048, 1, false, OptimizerPlacement::Device);
        assert_eq!(kept.state, 6_738_415_616 * 18);
        // Per token and layer: 2·4·4096 + 2·4·4096 + 4·32 + 4·11008 = 109696 bytes.
        assert_eq!(kept.activations, 2048 * (32 * 109_696 + 4 * 4096));
        let ckpt = MemoryPlan::new(&c, 2048, 1, true, OptimizerPlacement::Device);
        assert_eq!(ckpt.activations, 2048 * (32 * 4 * 4096 + 4 * 4096));
        assert!(
            ckpt.workspace > kept.workspace,
            "recomputation adds one layer"
        );
        assert!(ckpt.total() < kept.total());
        // The state alone is 113 GiB: more than an 80 GB H100, less than an H200.
        let h100 = 80u64 * 1_000_000_000;
        assert!(kept.describe(None, Some(h100)).contains("does not fit"));
        assert!(!ckpt
            .describe(Some(ckpt.total()), Some(141 << 30))
            .contains("does not fit"));
        let hint = kept.describe(None, Some(h100));
        assert!(hint.contains("--optimizer-state bf16") && hint.contains("--optimizer-state host"));
    }

    #[test]
    fn llama2_7b_bf16_state_fits_an_h100() {
        let c = llama2_7b();
        assert_eq!(OptimizerPlacement::Bf16.device_bytes_per_parameter(), 10);
        assert_eq!(OptimizerPlacement::Bf16.host_bytes_per_parameter(), 0);
        let bf16 = MemoryPlan::new(&c, 2048, 1, true, OptimizerPlacement::Bf16);
        assert_eq!(bf16.state, 6_738_415_616 * 10);
        assert_eq!(bf16.host, 0);
        let device = MemoryPlan::new(&c, 2048, 1, true, OptimizerPlacement::Device);
        // Only the state differs: no staging buffers, the same activations and workspace.
        assert_eq!(
            (bf16.activations, bf16.workspace),
            (device.activations, device.workspace)
        );
        // 62.8 GiB of state: an 80 GB H100 (80e9 bytes = 74.5 GiB) holds it with checkpointing.
        let h100 = 80u64 * 1_000_000_000;
        assert!(bf16.total() < h100, "{}", bf16.describe(None, Some(h100)));
        let text = bf16.describe(None, Some(h100));
        assert!(
            text.contains("10 bytes each") && text.contains("bf16 moments"),
            "{text}"
        );
        assert!(
            !text.contains("does not fit") && !text.contains("host:"),
            "{text}"
        );
    }

    #[test]
    fn placements_parse_from_the_command_line_and_serialise() {
        use clap::ValueEnum;
        for (name, p) in [
            ("device", OptimizerPlacement::Device),
            ("host", OptimizerPlacement::Host),
            ("bf16", OptimizerPlacement::Bf16),
        ] {
            assert_eq!(OptimizerPlacement::from_str(name, false), Ok(p));
            assert_eq!(serde_json::to_value(p).unwrap(), name);
        }
    }
}
