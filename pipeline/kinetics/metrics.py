"""Tidy regional metrics from a regional fit table: the columns of the cohort table.

Pandas only (no model code), so :mod:`gliaflow.pipeline.session` can import it cheaply; the
metric names are in :mod:`gliaflow.pipeline.kinetics.names`.
"""
from __future__ import annotations

import pandas as pd

from gliaflow.pipeline.kinetics.names import METRIC_COLUMNS

__all__ = ["METRIC_COLUMNS", "tidy_metrics"]

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
