//! Special functions the BG/NBD model needs: ln Γ (from `libm`), the digamma function ψ for the
//! likelihood's gradient, and the Gauss hypergeometric function ₂F₁.
//!
//! In: real arguments. Out: values, or `None` where the series cannot give one (outside the
//! domain, or not converged). Never panics, never loops without bound.

/// ln Γ(x) for x > 0.
pub fn ln_gamma(x: f64) -> f64 {
    libm::lgamma(x)
}

/// ψ(x) = d/dx ln Γ(x) for x > 0 (NaN otherwise): the recurrence ψ(x) = ψ(x + 1) − 1/x up to
/// x ≥ 10, then the asymptotic series, whose first omitted term is below 2e-14 there.
pub fn digamma(x: f64) -> f64 {
    if !(x > 0.0 && x.is_finite()) {
        return f64::NAN;
    }
    let mut x = x;
    let mut shift = 0.0;
    while x < 10.0 {
        shift -= 1.0 / x;
        x += 1.0;
    }
    let inv = 1.0 / x;
    let inv2 = inv * inv;
    // ln x − 1/(2x) − Σ B₂ₖ / (2k x²ᵏ), Bernoulli numbers B₂..B₁₀.
    let series = inv2
        * (1.0 / 12.0
            - inv2 * (1.0 / 120.0 - inv2 * (1.0 / 252.0 - inv2 * (1.0 / 240.0 - inv2 / 132.0))));
    shift + x.ln() - 0.5 * inv - series
}

/// Most terms a series may take (enough for |z| up to about 1 − 1e-4 at full precision).
const MAX_TERMS: u32 = 1_000_000;

/// Σₖ tₖ for k ≥ 0, where t₀ = `first` and tₖ₊₁ = tₖ · `ratio(k)`, summed until the tail is below
/// 1e-17 of the sum. `limit` bounds |ratio(k)| as k → ∞ (|z| for ₂F₁-like series); the tail is
/// bounded geometrically by max(|ratio(k)|, limit). `None` when it does not converge.
pub fn series(first: f64, limit: f64, mut ratio: impl FnMut(f64) -> f64) -> Option<f64> {
    let mut term = first;
    let mut sum = first;
    for k in 0..MAX_TERMS {
        let q = ratio(f64::from(k));
        term *= q;
        sum += term;
        if term == 0.0 {
            // A terminating series (a polynomial) or an underflow: nothing more to add.
            return Some(sum);
        }
        let rho = q.abs().max(limit);
        if rho < 1.0 && term.abs() * rho / (1.0 - rho) <= 1e-17 * sum.abs() {
            return sum.is_finite().then_some(sum);
        }
        if !sum.is_finite() {
            return None;
        }
    }
    None
}

/// ₂F₁(a, b; c; z) for real z < 1 and c not a non-positive integer.
///
/// For z < 0, Pfaff's transformation ₂F₁(a, b; c; z) = (1 − z)^(−a) ₂F₁(a, c − b; c; z/(z − 1))
/// moves the argument into (0, 1). There, of the Gauss series and Euler's transformation
/// ₂F₁(a, b; c; z) = (1 − z)^(c − a − b) ₂F₁(c − a, c − b; c; z), the one with the smaller
/// numerator parameters is summed: the BG/NBD shape (a = r + x, b = b + x, c = a + b + x − 1)
/// has c − a and c − b small whatever x is, so its terms stay small instead of growing to ~(1−z)^−x
/// and cancelling nothing but precision.
pub fn hyp2f1(a: f64, b: f64, c: f64, z: f64) -> Option<f64> {
    if ![a, b, c, z].iter().all(|v| v.is_finite()) || z >= 1.0 {
        return None;
    }
    if c <= 0.0 && c == c.floor() {
        return None;
    }
    if z < 0.0 {
        let w = z / (z - 1.0);
        return Some((1.0 - z).powf(-a) * hyp2f1_unit(a, c - b, c, w)?);
    }
    hyp2f1_unit(a, b, c, z)
}

/// ₂F₁ for 0 ≤ z < 1.
fn hyp2f1_unit(a: f64, b: f64, c: f64, z: f64) -> Option<f64> {
    let gauss = |a: f64, b: f64| series(1.0, z, |k| (a + k) * (b + k) / ((c + k) * (k + 1.0)) * z);
    if ((c - a) * (c - b)).abs() < (a * b).abs() {
        Some((1.0 - z).powf(c - a - b) * gauss(c - a, c - b)?)
    } else {
        gauss(a, b)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn close(got: f64, want: f64, rel: f64) -> bool {
        (got - want).abs() <= rel * want.abs().max(1e-300)
    }

    #[test]
    fn digamma_matches_known_values() {
        const EULER_GAMMA: f64 = 0.577_215_664_901_532_9;
        let cases = [
            (1.0, -EULER_GAMMA),
            (0.5, -EULER_GAMMA - 2.0 * std::f64::consts::LN_2),
            (10.0, 2.251_752_589_066_721),
            (0.242_593, -4.358_489_244_159_736_5), // scipy.special.digamma
            (1e-6, -1_000_000.577_214_02),
            (123.456, 4.811_829_323_828_985),
        ];
        for (x, want) in cases {
            assert!(
                close(digamma(x), want, 1e-13),
                "ψ({x}) = {} ≠ {want}",
                digamma(x)
            );
        }
        assert!(digamma(0.0).is_nan());
        assert!(digamma(-1.5).is_nan());
    }

    #[test]
    fn digamma_is_the_derivative_of_ln_gamma() {
        for x in [0.05, 0.3, 1.7, 4.2, 9.99, 10.01, 57.0, 1e4] {
            let h = 1e-5 * x;
            let numeric = (ln_gamma(x + h) - ln_gamma(x - h)) / (2.0 * h);
            assert!(close(digamma(x), numeric, 1e-7), "x = {x}");
        }
    }

    #[test]
    fn hyp2f1_matches_closed_forms() {
        for z in [-0.9_f64, -0.3, 0.0, 0.1, 0.5, 0.9, 0.99] {
            // ₂F₁(1, 1; 2; z) = −ln(1 − z)/z
            let want = if z == 0.0 { 1.0 } else { -(-z).ln_1p() / z };
            assert!(
                close(hyp2f1(1.0, 1.0, 2.0, z).unwrap(), want, 1e-14),
                "z = {z}"
            );
            // ₂F₁(a, b; b; z) = (1 − z)^(−a)
            let want = (1.0 - z).powf(-2.7);
            assert!(
                close(hyp2f1(2.7, 1.3, 1.3, z).unwrap(), want, 1e-13),
                "z = {z}"
            );
        }
        // ₂F₁(½, ½; 3/2; z²) = arcsin(z)/z
        for z in [0.2_f64, 0.7, 0.95] {
            let want = z.asin() / z;
            assert!(close(hyp2f1(0.5, 0.5, 1.5, z * z).unwrap(), want, 1e-14));
        }
        // A terminating series: ₂F₁(−2, b; c; z) = 1 − 2bz/c + b(b+1)z²/(c(c+1))
        let (b, c, z) = (1.5, 2.5, 0.4);
        let want = 1.0 - 2.0 * b * z / c + b * (b + 1.0) * z * z / (c * (c + 1.0));
        assert!(close(hyp2f1(-2.0, b, c, z).unwrap(), want, 1e-15));
    }

    #[test]
    fn hyp2f1_matches_scipy_including_large_parameters() {
        let text = include_str!("../fixtures/hyp2f1_scipy.csv");
        let mut checked = 0;
        for line in text.lines().filter(|l| !l.starts_with('#')).skip(1) {
            let v: Vec<f64> = line.split(',').map(|s| s.parse().unwrap()).collect();
            let got = hyp2f1(v[0], v[1], v[2], v[3]).unwrap();
            assert!(close(got, v[4], 1e-12), "{line}: {got}");
            checked += 1;
        }
        assert_eq!(checked, 12);
    }

    #[test]
    fn hyp2f1_refuses_points_outside_its_domain() {
        assert_eq!(hyp2f1(1.0, 1.0, 2.0, 1.0), None);
        assert_eq!(hyp2f1(1.0, 1.0, -2.0, 0.5), None);
        assert_eq!(hyp2f1(f64::NAN, 1.0, 2.0, 0.5), None);
        assert_eq!(hyp2f1(1.0, 1.0, 0.0, 0.5), None);
    }

    #[test]
    fn a_series_that_cannot_converge_in_time_gives_none() {
        assert_eq!(series(1.0, 1.0, |_| 1.0), None);
    }
}
