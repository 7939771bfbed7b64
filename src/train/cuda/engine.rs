//! The GPU's [`Engine`]: opens the GPU (and, with data parallelism, joins the other ranks),
//! loads the model or the checkpoint being resumed into a [`CudaTrainer`], and hands it to the
//! loop every device shares (`train::run`).

use super::trainer::{CudaTrainer, TrainerSetup};
use crate::backend::cuda::{nccl_unique_id, Communicator, CudaBackend, NCCL_ID_BYTES};
use crate::bail;
use crate::error::Result;
use crate::io::atomic::write_atomic;
use crate::model::train::TrainSequence;
use crate::train::launch::DataParallel;
use crate::train::plan::MemoryPlan;
use crate::train::{
    adamw_config, check_grad_norm, prepare, run, Engine, Precision, TrainOptions, TrainSummary,
};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;
use std::time::Instant;

use crate::train::checkpoint::{self, ParamValues};

/// Opens the GPU (or fails with the reason none can be used, before anything is read or
/// written), loads the model (or the checkpoint being resumed) onto it, and runs.
pub(in crate::train) fn train(opts: &TrainOptions) -> Result<TrainSummary> {
    if opts.recipe.precision != Precision::Bf16 {
        bail!(
            "--device cuda trains with bf16 parameters (and fp32 master weights and moments, or \
             bf16 moments with --optimizer-state bf16); use --precision bf16 (or --device cpu \
             for fp32 parameters)"
        );
    }
    let dp = opts.data_parallel.as_ref();
    let gpu = CudaBackend::require(dp.map_or(0, |d| d.rank), "--device cuda: no usable GPU")?;
    let parallel = match dp {
        Some(dp) => Some(join(&gpu, dp)?),
        None => None,
    };
    let plan = prepare(opts)?;
    let t0 = Instant::now();
    let setup = TrainerSetup {
        adamw: adamw_config(opts),
        placement: opts.optimizer_state,
        parallel,
        // The run's seed also seeds the stochastic rounding of bf16 optimizer state.
        seed: opts.seed,
    };
    let mut trainer = CudaTrainer::from_dir(&gpu, plan.config.clone(), &plan.source, setup)?;
    // `auto` is resolved now that the parameters, gradients and optimizer state take their
    // memory: the plan's activations for the longest example must fit what is left.
    let longest = plan.examples.iter().map(|e| e.ids.len()).max().unwrap_or(0);
    let free = gpu.memory_use()?.free_bytes;
    trainer.checkpointing = opts.checkpointing.resolve(
        &plan.config,
        longest,
        opts.recipe.micro_batch,
        opts.optimizer_state,
        free,
    );
    let memory_plan = MemoryPlan::new(
        &plan.config,
        longest,
        opts.recipe.micro_batch,
        trainer.checkpointing,
        opts.optimizer_state,
    );
    if opts.memory_report {
        let device = gpu.memory_use()?.total_bytes;
        eprintln!(
            "{} (the longest example, padded micro-batches)",
            memory_plan.describe(None, Some(device))
        );
    }
    eprintln!(
        "loaded {} ({} parameters) onto {} in {:.2}s",
        plan.source.display(),
        plan.config.num_parameters(),
        gpu.device_name(),
        t0.elapsed().as_secs_f64()
    );
    let report = opts.memory_report.then_some(memory_plan);
    run(opts, plan, &mut CudaEngine(trainer, report))
}

/// Joins the run's ranks: rank 0 draws the NCCL id and leaves it in the rendezvous file for
/// the others; it removes the file once all have joined.
fn join(gpu: &CudaBackend, dp: &DataParallel) -> Result<Communicator> {
    let id: [u8; NCCL_ID_BYTES] = if dp.rank == 0 {
        let id = nccl_unique_id()?;
        write_atomic(&dp.id_file, &id)?;
        id
    } else {
        let bytes = dp.read_id(Duration::from_secs(300))?;
        match bytes.try_into() {
            Ok(id) => id,
            Err(b) => bail!(
                "{}: {} bytes, an NCCL id has {NCCL_ID_BYTES}",
                dp.id_file.display(),
                Vec::len(&b)
            ),
        }
    };
    let comm = Communicator::new(gpu, dp.rank, dp.world, &id)?;
    if dp.rank == 0 {
        let _ = std::fs::remove_file(&dp.id_file);
    }
    eprintln!("rank {} of {} on {}", dp.rank, dp.world, gpu.device_name());
    Ok(comm)
}

/// The trainer, and the plan to set the measured peak beside after the first step.
struct CudaEngine<'g>(CudaTrainer<'g>, Option<MemoryPlan>);

impl Engine for CudaEngine<'_> {
    fn load_state(&mut self, tensors: &HashMap<String, Vec<f32>>) -> Result<()> {
        self.0.load_state(tensors)
    }

    fn step(
        &mut self,
        micro_batches: &[Vec<TrainSequence>],
        scale: f64,
        lr: f32,
        max_grad_norm: f32,
    ) -> Result<(f64, f32)> {
        let t = &mut self.0;
        t.zero_grads()?;
        // Each rank runs every world-th micro-batch; the gradients are summed in `step`.
        let (rank, world) = t.rank();
        let mut loss = 0.0;
        for seqs in micro_batches.iter().skip(rank).step_by(world) {
            loss += t.accumulate(seqs, scale)?;
        }
        let loss = t.sum_over_ranks(loss)?;
        let grad_norm = t.step(lr, max_grad_norm)?;
        check_grad_norm(grad_norm)?;
        if let Some(plan) = self.1.take() {
            let used = t.gpu().memory_use()?;
            eprintln!(
                "{}",
                plan.describe(Some(used.peak_used_bytes), Some(used.total_bytes))
            );
        }
        Ok((loss, grad_norm))
    }

    fn is_writer(&self) -> bool {
        self.0.rank().0 == 0
    }

    fn write_tensors(&self, dir: Option<&Path>, layout: &[(String, Vec<usize>)]) -> Result<()> {
        // Collective: every rank takes part in gathering the optimizer state.
        let state = self.0.state_tensors()?;
        let Some(dir) = dir else {
            return Ok(());
        };
        let values = self.0.parameter_values()?;
        checkpoint::write_checkpoint_tensors(
            dir,
            layout,
            values.iter().map(|v| ParamValues::BF16(v)),
            state.iter().map(|(name, v)| (name, &v[..])),
        )
    }
}
