//! Fitting the linear head: L2-regularised multinomial logistic regression, solved by L-BFGS.
//!
//! The objective is scikit-learn's `LogisticRegression(C=…)` with its default `lbfgs` solver:
//! minimise `C × Σᵢ −log softmax(W·xᵢ + b)[yᵢ] + ½ ‖W‖²` over the weights `W` (`k × dim`) and
//! the biases `b` (`k`, not penalised). It is convex, so the solver's answer is the optimum
//! for the data, not wherever a fixed number of gradient steps happened to stop (10-fold
//! cross-validation over the 1138 examples then shipped: 90.8%, against 90.2% after 300 AdamW
//! steps).
//! The solver is argmin's L-BFGS with the Moré–Thuente line search (Nocedal & Wright,
//! *Numerical Optimization*, 2006, algorithm 7.5), started from all-zero weights: no
//! randomness, so the same examples give the same weights.
//!
//! The cost and its gradient are computed together on candle tensors (f64; two matrix
//! products over the `n × dim` inputs per evaluation), divided by `C × n` so that their scale
//! does not depend on how many examples there are.

use argmin::core::{CostFunction, Executor, Gradient, State, TerminationStatus};
use argmin::solver::linesearch::MoreThuenteLineSearch;
use argmin::solver::quasinewton::LBFGS;
use candle_core::{D, Device, Tensor};
use std::sync::Mutex;

/// Gradient norm below which training counts as converged.
pub const TOLERANCE: f64 = 1e-5;

/// Correction pairs L-BFGS keeps (scikit-learn and SciPy default to 10).
const HISTORY: usize = 10;

/// A fitted regression: row-major `k × dim` weights and `k` biases, and how the fit ended.
#[derive(Debug, Clone)]
pub struct Fitted {
    /// Row-major `k × dim` weights.
    pub weights: Vec<f32>,
    /// One bias per class.
    pub bias: Vec<f32>,
    /// L-BFGS iterations taken.
    pub iterations: u64,
    /// Whether the gradient fell below [`TOLERANCE`] (or the cost stopped changing) before the
    /// iteration cap.
    pub converged: bool,
}

/// Fits the regression to `rows` (`n × dim`, row-major) labelled `labels` (`n` class indices
/// below `k`), with inverse regularisation strength `c`, in at most `max_iterations` L-BFGS
/// iterations.
///
/// Errors: a message when the shapes disagree or the tensor library or solver fails.
pub fn fit(
    rows: Vec<f64>,
    dim: usize,
    labels: &[u32],
    k: usize,
    c: f64,
    max_iterations: u64,
) -> Result<Fitted, String> {
    let n = labels.len();
    if n == 0 || dim == 0 || k == 0 || rows.len() != n * dim {
        return Err(format!(
            "cannot fit {n} rows of {dim} columns into {k} classes from {} values",
            rows.len()
        ));
    }
    let problem = Objective::new(rows, dim, labels, k, c).map_err(|e| e.to_string())?;
    let solver = LBFGS::new(MoreThuenteLineSearch::new(), HISTORY)
        .with_tolerance_grad(TOLERANCE)
        .map_err(|e| e.to_string())?;
    let result = Executor::new(problem, solver)
        .configure(|state| {
            state
                .param(vec![0.0; k * dim + k])
                .max_iters(max_iterations)
        })
        .run()
        .map_err(|e| format!("L-BFGS failed: {e}"))?;
    let state = result.state();
    let iterations = state.get_iter();
    let converged = matches!(
        state.get_termination_status(),
        TerminationStatus::Terminated(reason)
            if !matches!(reason, argmin::core::TerminationReason::MaxItersReached)
    );
    let best = state
        .get_best_param()
        .ok_or("L-BFGS returned no parameters")?;
    Ok(Fitted {
        weights: best[..k * dim].iter().map(|&w| w as f32).collect(),
        bias: best[k * dim..].iter().map(|&b| b as f32).collect(),
        iterations,
        converged,
    })
}

/// A point, the cost there and the gradient there.
type Evaluation = (Vec<f64>, f64, Vec<f64>);

/// The scaled objective `mean cross-entropy + ‖W‖² / (2 C n)` over fixed inputs, with the
/// last evaluation kept: the line search asks for the cost and then the gradient at the same
/// point, and both come from one pass.
struct Objective {
    xs: Tensor,
    one_hot: Tensor,
    n: usize,
    dim: usize,
    k: usize,
    /// `1 / (C n)`.
    penalty: f64,
    last: Mutex<Option<Evaluation>>,
}

impl Objective {
    fn new(
        rows: Vec<f64>,
        dim: usize,
        labels: &[u32],
        k: usize,
        c: f64,
    ) -> candle_core::Result<Self> {
        let n = labels.len();
        let device = Device::Cpu;
        let xs = Tensor::from_vec(rows, (n, dim), &device)?;
        let mut one_hot = vec![0f64; n * k];
        for (i, &y) in labels.iter().enumerate() {
            one_hot[i * k + (y as usize).min(k - 1)] = 1.0;
        }
        let one_hot = Tensor::from_vec(one_hot, (n, k), &device)?;
        Ok(Objective {
            xs,
            one_hot,
            n,
            dim,
            k,
            penalty: 1.0 / (c * n as f64),
            last: Mutex::new(None),
        })
    }

    /// The cost and gradient at `p` (`[W row-major, b]`).
    fn evaluate(&self, p: &[f64]) -> Result<(f64, Vec<f64>), argmin::core::Error> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, cost, gradient)) = last.as_ref()
            && at.as_slice() == p
        {
            return Ok((*cost, gradient.clone()));
        }
        let (k, dim) = (self.k, self.dim);
        let device = Device::Cpu;
        let w = Tensor::from_slice(&p[..k * dim], (k, dim), &device)?;
        let b = Tensor::from_slice(&p[k * dim..], k, &device)?;
        let logits = self.xs.matmul(&w.t()?)?.broadcast_add(&b)?;
        let log_p = logits.broadcast_sub(&logits.log_sum_exp(D::Minus1)?.unsqueeze(1)?)?;
        let n = self.n as f64;
        let data = -(log_p.mul(&self.one_hot)?.sum_all()?.to_scalar::<f64>()?) / n;
        let squared: f64 = p[..k * dim].iter().map(|w| w * w).sum();
        let cost = data + 0.5 * self.penalty * squared;
        // d(mean cross-entropy)/d logits = (softmax − one-hot) / n.
        let residual = ((log_p.exp()? - &self.one_hot)? / n)?;
        let grad_w = residual
            .t()?
            .matmul(&self.xs)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        let grad_b = residual.sum(0)?.to_vec1::<f64>()?;
        let gradient: Vec<f64> = grad_w
            .iter()
            .zip(&p[..k * dim])
            .map(|(g, w)| g + self.penalty * w)
            .chain(grad_b)
            .collect();
        *last = Some((p.to_vec(), cost, gradient.clone()));
        Ok((cost, gradient))
    }
}

impl CostFunction for Objective {
    type Param = Vec<f64>;
    type Output = f64;
    fn cost(&self, p: &Vec<f64>) -> Result<f64, argmin::core::Error> {
        Ok(self.evaluate(p)?.0)
    }
}

impl Gradient for Objective {
    type Param = Vec<f64>;
    type Gradient = Vec<f64>;
    fn gradient(&self, p: &Vec<f64>) -> Result<Vec<f64>, argmin::core::Error> {
        Ok(self.evaluate(p)?.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two separable classes on one feature: the fit converges, puts each point in its class,
    /// and the penalty keeps the weights finite.
    #[test]
    fn a_separable_toy_problem_converges_to_the_right_side() {
        let rows = vec![1.0, 0.0, 0.9, 0.1, 0.0, 1.0, 0.1, 0.9];
        let fitted = fit(rows.clone(), 2, &[0, 0, 1, 1], 2, 1.0, 200).unwrap();
        assert!(fitted.converged, "{fitted:?}");
        for (i, y) in [0usize, 0, 1, 1].into_iter().enumerate() {
            let x = &rows[i * 2..i * 2 + 2];
            let logit = |r: usize| {
                fitted.weights[r * 2] as f64 * x[0]
                    + fitted.weights[r * 2 + 1] as f64 * x[1]
                    + fitted.bias[r] as f64
            };
            assert!(logit(y) > logit(1 - y), "row {i}: {fitted:?}");
        }
        assert!(
            fitted
                .weights
                .iter()
                .all(|w| w.is_finite() && w.abs() < 10.0)
        );
    }

    /// The analytic gradient is the cost's: central differences agree at a point away from
    /// the optimum.
    #[test]
    fn the_gradient_agrees_with_a_finite_difference_of_the_cost() {
        let rows = vec![0.3, -1.2, 0.5, 2.0, 0.1, -0.4, -1.0, 0.7, 0.2];
        let objective = Objective::new(rows, 3, &[0, 2, 1], 3, 2.0).unwrap();
        let p: Vec<f64> = (0..12).map(|i| (i as f64 * 0.37).sin() * 0.5).collect();
        let (_, gradient) = objective.evaluate(&p).unwrap();
        for i in 0..p.len() {
            let h = 1e-6;
            let mut up = p.clone();
            up[i] += h;
            let mut down = p.clone();
            down[i] -= h;
            let numeric = (objective.evaluate(&up).unwrap().0
                - objective.evaluate(&down).unwrap().0)
                / (2.0 * h);
            assert!(
                (numeric - gradient[i]).abs() < 1e-6,
                "parameter {i}: {numeric} vs {}",
                gradient[i]
            );
        }
    }

    #[test]
    fn mismatched_shapes_are_refused() {
        let err = fit(vec![1.0; 5], 2, &[0, 1], 2, 1.0, 10).unwrap_err();
        assert!(err.contains("2 rows of 2 columns"), "{err}");
    }
}
