"""Forward kinetic models: exact exponential convolution and frame means against brute force."""
import numpy as np
import pytest

from gliaflow.pipeline.kinetics.forward import feng_input, frame_mean, tcm_rates, tcm_tac, tcm_tissue
from gliaflow.pipeline.numerics import exp_conv


def _brute_conv(t, cp, rate_per_min, k):
    """integral_0^t_k cp(s) exp(-rate (t_k - s)) ds on a 100x finer linearly interpolated grid."""
    fine = np.linspace(0, t[k], 100 * k + 1)
    y = np.interp(fine, t, cp) * np.exp(-rate_per_min * (t[k] - fine) / 60.0)
    return np.trapezoid(y, fine) / 60.0


@pytest.mark.parametrize("rate", [0.0, 0.02, 0.5, 5.0])
def test_exp_conv_matches_brute_force(rate):
    t = np.arange(0, 1201, 2.0)
    cp = feng_input(t, 8000, 300, 200, 4.0, 0.3, 0.01, 15)
    got = exp_conv(cp, 2.0, rate)
    for k in (5, 37, 150, 600):
        assert got[k] == pytest.approx(_brute_conv(t, cp, rate, k), rel=1e-5, abs=1e-9)


def test_two_tissue_reduces_to_one_tissue_and_vt_is_the_late_ratio():
    t = np.arange(0, 60001, 5.0)  # 1000 min: far past the slow time constant (~64 min)
    cp = np.where(t > 0, 1000.0, 0.0)  # constant infusion: tissue -> VT * cp
    K1, k2, k3, k4 = 0.1, 0.1, 0.05, 0.025
    ct = tcm_tissue(cp, 5.0, K1, k2, k3, k4)
    assert ct[-1] / cp[-1] == pytest.approx(K1 / k2 * (1 + k3 / k4), rel=2e-3)
    amps, rates = tcm_rates(K1, k2)
    assert amps.tolist() == [K1] and rates.tolist() == [k2]
    np.testing.assert_allclose(tcm_tissue(cp, 5.0, K1, k2, 0, 0), tcm_tissue(cp, 5.0, K1, k2), rtol=0)


def test_frame_mean_of_a_line_is_its_midpoint_and_vb_mixes_blood():
    t = np.arange(0, 101, 1.0)
    fs, fe = np.array([0.0, 10.0, 40.0]), np.array([10.0, 40.0, 100.0])
    np.testing.assert_allclose(frame_mean(t, 3 * t, fs, fe), 3 * (fs + fe) / 2)
    cp = np.full_like(t, 100.0)
    cb = np.full_like(t, 200.0)
    no_uptake = tcm_tac(fs, fe, t, cp, cb, K1=1e-12, k2=0.1, vb=0.05)
    np.testing.assert_allclose(no_uptake, 0.05 * 200.0, rtol=1e-6)
    with pytest.raises(ValueError):
        tcm_tac(fs, fe, t, cp, None, K1=0.1, k2=0.1, vb=0.05)
