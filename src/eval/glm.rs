//! L1-regularised logistic regression with soft labels, as AlpacaEval's length-controlled win
//! rate fits it (alpaca_eval/metrics/glm_winrate.py, `fit_LogisticRegressionCV`):
//! sklearn's `LogisticRegressionCV(penalty="l1", solver="liblinear", fit_intercept=False,
//! cv=GroupKFold(5))` on the data duplicated once with label 1 and weight p and once with label
//! 0 and weight 1 - p, which is exactly the soft-label objective
//!
//! ```text
//!   minimise  ||beta||_1 + C * sum_i w_i * [softplus(x_i.beta) - p_i * x_i.beta]
//! ```
//!
//! (liblinear's L1 objective; every coefficient is penalised since there is no intercept).
//! `C` is chosen from sklearn's default grid `logspace(-4, 4, 10)` by 5-fold cross-validation on
//! the soft log loss (`logloss_continuous`: mean over the fold of w_i * CE_i, predictions
//! clipped to [1e-15, 1 - 1e-15]); the best summed fold score wins (the first on ties) and the
//! model is refit on all rows with that C.
//!
//! The solver is a proximal Newton method (GLMNET-style: a quadratic model of the loss,
//! minimised with the L1 term by coordinate descent, then a backtracking line search). It finds
//! the exact optimum, where liblinear stops at its tolerance (1e-4), so coefficients can differ
//! from sklearn's in the last digits.

use crate::bail;
use crate::error::Result;

/// Rows of features with soft labels in [0, 1] and sample weights.
#[derive(Clone, Debug)]
pub struct Data {
    pub x: Vec<Vec<f64>>,
    pub p: Vec<f64>,
    pub w: Vec<f64>,
}

impl Data {
    /// Checks shapes and ranges; `names` only labels errors.
    pub fn new(x: Vec<Vec<f64>>, p: Vec<f64>, w: Option<Vec<f64>>) -> Result<Data> {
        let n = x.len();
        let w = w.unwrap_or_else(|| vec![1.0; n]);
        if p.len() != n || w.len() != n {
            bail!(
                "GLM data: {n} rows but {} labels and {} weights",
                p.len(),
                w.len()
            );
        }
        let d = x.first().map_or(0, |r| r.len());
        for (i, row) in x.iter().enumerate() {
            if row.len() != d {
                bail!(
                    "GLM data: row {i} has {} features, row 0 has {d}",
                    row.len()
                );
            }
            if row.iter().any(|v| !v.is_finite()) {
                bail!("GLM data: row {i} has a non-finite feature");
            }
            if !(0.0..=1.0).contains(&p[i]) {
                bail!("GLM data: row {i} has label {} outside [0, 1]", p[i]);
            }
            if !(w[i] >= 0.0 && w[i].is_finite()) {
                bail!("GLM data: row {i} has weight {}", w[i]);
            }
        }
        Ok(Data { x, p, w })
    }

    pub fn rows(&self) -> usize {
        self.x.len()
    }

    pub fn features(&self) -> usize {
        self.x.first().map_or(0, |r| r.len())
    }

    fn subset(&self, idx: &[usize]) -> Data {
        Data {
            x: idx.iter().map(|&i| self.x[i].clone()).collect(),
            p: idx.iter().map(|&i| self.p[i]).collect(),
            w: idx.iter().map(|&i| self.w[i]).collect(),
        }
    }
}

pub fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// log(1 + e^z) without overflow.
fn softplus(z: f64) -> f64 {
    if z > 0.0 {
        z + (-z).exp().ln_1p()
    } else {
        z.exp().ln_1p()
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// ||beta||_1 + C * sum_i w_i * CE(p_i, sigmoid(x_i.beta)).
pub fn objective(data: &Data, beta: &[f64], c: f64) -> f64 {
    let loss: f64 = (0..data.rows())
        .map(|i| {
            let z = dot(&data.x[i], beta);
            data.w[i] * (softplus(z) - data.p[i] * z)
        })
        .sum();
    beta.iter().map(|b| b.abs()).sum::<f64>() + c * loss
}

/// Gradient and Hessian of the smooth part, C * sum_i w_i * CE_i.
fn gradient_hessian(data: &Data, beta: &[f64], c: f64) -> (Vec<f64>, Vec<Vec<f64>>) {
    let d = data.features();
    let mut g = vec![0.0; d];
    let mut h = vec![vec![0.0; d]; d];
    for i in 0..data.rows() {
        let x = &data.x[i];
        let q = sigmoid(dot(x, beta));
        let r = c * data.w[i] * (q - data.p[i]);
        let s = c * data.w[i] * q * (1.0 - q);
        for j in 0..d {
            g[j] += r * x[j];
            for k in 0..d {
                h[j][k] += s * x[j] * x[k];
            }
        }
    }
    (g, h)
}

fn soft_threshold(v: f64, t: f64) -> f64 {
    if v > t {
        v - t
    } else if v < -t {
        v + t
    } else {
        0.0
    }
}

/// The minimiser of the L1-penalised soft-label logistic objective for this `c`.
pub fn fit(data: &Data, c: f64) -> Vec<f64> {
    let d = data.features();
    let mut beta = vec![0.0; d];
    if data.rows() == 0 {
        return beta;
    }
    let mut f = objective(data, &beta, c);
    for _ in 0..200 {
        let (g, h) = gradient_hessian(data, &beta, c);
        // Coordinate descent on g.delta + delta'H delta / 2 + ||beta + delta||_1.
        let mut delta = vec![0.0; d];
        for _ in 0..10_000 {
            let mut change = 0.0f64;
            for j in 0..d {
                let a = h[j][j];
                let old = beta[j] + delta[j];
                let new = if a > 1e-300 {
                    let grad = g[j] + dot(&h[j], &delta);
                    soft_threshold(old - grad / a, 1.0 / a)
                } else {
                    0.0 // a feature that is zero on every row: the penalty alone decides
                };
                change = change.max((new - old).abs());
                delta[j] = new - beta[j];
            }
            if change <= 1e-15 * (1.0 + beta.iter().fold(0.0f64, |m, b| m.max(b.abs()))) {
                break;
            }
        }
        let l1 = |b: &[f64]| b.iter().map(|v| v.abs()).sum::<f64>();
        let max_abs = |v: &[f64]| v.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        let scale = 1.0 + max_abs(&beta);
        let next: Vec<f64> = beta.iter().zip(&delta).map(|(b, dl)| b + dl).collect();
        let decrease = dot(&g, &delta) + l1(&next) - l1(&beta);
        if max_abs(&delta) < 1e-13 * scale {
            break; // converged
        }
        if -decrease < 1e-9 * (1.0 + f.abs()) {
            // Close to the optimum the objective's rounding hides the (quadratic) decrease, so
            // the line search cannot judge the step: take the full Newton step.
            beta = next;
            f = objective(data, &beta, c);
            continue;
        }
        // Backtracking (Armijo) on the full objective.
        let mut t = 1.0;
        let mut accepted = false;
        for _ in 0..60 {
            let trial: Vec<f64> = beta.iter().zip(&delta).map(|(b, dl)| b + t * dl).collect();
            let ft = objective(data, &trial, c);
            if ft <= f + 0.01 * t * decrease {
                beta = trial;
                f = ft;
                accepted = true;
                break;
            }
            t *= 0.5;
        }
        if !accepted {
            break;
        }
    }
    beta
}

/// sklearn's default grid of `LogisticRegressionCV(Cs=10)`: logspace(-4, 4, 10).
pub fn default_cs() -> Vec<f64> {
    (0..10)
        .map(|k| 10f64.powf(-4.0 + 8.0 * k as f64 / 9.0))
        .collect()
}

/// The folds of `GroupKFold(n_splits)` when every group (row) has the same size (2 after the
/// duplication): groups are handed, in reverse order, to the lightest fold, i.e. row g goes to
/// fold (n - 1 - g) % n_splits. (sklearn orders groups with numpy's unstable argsort of their
/// sizes; with all sizes equal we take its order as the identity.)
pub fn group_k_fold(n: usize, n_splits: usize) -> Vec<usize> {
    (0..n).map(|g| (n - 1 - g) % n_splits).collect()
}

/// `logloss_continuous`: mean over rows of w_i * CE(p_i, q_i), q clipped to [1e-15, 1 - 1e-15].
pub fn soft_log_loss(data: &Data, beta: &[f64]) -> f64 {
    let eps = 1e-15;
    let total: f64 = (0..data.rows())
        .map(|i| {
            let q = sigmoid(dot(&data.x[i], beta)).clamp(eps, 1.0 - eps);
            -data.w[i] * (data.p[i] * q.ln() + (1.0 - data.p[i]) * (1.0 - q).ln())
        })
        .sum();
    total / data.rows().max(1) as f64
}

/// A cross-validated fit.
#[derive(Clone, Debug)]
pub struct CvFit {
    pub cs: Vec<f64>,
    /// Per C, the sum over folds of the negated fold log loss (higher is better).
    pub scores: Vec<f64>,
    pub best_c: f64,
    pub beta: Vec<f64>,
}

/// `LogisticRegressionCV` over `cs` with `group_k_fold`, then a refit with the best C.
pub fn fit_cv(data: &Data, cs: &[f64], n_splits: usize) -> Result<CvFit> {
    let n = data.rows();
    if n < n_splits || n_splits < 2 {
        bail!("GLM: {n} rows cannot be split into {n_splits} folds");
    }
    let fold_of = group_k_fold(n, n_splits);
    let mut scores = vec![0.0; cs.len()];
    for fold in 0..n_splits {
        let test: Vec<usize> = (0..n).filter(|&i| fold_of[i] == fold).collect();
        let train: Vec<usize> = (0..n).filter(|&i| fold_of[i] != fold).collect();
        let (train, test) = (data.subset(&train), data.subset(&test));
        for (k, &c) in cs.iter().enumerate() {
            scores[k] -= soft_log_loss(&test, &fit(&train, c));
        }
    }
    let mut best = 0;
    for k in 1..cs.len() {
        if scores[k] > scores[best] {
            best = k;
        }
    }
    Ok(CvFit {
        cs: cs.to_vec(),
        scores,
        best_c: cs[best],
        beta: fit(data, cs[best]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Features from a fixed pseudo-random sequence (no RNG crate needed).
    fn synthetic(n: usize, beta: &[f64]) -> Data {
        let mut s = 12345u64;
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        };
        let x: Vec<Vec<f64>> = (0..n)
            .map(|_| {
                let mut row: Vec<f64> = (0..beta.len() - 1).map(|_| 2.0 * next()).collect();
                row.push(1.0);
                row
            })
            .collect();
        let p = x.iter().map(|r| sigmoid(dot(r, beta))).collect();
        Data::new(x, p, None).unwrap()
    }

    #[test]
    fn recovers_exact_soft_labels() {
        // With p_i = sigmoid(x_i.beta) the soft-label loss is minimised exactly at beta, so a
        // negligible penalty must give beta back.
        let truth = [1.3, -0.7, 0.4];
        let data = synthetic(400, &truth);
        let beta = fit(&data, 1e9);
        for (b, t) in beta.iter().zip(truth) {
            assert!((b - t).abs() < 1e-6, "{beta:?} vs {truth:?}");
        }
    }

    #[test]
    fn one_feature_closed_form() {
        // x = 1 on n rows with mean label pbar: the optimum solves
        // C * n * (sigmoid(b) - pbar) + sign(b) = 0, i.e. sigmoid(b) = pbar - 1 / (C n).
        let n = 50;
        let p: Vec<f64> = (0..n)
            .map(|i| if i % 5 == 0 { 0.1 } else { 0.95 })
            .collect();
        let pbar = p.iter().sum::<f64>() / n as f64;
        let data = Data::new(vec![vec![1.0]; n], p, None).unwrap();
        let c = 0.1;
        let b = fit(&data, c)[0];
        let want = pbar - 1.0 / (c * n as f64);
        assert!((sigmoid(b) - want).abs() < 1e-9, "{} vs {want}", sigmoid(b));
        // A penalty stronger than the gradient at 0 gives exactly 0: |C n (1/2 - pbar)| <= 1.
        assert_eq!(fit(&data, 0.001)[0], 0.0);
    }

    #[test]
    fn kkt_conditions_hold() {
        let data = synthetic(300, &[2.0, 0.05, -0.5]);
        for c in [0.01, 0.05, 1.0] {
            let beta = fit(&data, c);
            let (g, _) = gradient_hessian(&data, &beta, c);
            for j in 0..beta.len() {
                if beta[j] != 0.0 {
                    assert!(
                        (g[j] + beta[j].signum()).abs() < 1e-9,
                        "c={c} j={j} {g:?} {beta:?}"
                    );
                } else {
                    assert!(g[j].abs() <= 1.0 + 1e-9, "c={c} j={j} {g:?}");
                }
            }
        }
        // The small coefficient is cut to zero by a moderate penalty, the large one survives.
        let beta = fit(&data, 0.05);
        assert_eq!(beta[1], 0.0);
        assert!(beta[0] > 0.5);
    }

    #[test]
    fn cross_validation_prefers_weak_penalty_on_clean_data() {
        let data = synthetic(200, &[1.0, -2.0, 0.3]);
        let cv = fit_cv(&data, &default_cs(), 5).unwrap();
        assert!(cv.best_c >= 1.0, "{cv:?}");
        assert!((cv.beta[1] + 2.0).abs() < 0.05, "{cv:?}");
        assert_eq!(group_k_fold(7, 5), [1, 0, 4, 3, 2, 1, 0]);
        let cs = default_cs();
        assert!((cs[0] - 1e-4).abs() < 1e-18 && (cs[9] - 1e4).abs() < 1e-9);
    }
}
