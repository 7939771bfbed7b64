//! Training parity with PyTorch on the committed fixtures: the paper's per-example mean loss and
//! every parameter's gradient (tools/make_fixtures.py computes them with transformers).

mod common;

use implicit::autograd::Tape;
use implicit::model::train::{TrainModel, TrainSequence};
use implicit::optim::{clip_grad_norm, AdamW, AdamWConfig, ParamMut, ParamRef};
use safetensors::SafeTensors;

fn read_f32(st: &SafeTensors, name: &str) -> Vec<f32> {
    let t = st
        .tensor(name)
        .unwrap_or_else(|_| panic!("{name} in expected.safetensors"));
    t.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn read_i64(st: &SafeTensors, name: &str) -> Vec<i64> {
    let t = st.tensor(name).unwrap();
    t.data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn check(name: &str) {
    let dir = common::fixtures().join(name);
    let bytes = std::fs::read(dir.join("expected.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let ids: Vec<u32> = read_i64(&st, "input_ids")
        .iter()
        .map(|&x| x as u32)
        .collect();
    let labels = read_i64(&st, "labels");
    let mask: Vec<bool> = labels.iter().map(|&l| l != -100).collect();
    let t = 12;
    let batch: Vec<TrainSequence> = (0..2)
        .map(|r| TrainSequence {
            ids: &ids[r * t..(r + 1) * t],
            loss_mask: &mask[r * t..(r + 1) * t],
        })
        .collect();

    let model = TrainModel::<f32>::load(&dir).unwrap();
    let mut tape = Tape::new();
    let vars = model.bind(&mut tape);
    let loss = model.loss(&mut tape, &vars, &batch, 1.0 / 2.0).unwrap();
    let want_loss = read_f32(&st, "loss")[0];
    let got_loss = tape.value(loss)[0];
    println!("{name}: loss {got_loss} (torch {want_loss})");
    assert!(
        ((got_loss - want_loss) / want_loss).abs() < 1e-5,
        "{name}: loss {got_loss} vs {want_loss}"
    );

    let grads = tape.backward(loss);
    let mut worst = 0.0f64;
    for (p, &v) in model.params.iter().zip(&vars) {
        let want = read_f32(&st, &format!("grad.{}", p.name));
        let err = common::rel_err(grads.get(v).unwrap(), &want);
        worst = worst.max(err);
        assert!(
            err < 1e-4,
            "{name}: gradient of {}: relative error {err}",
            p.name
        );
    }
    println!(
        "{name}: {} gradients, worst relative error {worst:.2e}",
        model.params.len()
    );

    // Our gradients, clipped, through one AdamW step: the parameters torch has after its step.
    let mut g: Vec<Vec<f32>> = vars
        .iter()
        .map(|&v| grads.get(v).unwrap().to_vec())
        .collect();
    let norm = clip_grad_norm(
        &mut g.iter_mut().map(|x| x.as_mut_slice()).collect::<Vec<_>>(),
        1.0,
    );
    let want_norm = read_f32(&st, "grad_norm")[0];
    assert!(
        ((norm - want_norm) / want_norm).abs() < 1e-5,
        "{name}: grad norm {norm} vs {want_norm}"
    );
    let config = AdamWConfig {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    };
    let mut values: Vec<Vec<f32>> = model.params.iter().map(|p| p.value.to_vec()).collect();
    let mut opt = AdamW::new(
        config,
        model
            .params
            .iter()
            .zip(&values)
            .map(|(p, v)| (p.name.clone(), ParamRef::F32(v))),
    )
    .unwrap();
    let mut muts: Vec<ParamMut> = values.iter_mut().map(|v| ParamMut::F32(v)).collect();
    opt.step(
        &mut muts,
        &g.iter().map(|x| x.as_slice()).collect::<Vec<_>>(),
        1e-3,
    );
    let mut worst = 0.0f64;
    for (p, v) in model.params.iter().zip(&values) {
        let err = common::rel_err(v, &read_f32(&st, &format!("adamw.{}", p.name)));
        worst = worst.max(err);
        assert!(
            err < 1e-4,
            "{name}: {} after one AdamW step: relative error {err}",
            p.name
        );
    }
    println!("{name}: parameters after one AdamW step, worst relative error {worst:.2e}");
}

#[test]
fn llama_gqa_loss_and_gradients_match_torch() {
    check("llama-gqa");
}

#[test]
fn olmo_loss_and_gradients_match_torch() {
    check("olmo");
}
