//! `implicit bench`'s commands and their arguments (clap), each handed to the `bench` module,
//! which measures, summarises and reports: `bench kernels` times every CUDA kernel at the
//! paper's shapes, `bench train` full finetuning steps, `bench generate` greedy decoding.

mod generate;
mod kernels;
mod train;

use crate::bench;
use crate::error::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Time every CUDA kernel at Llama-2-7B's shapes against ceilings measured in the same run.
    ///
    /// Shapes: d 4096, FFN 11008, 32 heads of 128, sequences of 2048, vocab 32000. Ceilings:
    /// the device-to-device copy bandwidth (memory-bound kernels), cuBLAS at the same shape
    /// (GEMMs), PyTorch SDPA from tools/bench_sdpa.py (attention, with --sdpa). Needs a
    /// `--features cuda` build.
    Kernels(kernels::KernelsArgs),
    /// Full finetuning steps of a model shape on the GPU: tokens/s, model FLOPs utilisation
    /// and peak memory, beside PyTorch's (tools/bench_train_torch.py, --torch).
    Train(train::TrainArgs),
    /// Greedy decoding tokens/s of a model folder at several batch sizes (prefill, decode
    /// steps, bandwidth against the copy ceiling) and its load time in GB/s, beside
    /// transformers' generate (tools/bench_generate_torch.py, --torch).
    Generate(generate::GenerateBenchArgs),
}

pub fn run(command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Kernels(args) => bench::kernels::run(args.into()),
        BenchCommand::Train(args) => bench::train::run(args.into()),
        BenchCommand::Generate(args) => bench::generate::run(args.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::BenchCommand;
    use crate::bench::generate::GenerateBenchOptions;
    use crate::bench::kernels::KernelsBenchOptions;
    use crate::bench::train::TrainBenchOptions;
    use crate::train::plan::{CheckpointingChoice, OptimizerPlacement};
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: BenchCommand,
    }

    fn parse(argv: &[&str]) -> BenchCommand {
        Cli::try_parse_from([&["bench"], argv].concat())
            .unwrap()
            .command
    }

    /// No flags give the defaults the benchmarks document (bench::generate's tests start from
    /// these), and every flag reaches its option.
    #[test]
    fn arguments_become_the_benchmarks_options() {
        let BenchCommand::Generate(g) = parse(&["generate", "--model", "M"]) else {
            panic!("not generate")
        };
        assert_eq!(
            GenerateBenchOptions::from(g),
            GenerateBenchOptions {
                model: "M".into(),
                batch_sizes: vec![1, 64],
                prompt_len: 128,
                new_tokens: 128,
                seed: 0,
                torch: None,
                no_cuda_graphs: false,
                json: None,
            }
        );
        let BenchCommand::Generate(g) = parse(&[
            "generate",
            "--model",
            "M",
            "--batch-sizes",
            "2,3",
            "--prompt-len",
            "5",
            "--new-tokens",
            "6",
            "--seed",
            "7",
            "--torch",
            "T",
            "--no-cuda-graphs",
            "--json",
            "J",
        ]) else {
            panic!("not generate")
        };
        assert_eq!(
            GenerateBenchOptions::from(g),
            GenerateBenchOptions {
                model: "M".into(),
                batch_sizes: vec![2, 3],
                prompt_len: 5,
                new_tokens: 6,
                seed: 7,
                torch: Some("T".into()),
                no_cuda_graphs: true,
                json: Some("J".into()),
            }
        );

        let BenchCommand::Kernels(k) = parse(&[
            "kernels",
            "--quick",
            "--micro-batches",
            "1,2",
            "--samples",
            "5",
            "--filter",
            "gemm,rope",
            "--no-wgmma",
            "--sdpa",
            "S",
            "--json",
            "J",
        ]) else {
            panic!("not kernels")
        };
        assert_eq!(
            KernelsBenchOptions::from(k),
            KernelsBenchOptions {
                json: Some("J".into()),
                quick: true,
                sdpa: Some("S".into()),
                micro_batches: vec![1, 2],
                samples: Some(5),
                filter: vec!["gemm".into(), "rope".into()],
                no_wgmma: true,
            }
        );
        let BenchCommand::Kernels(k) = parse(&["kernels"]) else {
            panic!("not kernels")
        };
        assert_eq!(KernelsBenchOptions::from(k), KernelsBenchOptions::default());

        let BenchCommand::Train(t) = parse(&["train", "--config", "C"]) else {
            panic!("not train")
        };
        assert_eq!(
            TrainBenchOptions::from(t),
            TrainBenchOptions {
                config: "C".into(),
                layers: None,
                seq: 2048,
                micro_batch: 1,
                accumulation: 1,
                steps: 5,
                warmup: 2,
                checkpointing: CheckpointingChoice::Auto,
                keep_layers: None,
                optimizer_state: OptimizerPlacement::Device,
                torch: None,
                json: None,
                seed: 0,
                profile: false,
            }
        );
        let BenchCommand::Train(t) = parse(&["train", "--config", "C", "--profile"]) else {
            panic!("not train")
        };
        assert!(TrainBenchOptions::from(t).profile);
        // --checkpointing alone (tools/gpu_check.sh's form) is `on`; --keep-layers N instead.
        let train = |args: &[&str]| match parse(args) {
            BenchCommand::Train(t) => {
                let o = TrainBenchOptions::from(t);
                (o.checkpointing, o.keep_layers, o.optimizer_state)
            }
            _ => panic!("not train"),
        };
        let bare = [
            "train",
            "--config",
            "C",
            "--checkpointing",
            "--optimizer-state",
            "bf16",
        ];
        assert_eq!(
            train(&bare),
            (CheckpointingChoice::On, None, OptimizerPlacement::Bf16)
        );
        for (value, choice) in [
            ("auto", CheckpointingChoice::Auto),
            ("on", CheckpointingChoice::On),
            ("off", CheckpointingChoice::Off),
        ] {
            let args = ["train", "--config", "C", "--checkpointing", value];
            assert_eq!(train(&args), (choice, None, OptimizerPlacement::Device));
        }
        let keep = ["train", "--config", "C", "--keep-layers", "24"];
        assert_eq!(
            train(&keep),
            (
                CheckpointingChoice::Auto,
                Some(24),
                OptimizerPlacement::Device
            )
        );
        for bad in [
            &["train", "--config", "C", "--checkpointing", "sometimes"][..],
            &[
                "train",
                "--config",
                "C",
                "--checkpointing",
                "on",
                "--keep-layers",
                "2",
            ],
        ] {
            assert!(Cli::try_parse_from([&["bench"], bad].concat()).is_err());
        }
    }
}
