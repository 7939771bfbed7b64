//! CPU decode speed: one greedy step (one token through the whole model with a KV cache) of
//! SmolLM2-135M-Instruct after a 32-token prompt. Criterion's "elements/s" here is tokens/s.
//!
//! Needs models/SmolLM2-135M-Instruct.Q4_1.gguf (tools/fetch_smollm2.sh); converts it once into
//! target/bench-models/smollm2-135m-instruct.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use implicit::io::convert::convert_gguf;
use implicit::model::{KvCache, Logits, Transformer};
use std::path::Path;

fn decode(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let gguf = root.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !gguf.is_file() {
        eprintln!(
            "SKIPPED decode bench: {} is absent (run tools/fetch_smollm2.sh)",
            gguf.display()
        );
        return;
    }
    let dir = root.join("target/bench-models/smollm2-135m-instruct");
    if !dir.join("model.safetensors").is_file() {
        convert_gguf(&gguf, &dir).expect("convert SmolLM2");
    }
    let model = Transformer::load(&dir).expect("load SmolLM2");
    let prompt: Vec<u32> = (0..32).map(|i| 1000 + i * 37).collect();
    let mut prefilled = KvCache::new(&model.config);
    model
        .forward(&mut [(&prompt, &mut prefilled)], Logits::Last)
        .unwrap();

    let mut group = c.benchmark_group("decode");
    group.sample_size(20);
    group.throughput(Throughput::Elements(1));
    group.bench_function("smollm2-135m/one-token-after-32", |b| {
        b.iter_batched(
            || prefilled.clone(),
            |mut cache| {
                model
                    .forward(&mut [(&[42u32][..], &mut cache)], Logits::Last)
                    .unwrap()
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
