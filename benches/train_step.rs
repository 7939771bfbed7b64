//! CPU training speed: one forward + backward of stories260k (converted from GGUF) over a
//! micro-batch of 4 sequences of 128 tokens. Criterion's "elements/s" here is tokens/s.
//!
//! Needs ../shared/data (or $IMPLICIT_DATA) for models/stories260k-f32.gguf.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use implicit::autograd::Tape;
use implicit::io::convert::convert_gguf;
use implicit::model::train::{TrainModel, TrainSequence};
use std::path::{Path, PathBuf};

fn train_step(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let data = std::env::var_os("IMPLICIT_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("../shared/data"));
    let gguf = data.join("models/stories260k-f32.gguf");
    if !gguf.is_file() {
        eprintln!("SKIPPED train_step bench: {} is absent", gguf.display());
        return;
    }
    let dir = root.join("target/bench-models/stories260k");
    if !dir.join("model.safetensors").is_file() {
        convert_gguf(&gguf, &dir).expect("convert stories260k");
    }
    let model = TrainModel::<f32>::load(&dir).expect("load stories260k");
    let (seqs, len) = (4, 128);
    let ids: Vec<Vec<u32>> = (0..seqs)
        .map(|s| {
            (0..len)
                .map(|i| ((i * 7 + s * 13) % 500) as u32 + 3)
                .collect()
        })
        .collect();
    let mask: Vec<bool> = (0..len).map(|i| i >= len / 4).collect();
    let batch: Vec<TrainSequence> = ids
        .iter()
        .map(|ids| TrainSequence {
            ids,
            loss_mask: &mask,
        })
        .collect();

    let mut group = c.benchmark_group("train_step");
    group.sample_size(20);
    group.throughput(Throughput::Elements((seqs * len) as u64));
    group.bench_function("stories260k/forward+backward/4x128", |b| {
        b.iter(|| {
            let mut tape = Tape::new();
            let vars = model.bind(&mut tape);
            let loss = model
                .loss(&mut tape, &vars, &batch, 1.0 / seqs as f64)
                .unwrap();
            tape.backward(loss)
        })
    });
    group.finish();
}

criterion_group!(benches, train_step);
criterion_main!(benches);
