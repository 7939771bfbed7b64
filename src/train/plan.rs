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
//!   log-sum-exp (4 per head), gate and up (bf16, 2·2f); for a layer that [`Checkpointing`]
//!   recomputes, the input only (4d).
//! - the largest working set on top, per token: one layer's backward (its recomputed
//!   activations when the last layer is recomputed, the f32 residual gradient and its bf16
//!   copy, the norm's input gradient, the SwiGLU gradients, dq/dk/dv and the flash dq
//!   accumulator), or the loss chunk (bf16 logits and their gradient for `logits_chunk_rows`
//!   rows).
//!
//! Selective checkpointing keeps the activations of the last layers: the backward meets them
//! first, so the peak (at the last layer's backward) holds every other layer's kept bytes plus
//! one layer's, however many are kept. Keeping the first layers instead would add one
//! recomputed layer on top ([`MemoryPlan::new`]). `auto` ([`choose`]) keeps as
//! many as the free memory holds.

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

/// Which layers keep their activations for the backward; the others keep only their input
/// and run their forward again in the backward (one more forward of those layers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Checkpointing {
    /// Every layer keeps its activations: no recomputation.
    #[default]
    Off,
    /// Every layer keeps its input only and is recomputed.
    On,
    /// The last `n` layers keep their activations (all of them when `n` is the number of
    /// layers or more), the others are recomputed.
    KeepLast(usize),
}

impl Checkpointing {
    /// How many of `layers` layers (the last ones) keep their activations.
    pub fn kept_layers(self, layers: usize) -> usize {
        match self {
            Checkpointing::Off => layers,
            Checkpointing::On => 0,
            Checkpointing::KeepLast(n) => n.min(layers),
        }
    }

    /// Whether layer `layer` (from 0) of `layers` keeps its activations.
    pub fn keeps(self, layer: usize, layers: usize) -> bool {
        layer + self.kept_layers(layers) >= layers
    }
}

/// What a command line or a config asks for: the plan's choice, or every layer recomputed, or
/// none.
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
pub enum CheckpointingChoice {
    /// As many layers keep their activations as the free memory holds ([`choose`]).
    #[default]
    Auto,
    /// Every layer is recomputed in the backward.
    On,
    /// No layer is recomputed.
    Off,
}

impl CheckpointingChoice {
    /// The policy: `auto` by [`choose`] for `free_bytes` on the device after the trainer's
    /// state (the other arguments are [`MemoryPlan::new`]'s).
    pub fn resolve(
        self,
        c: &ModelConfig,
        seq: usize,
        micro_batch: usize,
        placement: OptimizerPlacement,
        free_bytes: u64,
    ) -> Checkpointing {
        match self {
            CheckpointingChoice::Auto => choose(c, seq, micro_batch, placement, free_bytes),
            CheckpointingChoice::On => Checkpointing::On,
            CheckpointingChoice::Off => Checkpointing::Off,
        }
    }
}

/// Device memory `auto` leaves unplanned: the 7B run's pool reserved 0.42 GiB above its peak
/// use (64.59 against 64.17 GiB, benches/NOTES.md), which the plan matched to 0.01 GiB; 1 GiB
/// covers that fragmentation twice over and the few small buffers the plan does not count.
pub const AUTO_MARGIN_BYTES: u64 = 1 << 30;

/// `--checkpointing auto`: the most layers that keep their activations while the activations
/// and the workspace fit `free_bytes` (the device's free memory once the parameters,
/// gradients and optimizer state are allocated) less [`AUTO_MARGIN_BYTES`]. When not even
/// full checkpointing fits, full checkpointing (the smallest plan; the step will fail to
/// allocate and `describe` says what to change).
pub fn choose(
    c: &ModelConfig,
    seq: usize,
    micro_batch: usize,
    placement: OptimizerPlacement,
    free_bytes: u64,
) -> Checkpointing {
    let budget = free_bytes.saturating_sub(AUTO_MARGIN_BYTES);
    let fits = |kept: usize| {
        let p = MemoryPlan::new(
            c,
            seq,
            micro_batch,
            Checkpointing::KeepLast(kept),
            placement,
        );
        p.activations + p.workspace <= budget
    };
    // The plan grows with every kept layer (from zero to one by at most the loss chunk's
    // excess over a layer's backward: the last layer's activations are at the peak either
    // way), so the first that fits from the top is the most.
    match (0..=c.num_layers).rev().find(|&k| fits(k)) {
        Some(k) if k == c.num_layers => Checkpointing::Off,
        Some(k) if k > 0 => Checkpointing::KeepLast(k),
        _ => Checkpointing::On,
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
    /// The model's layers, and how many of them (the last ones) keep their activations for
    /// the backward; the others are recomputed.
    pub layers: usize,
    pub kept_layers: usize,
}

impl MemoryPlan {
    /// The plan for micro-batches of `micro_batch` sequences of `seq` tokens under `policy`.
    pub fn new(
        c: &ModelConfig,
        seq: usize,
        micro_batch: usize,
        policy: Checkpointing,
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
        let kept = policy.kept_layers(c.num_layers) as u64;
        // The last layer's output stays alive through the loss (and to the end of the pass).
        let activations = tokens * (kept * layer_kept + (layers - kept) * 4 * d + 4 * d);
        // One layer's backward: the larger of its two halves' working sets, and its recomputed
        // activations when it is the last layer's (the peak is at the first layer the backward
        // meets: every earlier layer's kept bytes are still held then; a kept last layer's own
        // activations are among the kept ones).
        let recomputed = if kept == 0 { layer_kept - 4 * d } else { 0 };
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
            layers: c.num_layers,
            kept_layers: kept as usize,
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
        s += &format!(
            "; checkpointing: {} of {} layers keep their activations, {} recompute",
            self.kept_layers,
            self.layers,
            self.layers - self.kept_layers
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
mod tests;
