"""Tidy regional metrics from a regional fit table: the columns of the cohort table.

Pandas only (no model code), so :mod:`gliaflow.pipeline.session` can import it cheaply.
"""
from __future__ import annotations

import pandas as pd

__all__ = ["METRIC_COLUMNS", "tidy_metrics"]

# (model, parameter) -> tidy metric column of the cohort table
METRIC_COLUMNS = {
    ("suv", "SUV"): "suv", ("suvr", "SUVR"): "suvr", ("1tcm", "VT"): "vt_1tcm",
    ("2tcm", "VT"): "vt_2tcm", ("2tcm", "K1"): "k1_2tcm", ("2tcm", "BPND"): "bpnd_2tcm",
    ("logan", "VT"): "vt_logan", ("ma1", "VT"): "vt_ma1", ("srtm", "BPND"): "bpnd_srtm",
    ("mrtm2", "BPND"): "bpnd_mrtm2", ("1tcm", "K1"): "k1_1tcm",
}


def tidy_metrics(fits: pd.DataFrame, suffix: str = "") -> pd.DataFrame:
    """Regional fit table (``<model>_<param>`` columns) -> tidy metrics (``suvr``, ``vt_2tcm`` ...).

    A metric is NaN where its fit did not converge (the reason stays in the full fit table).
    """
    out = pd.DataFrame({"region": fits["region"]})
    for (model, param), name in METRIC_COLUMNS.items():
        col = f"{model}_{param}"
        if col in fits.columns:
            vals = pd.to_numeric(fits[col], errors="coerce")
            conv = fits.get(f"{model}_converged")
            if conv is not None:
                vals = vals.where(conv.astype(bool))
            out[name + suffix] = vals
    return out
