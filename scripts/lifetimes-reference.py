#!/usr/bin/env python3
"""Reference figures for head office's BG/NBD code (sync-server/src/compute/bgnbd.rs).

The Rust tests embed what this script writes, so they check our model against the Python
`lifetimes` package (Fader, Hardie & Lee 2005, as implemented by lifetimes' BetaGeoFitter)
without Python at test time. Run it only to regenerate the fixtures:

    python3 -m venv /work/venv-lifetimes
    /work/venv-lifetimes/bin/pip install lifetimes==0.11.3
    /work/venv-lifetimes/bin/python scripts/lifetimes-reference.py

It was last run with Python 3.11.7, lifetimes 0.11.3, numpy 2.4.6, scipy 1.17.1, pandas 3.1.1,
autograd 1.9.1 (whatever pip picked for lifetimes==0.11.3; no pins were needed).

Writes, in sync-server/src/compute/fixtures/:
- cdnow_summary.csv: lifetimes' bundled CDNOW summary (2,357 customers, time in weeks):
  id, frequency (repeat purchases), recency (first to last purchase), T (first purchase to the
  end of the calibration period).
- cdnow_lifetimes.csv: a `#` line with the parameters BetaGeoFitter().fit found and lifetimes' mean
  log-likelihood at them; then per customer lifetimes' conditional_probability_alive and
  conditional_expected_number_of_purchases_up_to_time(10 weeks).
- hyp2f1_scipy.csv: scipy.special.hyp2f1 at a few points, known values for our 2F1 series.
Numbers are printed with 17 significant digits (repr), so nothing is lost to formatting.
"""

import os

import numpy as np
import scipy
import scipy.special
from lifetimes import BetaGeoFitter, __version__ as lifetimes_version
from lifetimes.datasets import load_cdnow_summary

HORIZON_WEEKS = 10
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sync-server", "src",
                   "compute", "fixtures")


def g(v):
    """17 significant digits: round-trips an f64 exactly."""
    return repr(float(v))


def main():
    os.makedirs(OUT, exist_ok=True)
    data = load_cdnow_summary(index_col=[0])
    freq, rec, age = data["frequency"], data["recency"], data["T"]

    with open(os.path.join(OUT, "cdnow_summary.csv"), "w") as f:
        f.write("id,frequency,recency,T\n")
        for cid, x, tx, t in zip(data.index, freq, rec, age):
            f.write(f"{cid},{int(x)},{g(tx)},{g(t)}\n")

    bgf = BetaGeoFitter()
    bgf.fit(freq, rec, age)
    r, alpha, a, b = (bgf.params_[k] for k in ("r", "alpha", "a", "b"))
    # lifetimes fits on time scaled to max(T) = 10; its stored optimum is in those units. Evaluate
    # its own likelihood on the unscaled data so the Rust side can compare like with like.
    mean_ll = -BetaGeoFitter._negative_log_likelihood(
        np.log([r, alpha, a, b]), freq.values, rec.values, age.values, np.ones(len(freq)), 0.0)
    p_alive = bgf.conditional_probability_alive(freq, rec, age)
    expected = bgf.conditional_expected_number_of_purchases_up_to_time(HORIZON_WEEKS, freq, rec, age)

    with open(os.path.join(OUT, "cdnow_lifetimes.csv"), "w") as f:
        f.write(f"# lifetimes {lifetimes_version} BetaGeoFitter: r={g(r)} alpha={g(alpha)} a={g(a)} "
                f"b={g(b)} mean_log_likelihood={g(mean_ll)} horizon={HORIZON_WEEKS}\n")
        f.write(f"id,p_alive,expected_purchases_{HORIZON_WEEKS}\n")
        for cid, p, e in zip(data.index, np.asarray(p_alive), np.asarray(expected)):
            f.write(f"{cid},{g(p)},{g(e)}\n")

    # 2F1 points: small and large parameters, z near 0 and near 1, negative z, the BG/NBD shapes
    # (a = r + x, b = b + x, c = a + b + x - 1) with x up to 100.
    points = [
        (1.0, 1.0, 2.0, 0.5), (0.5, 0.5, 1.5, 0.25), (2.5, 1.5, 4.0, 0.9), (0.3, 0.7, 1.9, 0.99),
        (-0.5, 1.2, 2.2, 0.6), (1.5, 2.0, 0.7, 0.3), (3.0, 4.0, 8.0, -0.5), (0.25, 1.75, 3.1, -3.0),
        (10.242593, 12.425752, 12.218638, 0.19), (40.242593, 42.425752, 42.218638, 0.2),
        (100.25, 102.4, 102.2, 0.35), (0.2, 0.3, 0.4, 0.75),
    ]
    with open(os.path.join(OUT, "hyp2f1_scipy.csv"), "w") as f:
        f.write(f"# scipy {scipy.__version__} scipy.special.hyp2f1\n")
        f.write("a,b,c,z,value\n")
        for pa, pb, pc, z in points:
            f.write(f"{g(pa)},{g(pb)},{g(pc)},{g(z)},{g(scipy.special.hyp2f1(pa, pb, pc, z))}\n")

    print(f"r={r} alpha={alpha} a={a} b={b} mean_ll={mean_ll}")


if __name__ == "__main__":
    main()
