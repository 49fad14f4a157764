//! The BG/NBD model of Fader, Hardie & Lee (2005), "Counting your customers the easy way":
//! while active, a customer transacts as a Poisson process with rate λ ~ Gamma(r, α); after each
//! transaction they drop out with probability p ~ Beta(a, b).
//!
//! In: per customer the triple of the Python `lifetimes` package's
//! `summary_data_from_transaction_data` — frequency `x` (repeat activity days), recency `t_x`
//! (first to last activity) and age `T` (first activity to the evaluation date), all in one time
//! unit (head office uses days). Out: fitted [`BgNbdParams`] ([`fit`]), and per customer
//! P(alive), expected purchases in a horizon and the waiting-time quantiles behind the expected
//! next visit. It must not panic on any input: bad or degenerate data is a [`BgNbdError`].
//!
//! The formulas are lifetimes' `BetaGeoFitter` (0.11.3); the tests hold them to its figures on the
//! CDNOW data set (fixtures written by `scripts/lifetimes-reference.py`).

mod fit;
mod special;

use jiff::civil::Date;
use serde::{Deserialize, Serialize};

pub use fit::{Fit, FitOptions, fit};
pub use special::hyp2f1;

use super::days;

/// Why the model cannot be fitted or evaluated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BgNbdError {
    #[error("no customers to fit the model on")]
    NoCustomers,
    #[error("{customers} customers with activity; the model needs at least {needed}")]
    TooFewCustomers { customers: u64, needed: u64 },
    #[error("customer {index}: {reason}")]
    InvalidCustomer { index: usize, reason: String },
    #[error(
        "no customer has a repeat activity (frequency 0 everywhere): the model cannot tell how often anyone comes back"
    )]
    NoRepeaters,
    #[error("all {customers} customers have the same history: the likelihood has no maximum")]
    AllAlike { customers: u64 },
    #[error("parameter {name} = {value} must be a finite positive number")]
    InvalidParameter { name: &'static str, value: f64 },
    #[error("the fit did not converge in {iterations} iterations (gradient {gradient:e})")]
    NotConverged { iterations: u32, gradient: f64 },
    #[error(
        "the likelihood has no interior maximum: {name} ran off to {value:e} (data too uniform?)"
    )]
    Diverged { name: &'static str, value: f64 },
    #[error("the series for {what} did not converge (argument {z})")]
    Series { what: &'static str, z: f64 },
}

/// One customer's summary: frequency, recency and age (lifetimes' `frequency`, `recency`, `T`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Customer {
    /// Repeat activity periods: activity days minus one.
    pub x: u32,
    /// Time from the first to the last activity (0 when `x` is 0).
    pub t_x: f64,
    /// Time from the first activity to the evaluation date.
    pub t: f64,
}

impl Customer {
    /// The summary of a member's activity days as of `today`, in days: days after `today` are
    /// ignored, duplicates count once. `None` without activity up to `today`.
    pub fn from_activity(dates: &[Date], today: Date) -> Option<Customer> {
        let today = days::number(today);
        let mut numbers: Vec<i64> = dates
            .iter()
            .map(|d| days::number(*d))
            .filter(|&n| n <= today)
            .collect();
        numbers.sort_unstable();
        numbers.dedup();
        Self::from_sorted_days(&numbers, today)
    }

    /// As [`Customer::from_activity`] from sorted distinct day numbers, all `<= today`.
    pub(crate) fn from_sorted_days(numbers: &[i64], today: i64) -> Option<Customer> {
        let (first, last) = (*numbers.first()?, *numbers.last()?);
        Some(Customer {
            x: u32::try_from(numbers.len() - 1).unwrap_or(u32::MAX),
            t_x: (last - first) as f64,
            t: (today - first) as f64,
        })
    }

    /// Why this summary is not one the model can use, if it is not.
    fn problem(&self) -> Option<String> {
        if !(self.t.is_finite() && self.t >= 0.0) {
            return Some(format!("age T = {} must be finite and >= 0", self.t));
        }
        if self.x > 0 && !(self.t_x.is_finite() && self.t_x >= 0.0 && self.t_x <= self.t) {
            return Some(format!(
                "recency t_x = {} must be finite and within 0..=T ({})",
                self.t_x, self.t
            ));
        }
        None
    }

    fn checked(&self) -> Result<&Self, BgNbdError> {
        match self.problem() {
            None => Ok(self),
            Some(reason) => Err(BgNbdError::InvalidCustomer { index: 0, reason }),
        }
    }
}

/// The four BG/NBD parameters, all finite and > 0 (checked on construction and deserialisation).
/// `alpha` is in the time unit of the data it was fitted on (days at head office).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawParams")]
pub struct BgNbdParams {
    r: f64,
    alpha: f64,
    a: f64,
    b: f64,
}

#[derive(Deserialize)]
struct RawParams {
    r: f64,
    alpha: f64,
    a: f64,
    b: f64,
}

impl TryFrom<RawParams> for BgNbdParams {
    type Error = BgNbdError;
    fn try_from(raw: RawParams) -> Result<Self, Self::Error> {
        BgNbdParams::new(raw.r, raw.alpha, raw.a, raw.b)
    }
}

impl BgNbdParams {
    pub fn new(r: f64, alpha: f64, a: f64, b: f64) -> Result<Self, BgNbdError> {
        for (name, value) in [("r", r), ("alpha", alpha), ("a", a), ("b", b)] {
            if !(value.is_finite() && value > 0.0) {
                return Err(BgNbdError::InvalidParameter { name, value });
            }
        }
        Ok(Self { r, alpha, a, b })
    }

    pub fn r(&self) -> f64 {
        self.r
    }
    pub fn alpha(&self) -> f64 {
        self.alpha
    }
    pub fn a(&self) -> f64 {
        self.a
    }
    pub fn b(&self) -> f64 {
        self.b
    }

    /// ln L of one customer (lifetimes' `_negative_log_likelihood`, per customer and negated).
    pub fn log_likelihood(&self, c: &Customer) -> Result<f64, BgNbdError> {
        let c = c.checked()?;
        let Self { r, alpha, a, b } = *self;
        let x = f64::from(c.x);
        let ln_gamma = special::ln_gamma;
        let a1 = ln_gamma(r + x) - ln_gamma(r) + r * alpha.ln();
        let a2 = ln_gamma(a + b) + ln_gamma(b + x) - ln_gamma(b) - ln_gamma(a + b + x);
        let a3 = -(r + x) * (alpha + c.t).ln();
        if c.x == 0 {
            return Ok(a1 + a2 + a3);
        }
        let a4 = a.ln() - (b + x - 1.0).ln() - (r + x) * (alpha + c.t_x).ln();
        let (hi, lo) = if a3 >= a4 { (a3, a4) } else { (a4, a3) };
        Ok(a1 + a2 + hi + (lo - hi).exp().ln_1p())
    }

    /// Mean ln L over customers (what the fit maximises; lifetimes minimises its negative).
    pub fn mean_log_likelihood(&self, customers: &[Customer]) -> Result<f64, BgNbdError> {
        if customers.is_empty() {
            return Err(BgNbdError::NoCustomers);
        }
        let mut sum = 0.0;
        for (index, c) in customers.iter().enumerate() {
            sum += self.log_likelihood(c).map_err(|e| with_index(e, index))?;
        }
        Ok(sum / customers.len() as f64)
    }

    /// P(still active at T | x, t_x, T) — lifetimes' `conditional_probability_alive`. Always 1
    /// for `x = 0`: the model only learns of dropout from a silence after repeat activity.
    pub fn p_alive(&self, c: &Customer) -> Result<f64, BgNbdError> {
        let c = c.checked()?;
        if c.x == 0 {
            return Ok(1.0);
        }
        let x = f64::from(c.x);
        let log_div = (self.r + x) * ((self.alpha + c.t) / (self.alpha + c.t_x)).ln()
            + (self.a / (self.b + x - 1.0)).ln();
        // expit(−log_div), written so that neither branch overflows.
        Ok(if log_div >= 0.0 {
            let e = (-log_div).exp();
            e / (1.0 + e)
        } else {
            1.0 / (1.0 + log_div.exp())
        })
    }

    /// E[activities in (T, T + horizon] | x, t_x, T] — lifetimes'
    /// `conditional_expected_number_of_purchases_up_to_time(horizon, x, t_x, T)`.
    ///
    /// The paper's formula is
    /// `(a+b+x−1)/(a−1) · [1 − ((α+T)/(α+T+t))^(r+x) ₂F₁(r+x, b+x; a+b+x−1; z)] / D`,
    /// `z = t/(α+T+t)`, `D = 1 + [x>0] a/(b+x−1) ((α+T)/(α+t_x))^(r+x)`. It divides by `a − 1`
    /// (0/0 at a = 1) and its ₂F₁ grows like (1−z)^−x. Euler's transformation turns the bracket
    /// into `1 − (1−z)^ε F(A, ε; C; z)` with `ε = a−1`, `A = a+b−1−r`, `C = a+b+x−1`; writing
    /// `F − 1 = ε·Σₖ≥₁ (A)ₖ(a)ₖ₋₁ zᵏ / ((C)ₖ k!)` cancels the `a − 1` exactly:
    /// `numerator = −C·expm1(ε ln(1−z))/ε − (1−z)^ε · Σₖ≥₁ (A)ₖ(a)ₖ₋₁ zᵏ / ((C+1)ₖ₋₁ k!)`.
    /// Every term is bounded, there is no pole at a = 1 and none at C = 0 (x = 0, a + b = 1).
    pub fn expected_purchases(&self, horizon: f64, c: &Customer) -> Result<f64, BgNbdError> {
        let c = c.checked()?;
        if !(horizon.is_finite() && horizon >= 0.0) {
            return Err(BgNbdError::InvalidCustomer {
                index: 0,
                reason: format!("horizon {horizon} must be finite and >= 0"),
            });
        }
        let Self { r, alpha, a, b } = *self;
        let x = f64::from(c.x);
        let z = horizon / (alpha + c.t + horizon);
        let ln_1mz = (-z).ln_1p();
        let eps = a - 1.0;
        let big_a = a + b - 1.0 - r;
        let big_c = a + b + x - 1.0;
        let e1 = if eps == 0.0 {
            ln_1mz
        } else {
            (eps * ln_1mz).exp_m1() / eps
        };
        // h₁ = A·z; hₖ₊₁/hₖ = (A+k)(a+k−1) z / ((C+k)(k+1)).
        let tail = special::series(big_a * z, z, |k| {
            let k = k + 1.0;
            (big_a + k) * (a + k - 1.0) * z / ((big_c + k) * (k + 1.0))
        })
        .ok_or(BgNbdError::Series {
            what: "expected purchases",
            z,
        })?;
        let numerator = -big_c * e1 - (eps * ln_1mz).exp() * tail;
        let denominator = if c.x > 0 {
            1.0 + a / (b + x - 1.0) * ((r + x) * ((alpha + c.t) / (alpha + c.t_x)).ln()).exp()
        } else {
            1.0
        };
        Ok(numerator / denominator)
    }

    /// Quantile `q` of the time from the customer's last activity to their next one, *if they
    /// are still active*: given x activities in (0, t_x], λ's posterior is Gamma(r + x, α + t_x),
    /// so the waiting time W has P(W > w) = ((α + t_x)/(α + t_x + w))^(r + x) and
    /// `w_q = (α + t_x) · ((1 − q)^(−1/(r + x)) − 1)`. Dropout is left out on purpose: this
    /// says when a live customer is due; [`BgNbdParams::p_alive`] says whether they still are.
    /// May be infinite (a member with one activity and a small `r`).
    pub fn next_activity_quantile(&self, q: f64, c: &Customer) -> Result<f64, BgNbdError> {
        let c = c.checked()?;
        if !(q > 0.0 && q < 1.0) {
            return Err(BgNbdError::InvalidParameter {
                name: "q",
                value: q,
            });
        }
        let shape = self.r + f64::from(c.x);
        let t_x = if c.x == 0 { 0.0 } else { c.t_x };
        Ok((self.alpha + t_x) * (-(-q).ln_1p() / shape).exp_m1())
    }
}

fn with_index(e: BgNbdError, index: usize) -> BgNbdError {
    match e {
        BgNbdError::InvalidCustomer { reason, .. } => BgNbdError::InvalidCustomer { index, reason },
        other => other,
    }
}

#[cfg(test)]
pub(crate) mod tests;
