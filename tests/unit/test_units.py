"""Unit conversion at the edge (pipeline/units.py)."""
from __future__ import annotations

import pytest

from gliaflow.pipeline.io.units import (
    activity_concentration_factor,
    fraction_factor,
    normalise_unit,
    radioactivity_factor,
    time_factor,
)


@pytest.mark.parametrize("unit,factor", [
    ("Bq/mL", 1.0), ("kBq/mL", 1e3), ("kBq/ml", 1e3), ("kBq/cc", 1e3), ("MBq/mL", 1e6),
    ("nCi/mL", 37.0), ("uCi/mL", 37e3), ("µCi/mL", 37e3), ("μCi/cm3", 37e3), (" Bq / mL ", 1.0),
])
def test_activity_concentration(unit, factor):
    assert activity_concentration_factor(unit) == pytest.approx(factor)


@pytest.mark.parametrize("unit,factor", [
    ("Bq", 1.0), ("MBq", 1e6), ("GBq", 1e9), ("mCi", 3.7e7), ("uCi", 3.7e4),
])
def test_radioactivity(unit, factor):
    assert radioactivity_factor(unit) == pytest.approx(factor)


def test_time_and_fraction():
    assert time_factor("s") == 1.0 and time_factor("min") == 60.0 and time_factor("Seconds") == 1.0
    assert fraction_factor("unitless") == 1.0 and fraction_factor("percent") == 0.01
    assert fraction_factor("%") == 0.01


def test_nci_per_ml_roundtrip():
    # 1 uCi = 37 kBq exactly, 1 mCi = 37 MBq
    assert activity_concentration_factor("uCi/mL") / activity_concentration_factor("kBq/mL") == \
        pytest.approx(37.0)
    assert radioactivity_factor("mCi") / radioactivity_factor("MBq") == pytest.approx(37.0)


@pytest.mark.parametrize("func,unit", [
    (activity_concentration_factor, "SUV"), (activity_concentration_factor, "g/mL"),
    (activity_concentration_factor, "kBq"), (radioactivity_factor, "MBq/mL"),
    (radioactivity_factor, "Ci/kg"), (time_factor, "h"), (time_factor, "frames"),
    (fraction_factor, "kBq/mL"), (activity_concentration_factor, None),
])
def test_unknown_units_rejected_naming_accepted(func, unit):
    with pytest.raises(ValueError) as exc:
        func(unit)
    assert "accepted" in str(exc.value)
    if unit is not None:
        assert repr(unit) in str(exc.value)


def test_normalise_unit():
    assert normalise_unit("kBq/cm^3") == "kbq/ml"
    assert normalise_unit("µCi/cc") == "uci/ml"
