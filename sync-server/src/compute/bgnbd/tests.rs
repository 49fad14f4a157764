#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use rand::{Rng, SeedableRng, rngs::StdRng};

use super::*;

/// lifetimes' CDNOW summary and its figures (scripts/lifetimes-reference.py).
struct Cdnow {
    customers: Vec<Customer>,
    p_alive: Vec<f64>,
    expected_10: Vec<f64>,
    params: BgNbdParams,
    mean_ll: f64,
}

fn header_value(header: &str, key: &str) -> f64 {
    // " a=" and not the end of "alpha=".
    let start = header.find(&format!(" {key}=")).unwrap() + key.len() + 2;
    let rest = &header[start..];
    rest[..rest.find(' ').unwrap_or(rest.len())]
        .parse()
        .unwrap()
}

fn cdnow() -> Cdnow {
    let summary = include_str!("../fixtures/cdnow_summary.csv");
    let reference = include_str!("../fixtures/cdnow_lifetimes.csv");
    let customers: Vec<Customer> = summary
        .lines()
        .skip(1)
        .map(|line| {
            let v: Vec<&str> = line.split(',').collect();
            Customer {
                x: v[1].parse().unwrap(),
                t_x: v[2].parse().unwrap(),
                t: v[3].parse().unwrap(),
            }
        })
        .collect();
    let header = reference.lines().next().unwrap();
    let (mut p_alive, mut expected_10) = (Vec::new(), Vec::new());
    for line in reference.lines().skip(2) {
        let v: Vec<f64> = line.split(',').map(|s| s.parse().unwrap()).collect();
        p_alive.push(v[1]);
        expected_10.push(v[2]);
    }
    let params = BgNbdParams::new(
        header_value(header, "r"),
        header_value(header, "alpha"),
        header_value(header, "a"),
        header_value(header, "b"),
    )
    .unwrap();
    assert_eq!(customers.len(), 2357);
    assert_eq!(p_alive.len(), 2357);
    Cdnow {
        customers,
        p_alive,
        expected_10,
        params,
        mean_ll: header_value(header, "mean_log_likelihood"),
    }
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn at_lifetimes_parameters_p_alive_and_expected_purchases_match_lifetimes_for_every_cdnow_customer()
{
    let d = cdnow();
    let p: Vec<f64> = d
        .customers
        .iter()
        .map(|c| d.params.p_alive(c).unwrap())
        .collect();
    let e: Vec<f64> = d
        .customers
        .iter()
        .map(|c| d.params.expected_purchases(10.0, c).unwrap())
        .collect();
    let (dp, de) = (
        max_abs_diff(&p, &d.p_alive),
        max_abs_diff(&e, &d.expected_10),
    );
    println!("CDNOW at lifetimes' parameters: max |ΔP(alive)| = {dp:e}, max |ΔE[X(10)]| = {de:e}");
    assert!(dp < 1e-6, "{dp}");
    assert!(de < 1e-6, "{de}");
}

#[test]
fn the_likelihood_at_lifetimes_parameters_is_lifetimes_own() {
    let d = cdnow();
    let ll = d.params.mean_log_likelihood(&d.customers).unwrap();
    assert!((ll - d.mean_ll).abs() < 1e-12, "{ll} vs {}", d.mean_ll);
}

#[test]
fn the_fit_on_cdnow_recovers_lifetimes_parameters_and_its_p_alive() {
    let d = cdnow();
    let started = Instant::now();
    let fit = fit(&d.customers, &FitOptions::default()).unwrap();
    let elapsed = started.elapsed();
    let ours = fit.params;
    let rel = [
        (ours.r(), d.params.r()),
        (ours.alpha(), d.params.alpha()),
        (ours.a(), d.params.a()),
        (ours.b(), d.params.b()),
    ]
    .map(|(o, l)| ((o - l) / l).abs());
    let ll_ours = ours.mean_log_likelihood(&d.customers).unwrap();
    let ll_theirs = d.params.mean_log_likelihood(&d.customers).unwrap();
    let p: Vec<f64> = d
        .customers
        .iter()
        .map(|c| ours.p_alive(c).unwrap())
        .collect();
    let dp = max_abs_diff(&p, &d.p_alive);
    println!(
        "CDNOW fit: r {:.9} alpha {:.9} a {:.9} b {:.9}; relative to lifetimes {:?}; \
         mean ln L ours {ll_ours:.15} lifetimes {ll_theirs:.15} (+{:.2e}); max |ΔP(alive)| {dp:.2e}; \
         {} distinct of {}, {} iterations, |∇| {:.1e}, {elapsed:?}",
        ours.r(),
        ours.alpha(),
        ours.a(),
        ours.b(),
        rel.map(|v| format!("{v:.1e}")),
        ll_ours - ll_theirs,
        fit.distinct,
        fit.customers,
        fit.iterations,
        fit.gradient,
    );
    assert!(rel.iter().all(|&e| e < 1e-4), "{rel:?}");
    // Ours is the optimum: never below lifetimes' own likelihood.
    assert!(ll_ours >= ll_theirs - 1e-15);
    assert!((fit.mean_log_likelihood - ll_ours).abs() < 1e-12);
    assert!(dp < 1e-6, "{dp}");
}

#[test]
fn expected_purchases_equals_the_papers_formula_with_2f1_away_from_a_equal_one() {
    let c = Customer {
        x: 3,
        t_x: 20.0,
        t: 35.0,
    };
    for a in [0.3, 0.79, 0.999, 1.001, 1.7, 4.0] {
        for (r, alpha, b) in [(0.24, 4.4, 2.4), (1.5, 30.0, 0.6), (0.05, 0.5, 9.0)] {
            let p = BgNbdParams::new(r, alpha, a, b).unwrap();
            let t = 10.0;
            let x = f64::from(c.x);
            let z = t / (alpha + c.t + t);
            let f = hyp2f1(r + x, b + x, a + b + x - 1.0, z).unwrap();
            let paper = (a + b + x - 1.0) / (a - 1.0)
                * (1.0 - ((alpha + c.t) / (alpha + c.t + t)).powf(r + x) * f)
                / (1.0 + a / (b + x - 1.0) * ((alpha + c.t) / (alpha + c.t_x)).powf(r + x));
            let ours = p.expected_purchases(t, &c).unwrap();
            // The paper's form loses digits to 0/0 as a → 1; ours does not.
            let tolerance = 1e-12 / (a - 1.0_f64).abs().min(1.0);
            assert!(
                ((ours - paper) / paper).abs() < tolerance,
                "a {a} r {r}: {ours} vs {paper}"
            );
        }
    }
}

#[test]
fn expected_purchases_is_continuous_through_a_equal_one() {
    let c = Customer {
        x: 0,
        t_x: 0.0,
        t: 12.0,
    };
    let at = |a: f64| {
        BgNbdParams::new(0.7, 15.0, a, 0.5)
            .unwrap()
            .expected_purchases(30.0, &c)
            .unwrap()
    };
    let (below, one, above) = (at(1.0 - 1e-9), at(1.0), at(1.0 + 1e-9));
    assert!(one.is_finite() && one > 0.0);
    assert!((below - one).abs() < 1e-8 && (above - one).abs() < 1e-8);
    // C = a + b + x − 1 = 0 here (x = 0, a + b = 1): no pole either.
    let pole = BgNbdParams::new(0.7, 15.0, 0.4, 0.6).unwrap();
    assert!(pole.expected_purchases(30.0, &c).unwrap().is_finite());
}

#[test]
fn expected_purchases_grow_with_the_horizon_and_start_at_zero() {
    let p = BgNbdParams::new(0.5, 20.0, 0.8, 4.0).unwrap();
    let c = Customer {
        x: 5,
        t_x: 100.0,
        t: 120.0,
    };
    assert_eq!(p.expected_purchases(0.0, &c).unwrap(), 0.0);
    let mut last = 0.0;
    for t in [1.0, 7.0, 30.0, 365.0, 3650.0] {
        let e = p.expected_purchases(t, &c).unwrap();
        assert!(e > last, "{t}: {e}");
        last = e;
    }
}

#[test]
fn p_alive_is_one_without_repeats_and_falls_with_silence() {
    let p = BgNbdParams::new(0.5, 20.0, 0.8, 4.0).unwrap();
    let once = Customer {
        x: 0,
        t_x: 0.0,
        t: 500.0,
    };
    assert_eq!(p.p_alive(&once).unwrap(), 1.0);
    let mut last = 1.0;
    for t in [100.0, 150.0, 300.0, 1000.0, 1e7] {
        let v = p.p_alive(&Customer {
            x: 10,
            t_x: 100.0,
            t,
        });
        let v = v.unwrap();
        assert!(v < last && v >= 0.0, "{t}: {v}");
        last = v;
    }
}

#[test]
fn the_waiting_time_median_of_a_live_customer_follows_the_posterior_rate() {
    // r + x = 1: P(W > w) = (β/(β+w)), so the median is β = α + t_x.
    let p = BgNbdParams::new(0.5, 20.0, 0.8, 4.0).unwrap();
    let half = Customer {
        x: 0,
        t_x: 0.0,
        t: 3.0,
    };
    let p_one = BgNbdParams::new(1.0, 20.0, 0.8, 4.0).unwrap();
    assert!((p_one.next_activity_quantile(0.5, &half).unwrap() - 20.0).abs() < 1e-12);
    // More repeats in the same span: a higher rate, a shorter wait.
    let few = Customer {
        x: 2,
        t_x: 60.0,
        t: 90.0,
    };
    let many = Customer { x: 8, ..few };
    let q = |c: &Customer| p.next_activity_quantile(0.5, c).unwrap();
    assert!(q(&many) < q(&few));
    assert!(p.next_activity_quantile(0.8, &few).unwrap() > q(&few));
    assert!(p.next_activity_quantile(1.0, &few).is_err());
}

#[test]
fn a_summary_counts_repeat_days_recency_and_age_in_days() {
    let d = |m, day| jiff::civil::date(2026, m, day);
    let c =
        Customer::from_activity(&[d(3, 1), d(1, 1), d(3, 1), d(2, 1), d(9, 1)], d(4, 1)).unwrap();
    // Jan 1, Feb 1, Mar 1 (Sep 1 is after today; Mar 1 twice counts once).
    assert_eq!(
        c,
        Customer {
            x: 2,
            t_x: 59.0,
            t: 90.0
        }
    );
    assert_eq!(Customer::from_activity(&[d(9, 1)], d(4, 1)), None);
}

#[test]
fn degenerate_data_is_a_typed_error_not_a_panic() {
    let c = |x, t_x, t| Customer { x, t_x, t };
    let opts = FitOptions::default();
    assert_eq!(fit(&[], &opts), Err(BgNbdError::NoCustomers));
    assert_eq!(
        fit(&[c(0, 0.0, 10.0), c(0, 0.0, 20.0)], &opts),
        Err(BgNbdError::NoRepeaters)
    );
    assert_eq!(
        fit(&vec![c(3, 8.0, 10.0); 50], &opts),
        Err(BgNbdError::AllAlike { customers: 50 })
    );
    let nan = fit(&[c(1, 1.0, 5.0), c(2, f64::NAN, 5.0)], &opts);
    assert!(
        matches!(nan, Err(BgNbdError::InvalidCustomer { index: 1, .. })),
        "{nan:?}"
    );
    let late = fit(&[c(1, 9.0, 5.0)], &opts);
    assert!(matches!(
        late,
        Err(BgNbdError::InvalidCustomer { index: 0, .. })
    ));
    let inf = fit(&[c(0, 0.0, f64::INFINITY)], &opts);
    assert!(matches!(
        inf,
        Err(BgNbdError::InvalidCustomer { index: 0, .. })
    ));
    assert!(matches!(
        BgNbdParams::new(0.5, 0.0, 1.0, 1.0),
        Err(BgNbdError::InvalidParameter { name: "alpha", .. })
    ));
    assert!(serde_json::from_str::<BgNbdParams>(r#"{"r":1,"alpha":-1,"a":1,"b":1}"#).is_err());
    let p = BgNbdParams::new(0.5, 20.0, 0.8, 4.0).unwrap();
    assert!(p.p_alive(&c(2, f64::NAN, 5.0)).is_err());
    assert!(p.expected_purchases(f64::NAN, &c(2, 1.0, 5.0)).is_err());
}

#[test]
fn small_random_data_sets_either_fit_or_fail_cleanly() {
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..200 {
        let n = rng.random_range(2..12);
        let customers: Vec<Customer> = (0..n)
            .map(|_| {
                let t = f64::from(rng.random_range(0..60_u32));
                let x = rng.random_range(0..4_u32);
                let t_x = if x == 0 {
                    0.0
                } else {
                    (rng.random::<f64>() * t).floor()
                };
                Customer { x, t_x, t }
            })
            .collect();
        match fit(&customers, &FitOptions::default()) {
            Ok(f) => {
                let p = f.params;
                assert!(
                    [p.r(), p.alpha(), p.a(), p.b()]
                        .iter()
                        .all(|v| v.is_finite() && *v > 0.0)
                );
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
}

/// A Gamma(shape, 1) draw (Marsaglia & Tsang), enough for a test's simulation.
fn gamma(rng: &mut StdRng, shape: f64) -> f64 {
    if shape < 1.0 {
        let u: f64 = rng.random();
        return gamma(rng, shape + 1.0) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let (u1, u2): (f64, f64) = (rng.random(), rng.random());
        let normal = (-2.0 * (1.0 - u1).ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        let v = (1.0 + c * normal).powi(3);
        let u: f64 = rng.random();
        if v > 0.0 && (1.0 - u).ln() < 0.5 * normal * normal + d - d * v + d * v.ln() {
            return d * v;
        }
    }
}

/// Members simulated from a BG/NBD process, activity on whole days, over 1–730 days of age.
pub(crate) fn simulate(n: usize, truth: &BgNbdParams, seed: u64) -> Vec<Customer> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let lambda = gamma(&mut rng, truth.r()) / truth.alpha();
            let ga = gamma(&mut rng, truth.a());
            let p = ga / (ga + gamma(&mut rng, truth.b()));
            let age = f64::from(rng.random_range(1..=730_u32));
            let (mut now, mut x, mut last_day) = (0.0, 0_u32, 0.0);
            loop {
                // After each activity the member leaves with probability p.
                if now > 0.0 && rng.random::<f64>() < p {
                    break;
                }
                now += -(1.0 - rng.random::<f64>()).ln() / lambda;
                if now > age {
                    break;
                }
                let day = now.floor();
                if day > last_day {
                    x += 1;
                    last_day = day;
                }
            }
            Customer {
                x,
                t_x: last_day,
                t: age,
            }
        })
        .collect()
}

/// `INSTORE_BGNBD_N=1000000 cargo test --release -p instore-sync --lib
/// compute::bgnbd::tests::a_fit_on_simulated -- --nocapture` prints the fit time at scale.
#[test]
fn a_fit_on_simulated_members_recovers_the_parameters_that_made_them() {
    let n = std::env::var("INSTORE_BGNBD_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let truth = BgNbdParams::new(0.6, 25.0, 0.9, 3.0).unwrap();
    let customers = simulate(n, &truth, 2026);
    let started = Instant::now();
    let fit = fit(&customers, &FitOptions::default()).unwrap();
    let elapsed = started.elapsed();
    let p = fit.params;
    println!(
        "simulated fit: {} members, {} distinct (x, t_x, T), {} iterations, |∇| {:.1e}, {elapsed:?}: \
         r {:.4} alpha {:.3} a {:.4} b {:.4}",
        fit.customers,
        fit.distinct,
        fit.iterations,
        fit.gradient,
        p.r(),
        p.alpha(),
        p.a(),
        p.b()
    );
    // Whole-day activity merges same-day repeats, a small bias; the rest is sampling error.
    let close = |got: f64, want: f64, rel: f64| ((got - want) / want).abs() < rel;
    assert!(
        close(p.r() / p.alpha(), truth.r() / truth.alpha(), 0.1),
        "mean rate"
    );
    assert!(close(p.r(), truth.r(), 0.2), "r");
    assert!(
        close(
            p.a() / (p.a() + p.b()),
            truth.a() / (truth.a() + truth.b()),
            0.2
        ),
        "mean p"
    );
}
