//! Maximum-likelihood fit of the BG/NBD parameters.
//!
//! In: customers' (x, t_x, T). Out: [`Fit`] or a [`BgNbdError`]. No I/O, no clock, no threads.
//!
//! How it stays fast on a million members: identical triples are grouped with a weight; every
//! term that depends on x alone (the ln Γ and ψ terms) is summed once per distinct x; the
//! logarithms of α + T and α + t_x are tabulated once per distinct value per evaluation; so a
//! group costs one `exp` and one `ln_1p` (repeaters) or nothing transcendental (x = 0). The
//! optimiser is BFGS on the mean negative log-likelihood in log-parameter space (all four > 0)
//! with the analytic gradient, as lifetimes does (scipy's BFGS, its `tol` as gradient tolerance),
//! then Newton steps on a finite-difference Hessian of that gradient polish the optimum to
//! |∇| ~ 1e-12, so the result does not depend on where BFGS happened to stop.
//! Time is scaled so that max T = 10 (lifetimes' `_scale_time`) to start from lifetimes' point.

use super::{BgNbdError, BgNbdParams, Customer, special};

/// Optimiser settings.
#[derive(Debug, Clone, PartialEq)]
pub struct FitOptions {
    /// BFGS iteration cap.
    pub max_iterations: u32,
}

impl Default for FitOptions {
    fn default() -> Self {
        Self {
            max_iterations: 500,
        }
    }
}

/// A fitted model.
#[derive(Debug, Clone, PartialEq)]
pub struct Fit {
    pub params: BgNbdParams,
    /// Mean ln L per customer at `params`, in the data's own time unit.
    pub mean_log_likelihood: f64,
    /// Customers fitted on.
    pub customers: u64,
    /// Distinct (x, t_x, T) triples among them.
    pub distinct: usize,
    /// BFGS iterations used.
    pub iterations: u32,
    /// Largest |∂(mean ln L)/∂ ln θ| left at the optimum.
    pub gradient: f64,
}

/// BFGS stops here (scipy's default `gtol` is 1e-5, lifetimes passes 1e-7).
const BFGS_GRADIENT: f64 = 1e-9;
/// Accepted as converged when BFGS and Newton end above `BFGS_GRADIENT` but below this. scipy's
/// own default (`gtol` 1e-5) is looser still; on a flat likelihood (a base where hardly anyone
/// drops out, so `a` and `b` are barely identified) the gradient stalls near 1e-6..1e-5 while the
/// predictions no longer move, and refusing the model there would leave the chain without one.
const LOOSE_GRADIENT: f64 = 1e-4;
/// |ln θ| beyond which a parameter is taken to run off to 0 or ∞ (e^±20 ≈ 5e8, 2e-9).
const LOG_PARAM_LIMIT: f64 = 20.0;

/// Fits r, α, a, b by maximum likelihood.
pub fn fit(customers: &[Customer], opts: &FitOptions) -> Result<Fit, BgNbdError> {
    let data = Data::group(customers)?;
    // lifetimes starts every log-parameter at 0.1 on time scaled to max T = 10.
    let start = [0.1; 4];
    let mut objective = |theta: &[f64; 4]| data.evaluate(theta);
    let (mut theta, mut iterations) = bfgs(&mut objective, start, opts.max_iterations);
    let mut best = objective(&theta);
    // Newton polish: quadratic convergence on the gradient, which BFGS's f-based line search
    // cannot give once f's changes fall below its rounding.
    for _ in 0..8 {
        let Some((f, g)) = best else { break };
        if norm(&g) < 1e-13 {
            break;
        }
        let Some(step) = newton_step(&mut objective, &theta, &g) else {
            break;
        };
        let candidate = add(&theta, &step, 1.0);
        match objective(&candidate) {
            Some((fc, gc)) if norm(&gc) < norm(&g) && fc <= f + 1e-12 * f.abs() => {
                theta = candidate;
                best = Some((fc, gc));
                iterations += 1;
            }
            _ => break,
        }
    }
    let Some((f, g)) = best else {
        return Err(BgNbdError::NotConverged {
            iterations,
            gradient: f64::NAN,
        });
    };
    for (name, value) in ["r", "alpha", "a", "b"].into_iter().zip(theta) {
        if value.abs() > LOG_PARAM_LIMIT {
            return Err(BgNbdError::Diverged {
                name,
                value: value.exp(),
            });
        }
    }
    let gradient = norm(&g);
    if gradient > LOOSE_GRADIENT {
        return Err(BgNbdError::NotConverged {
            iterations,
            gradient,
        });
    }
    let [r, alpha_scaled, a, b] = theta.map(f64::exp);
    let params = BgNbdParams::new(r, alpha_scaled / data.scale, a, b)?;
    // Scaling time by s shifts each customer's ln L by −x·ln s; undo it for the data's unit.
    let mean_log_likelihood = -f + data.mean_x * data.scale.ln();
    Ok(Fit {
        params,
        mean_log_likelihood,
        customers: data.customers,
        distinct: data.distinct,
        iterations,
        gradient,
    })
}

/// The grouped, scaled data and the per-evaluation tables.
struct Data {
    customers: u64,
    distinct: usize,
    total_weight: f64,
    /// Σ w·x / Σ w, to convert the likelihood back from scaled time.
    mean_x: f64,
    /// Time was multiplied by this (10 / max T).
    scale: f64,
    /// Distinct x and their summed weight.
    xs: Vec<(f64, f64)>,
    /// Distinct scaled T and distinct scaled t_x (of repeaters).
    ts: Vec<f64>,
    txs: Vec<f64>,
    /// x = 0 groups: (index into `ts`, weight).
    once: Vec<(u32, f64)>,
    /// Repeater groups.
    repeat: Vec<Group>,
}

#[derive(Clone, Copy)]
struct Group {
    xi: u32,
    ti: u32,
    txi: u32,
    weight: f64,
}

impl Data {
    fn group(customers: &[Customer]) -> Result<Self, BgNbdError> {
        if customers.is_empty() {
            return Err(BgNbdError::NoCustomers);
        }
        let mut keys: Vec<(u32, u64, u64)> = Vec::with_capacity(customers.len());
        for (index, c) in customers.iter().enumerate() {
            if let Some(reason) = c.problem() {
                return Err(BgNbdError::InvalidCustomer { index, reason });
            }
            // Recency means nothing without a repeat; + 0.0 folds −0.0 into 0.0 for the key.
            let t_x = if c.x == 0 { 0.0 } else { c.t_x + 0.0 };
            keys.push((c.x, t_x.to_bits(), (c.t + 0.0).to_bits()));
        }
        // Non-negative floats order like their bit patterns.
        keys.sort_unstable();
        let mut groups: Vec<((u32, f64, f64), f64)> = Vec::new();
        for key in keys {
            let triple = (key.0, f64::from_bits(key.1), f64::from_bits(key.2));
            match groups.last_mut() {
                Some((last, weight)) if *last == triple => *weight += 1.0,
                _ => groups.push((triple, 1.0)),
            }
        }
        let n = customers.len() as u64;
        if groups.iter().all(|((x, _, _), _)| *x == 0) {
            return Err(BgNbdError::NoRepeaters);
        }
        if groups.len() == 1 {
            return Err(BgNbdError::AllAlike { customers: n });
        }
        let max_t = groups.iter().map(|((_, _, t), _)| *t).fold(0.0, f64::max);
        let scale = if max_t > 0.0 { 10.0 / max_t } else { 1.0 };

        let mut xs: Vec<(f64, f64)> = Vec::new();
        let mut ts: Vec<f64> = groups.iter().map(|((_, _, t), _)| t * scale).collect();
        let mut txs: Vec<f64> = groups
            .iter()
            .filter(|((x, _, _), _)| *x > 0)
            .map(|((_, tx, _), _)| tx * scale)
            .collect();
        for v in [&mut ts, &mut txs] {
            v.sort_unstable_by(f64::total_cmp);
            v.dedup();
        }
        let index_of = |v: &[f64], value: f64| -> u32 {
            let i = v.partition_point(|&u| u < value);
            u32::try_from(i).unwrap_or(u32::MAX)
        };
        let mut once = Vec::new();
        let mut repeat = Vec::new();
        let mut sum_x = 0.0;
        for ((x, tx, t), weight) in &groups {
            let xf = f64::from(*x);
            sum_x += xf * weight;
            // Groups are sorted by x, so distinct x arrive in order.
            match xs.last_mut() {
                Some((last, w)) if *last == xf => *w += weight,
                _ => xs.push((xf, *weight)),
            }
            let xi = u32::try_from(xs.len() - 1).unwrap_or(u32::MAX);
            let ti = index_of(&ts, t * scale);
            if *x == 0 {
                once.push((ti, *weight));
            } else {
                let txi = index_of(&txs, tx * scale);
                repeat.push(Group {
                    xi,
                    ti,
                    txi,
                    weight: *weight,
                });
            }
        }
        Ok(Self {
            customers: n,
            distinct: groups.len(),
            total_weight: n as f64,
            mean_x: sum_x / n as f64,
            scale,
            xs,
            ts,
            txs,
            once,
            repeat,
        })
    }

    /// Mean negative ln L and its gradient in log-parameters; `None` where it is not finite.
    fn evaluate(&self, theta: &[f64; 4]) -> Option<(f64, [f64; 4])> {
        if theta
            .iter()
            .any(|v| !v.is_finite() || v.abs() > 2.0 * LOG_PARAM_LIMIT)
        {
            return None;
        }
        let [r, alpha, a, b] = theta.map(f64::exp);
        let ln_alpha = alpha.ln();
        let table = |v: &[f64]| -> Vec<(f64, f64)> {
            v.iter()
                .map(|t| ((alpha + t).ln(), 1.0 / (alpha + t)))
                .collect()
        };
        let (lt, ltx) = (table(&self.ts), table(&self.txs));
        let (mut ll, mut gr, mut gal, mut ga, mut gb) = (0.0, 0.0, 0.0, 0.0, 0.0);

        // Terms in x alone: ln Γ(r+x) − ln Γ(r) + r ln α + ln B(a, b+x) − ln B(a, b).
        let (ln_g, psi) = (special::ln_gamma, special::digamma);
        let (lg_r, lg_b, lg_ab) = (ln_g(r), ln_g(b), ln_g(a + b));
        let (ps_r, ps_b, ps_ab) = (psi(r), psi(b), psi(a + b));
        let mut per_x: Vec<(f64, f64)> = Vec::with_capacity(self.xs.len());
        for &(x, w) in &self.xs {
            let c = ln_g(r + x) - lg_r + lg_ab + ln_g(b + x) - lg_b - ln_g(a + b + x);
            ll += w * (c + r * ln_alpha);
            gr += w * (psi(r + x) - ps_r + ln_alpha);
            gal += w * r / alpha;
            ga += w * (ps_ab - psi(a + b + x));
            gb += w * (ps_ab + psi(b + x) - ps_b - psi(a + b + x));
            // For repeaters: ln(a/(b+x−1)) and 1/(b+x−1) of the "dropped after the last" branch.
            let bx = b + x - 1.0;
            per_x.push(((a / bx).ln(), 1.0 / bx));
        }
        for &(ti, w) in &self.once {
            let (l, inv) = *lt.get(ti as usize)?;
            ll -= w * r * l;
            gr -= w * l;
            gal -= w * r * inv;
        }
        // Σ weight · P(branch "dropped after the last activity") per distinct x.
        let mut dropped = vec![0.0; self.xs.len()];
        for g in &self.repeat {
            let (x, _) = *self.xs.get(g.xi as usize)?;
            let (ln_q, _) = *per_x.get(g.xi as usize)?;
            let (l_t, inv_t) = *lt.get(g.ti as usize)?;
            let (l_tx, inv_tx) = *ltx.get(g.txi as usize)?;
            let rx = r + x;
            let alive = -rx * l_t; // still active at T
            let gone = ln_q - rx * l_tx; // dropped out right after t_x
            let d = alive - gone;
            let (lse, w_gone) = if d >= 0.0 {
                let e = (-d).exp();
                (alive + e.ln_1p(), e / (1.0 + e))
            } else {
                let e = d.exp();
                (gone + e.ln_1p(), 1.0 / (1.0 + e))
            };
            let w_alive = 1.0 - w_gone;
            ll += g.weight * lse;
            gr -= g.weight * (w_alive * l_t + w_gone * l_tx);
            gal -= g.weight * rx * (w_alive * inv_t + w_gone * inv_tx);
            if let Some(s) = dropped.get_mut(g.xi as usize) {
                *s += g.weight * w_gone;
            }
        }
        for (s, (_, inv_bx)) in dropped.iter().zip(&per_x) {
            ga += s / a;
            gb -= s * inv_bx;
        }
        let n = self.total_weight;
        let f = -ll / n;
        // Chain rule into log-parameters: ∂/∂ln θ = θ · ∂/∂θ.
        let grad = [-r * gr / n, -alpha * gal / n, -a * ga / n, -b * gb / n];
        (f.is_finite() && grad.iter().all(|g| g.is_finite())).then_some((f, grad))
    }
}

type Objective<'a> = dyn FnMut(&[f64; 4]) -> Option<(f64, [f64; 4])> + 'a;

fn norm(g: &[f64; 4]) -> f64 {
    g.iter().fold(0.0, |m, v| m.max(v.abs()))
}

fn dot(a: &[f64; 4], b: &[f64; 4]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn add(a: &[f64; 4], d: &[f64; 4], step: f64) -> [f64; 4] {
    [
        a[0] + step * d[0],
        a[1] + step * d[1],
        a[2] + step * d[2],
        a[3] + step * d[3],
    ]
}

/// BFGS (Nocedal & Wright, algorithm 6.1) with a backtracking Armijo line search. Returns the
/// last point and the iterations used; the caller judges convergence from the gradient.
fn bfgs(objective: &mut Objective<'_>, start: [f64; 4], max_iterations: u32) -> ([f64; 4], u32) {
    let Some((mut f, mut g)) = objective(&start) else {
        return (start, 0);
    };
    let mut x = start;
    let mut h = identity();
    let mut fresh = true;
    let mut iteration = 0;
    let mut stalled = 0;
    while iteration < max_iterations && norm(&g) > BFGS_GRADIENT && stalled < 3 {
        iteration += 1;
        let mut d = mat_vec(&h, &g).map(|v| -v);
        if dot(&d, &g) >= 0.0 {
            h = identity();
            fresh = true;
            d = g.map(|v| -v);
        }
        // Keep a step within e^±5 per parameter: beyond that the model overflows, not learns.
        let longest = norm(&d);
        if longest > 5.0 {
            d = d.map(|v| v * 5.0 / longest);
        }
        let slope = dot(&d, &g);
        let mut step = 1.0;
        let mut accepted = None;
        for _ in 0..60 {
            let candidate = add(&x, &d, step);
            if let Some((fc, gc)) = objective(&candidate)
                && fc <= f + 1e-4 * step * slope
            {
                accepted = Some((candidate, fc, gc));
                break;
            }
            step *= 0.5;
        }
        let Some((xn, fn_, gn)) = accepted else {
            if fresh {
                break; // no descent even along −∇: f's rounding, the caller polishes
            }
            h = identity();
            fresh = true;
            continue;
        };
        let s = [xn[0] - x[0], xn[1] - x[1], xn[2] - x[2], xn[3] - x[3]];
        let y = [gn[0] - g[0], gn[1] - g[1], gn[2] - g[2], gn[3] - g[3]];
        let sy = dot(&s, &y);
        if sy > 1e-14 * dot(&s, &s).sqrt() * dot(&y, &y).sqrt() {
            if fresh {
                // Scale the first inverse Hessian guess (N&W eq. 6.20).
                let scale = sy / dot(&y, &y);
                h = identity().map(|row| row.map(|v| v * scale));
            }
            bfgs_update(&mut h, &s, &y, sy);
            fresh = false;
        }
        // Steps that change f by its rounding only are noise, not progress.
        if f - fn_ <= 1e-15 * f.abs().max(1.0) {
            stalled += 1;
        } else {
            stalled = 0;
        }
        (x, f, g) = (xn, fn_, gn);
    }
    (x, iteration)
}

fn identity() -> [[f64; 4]; 4] {
    let mut m = [[0.0; 4]; 4];
    for (i, row) in m.iter_mut().enumerate() {
        row[i] = 1.0;
    }
    m
}

fn mat_vec(m: &[[f64; 4]; 4], v: &[f64; 4]) -> [f64; 4] {
    m.map(|row| dot(&row, v))
}

/// H ← (I − ρ s yᵀ) H (I − ρ y sᵀ) + ρ s sᵀ, ρ = 1 / (yᵀ s).
fn bfgs_update(h: &mut [[f64; 4]; 4], s: &[f64; 4], y: &[f64; 4], sy: f64) {
    let rho = 1.0 / sy;
    let hy = mat_vec(h, y);
    let yhy = dot(y, &hy);
    for i in 0..4 {
        for j in 0..4 {
            h[i][j] += -rho * (s[i] * hy[j] + hy[i] * s[j]) + (rho * rho * yhy + rho) * s[i] * s[j];
        }
    }
}

/// −H⁻¹g with H the central-difference Jacobian of the analytic gradient; `None` when H is not
/// positive definite (not near a maximum of ln L) or an evaluation fails.
fn newton_step(objective: &mut Objective<'_>, x: &[f64; 4], g: &[f64; 4]) -> Option<[f64; 4]> {
    let mut hess = [[0.0; 4]; 4];
    for j in 0..4 {
        let h = 1e-5 * (1.0 + x[j].abs());
        let mut e = [0.0; 4];
        e[j] = 1.0;
        let (_, gp) = objective(&add(x, &e, h))?;
        let (_, gm) = objective(&add(x, &e, -h))?;
        for i in 0..4 {
            hess[i][j] = (gp[i] - gm[i]) / (2.0 * h);
        }
    }
    // Finite differences leave H slightly asymmetric; Cholesky wants it symmetric.
    let raw = hess;
    for (i, row) in hess.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = 0.5 * (raw[i][j] + raw[j][i]);
        }
    }
    cholesky_solve(&hess, g).map(|v| v.map(|c| -c))
}

/// Solves A v = b for symmetric positive definite A.
fn cholesky_solve(m: &[[f64; 4]; 4], b: &[f64; 4]) -> Option<[f64; 4]> {
    let mut l = [[0.0; 4]; 4];
    for i in 0..4 {
        for j in 0..=i {
            let sum: f64 = (0..j).map(|k| l[i][k] * l[j][k]).sum();
            if i == j {
                let d = m[i][i] - sum;
                if !(d > 0.0 && d.is_finite()) {
                    return None;
                }
                l[i][i] = d.sqrt();
            } else {
                l[i][j] = (m[i][j] - sum) / l[j][j];
            }
        }
    }
    let mut y = [0.0; 4];
    for i in 0..4 {
        let sum: f64 = (0..i).map(|k| l[i][k] * y[k]).sum();
        y[i] = (b[i] - sum) / l[i][i];
    }
    let mut v = [0.0; 4];
    for i in (0..4).rev() {
        let sum: f64 = (i + 1..4).map(|k| l[k][i] * v[k]).sum();
        v[i] = (y[i] - sum) / l[i][i];
    }
    Some(v)
}
