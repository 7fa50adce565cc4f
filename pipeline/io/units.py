"""Unit conversion at the edge: everything inside gliaflow is seconds, Bq/mL, Bq and fractions.

Each function maps a unit string as written in a BIDS JSON file (``"kBq/mL"``, ``"min"``,
``"percent"``...) to the factor that converts a value in that unit to the internal unit, or
raises :class:`ValueError` naming the accepted units. Callers turn that into a
:class:`~gliaflow.pipeline.errors.BIDSError` naming the file and field.

Spelling is forgiving where it is unambiguous: case, spaces, ``ml``/``cc``/``cm3``/``cm^3`` and
``u``/``µ``/``μ`` are treated alike.
"""
from __future__ import annotations

__all__ = [
    "ACTIVITY_CONCENTRATION_TO_BQML",
    "RADIOACTIVITY_TO_BQ",
    "TIME_TO_S",
    "FRACTION_TO_UNIT",
    "activity_concentration_factor",
    "radioactivity_factor",
    "time_factor",
    "fraction_factor",
    "normalise_unit",
]

_BQ_PER_CI = 3.7e10

#: activity concentration -> factor to Bq/mL
ACTIVITY_CONCENTRATION_TO_BQML: dict[str, float] = {
    "bq/ml": 1.0,
    "kbq/ml": 1e3,
    "mbq/ml": 1e6,
    "nci/ml": _BQ_PER_CI * 1e-9,   # 37 Bq/mL
    "uci/ml": _BQ_PER_CI * 1e-6,   # 37 kBq/mL
}

#: injected radioactivity -> factor to Bq
RADIOACTIVITY_TO_BQ: dict[str, float] = {
    "bq": 1.0,
    "kbq": 1e3,
    "mbq": 1e6,
    "gbq": 1e9,
    "uci": _BQ_PER_CI * 1e-6,
    "mci": _BQ_PER_CI * 1e-3,
}

#: time -> factor to seconds
TIME_TO_S: dict[str, float] = {
    "s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0,
    "min": 60.0, "mins": 60.0, "minute": 60.0, "minutes": 60.0,
}

#: parent fraction -> factor to a fraction in [0, 1]
FRACTION_TO_UNIT: dict[str, float] = {
    "unitless": 1.0, "fraction": 1.0, "ratio": 1.0, "none": 1.0, "1": 1.0, "n/a": 1.0,
    "percent": 0.01, "%": 0.01, "percentage": 0.01,
}


def normalise_unit(unit: str) -> str:
    """Canonical spelling of a unit string (lower case, no spaces, ``ml`` for cc/cm3, ``u`` for µ).

    >>> normalise_unit(" kBq / cc ")
    'kbq/ml'
    """
    u = str(unit).strip().lower().replace(" ", "")
    u = u.replace("µ", "u").replace("μ", "u")
    for vol in ("cm^3", "cm3", "cc"):
        if u.endswith("/" + vol):
            u = u[: -len(vol)] + "ml"
    return u


def _lookup(unit, table: dict[str, float], what: str) -> float:
    if unit is None:
        raise ValueError(f"no unit given for {what}; accepted: {_accepted(table)}")
    key = normalise_unit(unit)
    if key not in table:
        raise ValueError(f"unknown {what} unit {unit!r}; accepted: {_accepted(table)}")
    return table[key]


def _accepted(table: dict[str, float]) -> str:
    return ", ".join(table)


def activity_concentration_factor(unit: str) -> float:
    """Factor converting an activity concentration in ``unit`` to Bq/mL.

    Parameters
    ----------
    unit : str
        E.g. ``"Bq/mL"``, ``"kBq/mL"``, ``"MBq/mL"``, ``"nCi/mL"``, ``"uCi/mL"``.

    Returns
    -------
    float
        Multiply values in ``unit`` by this to get Bq/mL.

    Raises
    ------
    ValueError
        For units that are not an activity concentration (e.g. ``"SUV"``, ``"g/mL"``).
    """
    return _lookup(unit, ACTIVITY_CONCENTRATION_TO_BQML, "activity concentration")


def radioactivity_factor(unit: str) -> float:
    """Factor converting an injected radioactivity in ``unit`` (Bq, MBq, mCi, ...) to Bq."""
    return _lookup(unit, RADIOACTIVITY_TO_BQ, "radioactivity")


def time_factor(unit: str) -> float:
    """Factor converting a time in ``unit`` (s or min) to seconds."""
    return _lookup(unit, TIME_TO_S, "time")


def fraction_factor(unit: str) -> float:
    """Factor converting a fraction in ``unit`` (unitless/fraction or percent) to a fraction 0..1."""
    return _lookup(unit, FRACTION_TO_UNIT, "fraction")
