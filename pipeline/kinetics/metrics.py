"""Tidy regional metrics from a regional fit table: the columns of the cohort table.

Pandas only (no model code), so :mod:`gliaflow.pipeline.session` can import it cheaply; the
metric names are in :mod:`gliaflow.pipeline.kinetics.names`.
"""
from __future__ import annotations

import pandas as pd

from gliaflow.pipeline.kinetics.names import METRIC_COLUMNS

__all__ = ["METRIC_COLUMNS", "FLAG_SUFFIX", "tidy_metrics"]

#: suffix of the column that says why a metric is n/a (``vt_2tcm_flag``)
FLAG_SUFFIX = "_flag"


def tidy_metrics(fits: pd.DataFrame, suffix: str = "") -> pd.DataFrame:
    """Regional fit table (``<model>_<param>`` columns) -> tidy metrics (``suvr``, ``vt_2tcm`` ...).

    A metric is NaN where its fit did not converge (the reason stays in the full fit table).
    Models with a quality verdict (a ``<model>_flag`` column, e.g. 1TCM/2TCM) also get a
    ``<metric>_flag`` column: the reasons a fit is not trusted (``k4_at_bound``,
    ``se_vt_42pct``, ``not_converged``; empty when trusted), and the metric is NaN wherever it
    is set, so group statistics never see an untrusted value.
    """
    out = pd.DataFrame({"region": fits["region"]})
    for (model, param), name in METRIC_COLUMNS.items():
        col = f"{model}_{param}"
        if col not in fits.columns:
            continue
        vals = pd.to_numeric(fits[col], errors="coerce")
        conv = fits.get(f"{model}_converged")
        if conv is not None:
            vals = vals.where(conv.astype(bool))
        flag = fits.get(f"{model}{FLAG_SUFFIX}")
        if flag is not None:
            flag = flag.fillna("").astype(str)
            if conv is not None:
                flag = flag.where(conv.astype(bool) | (flag != ""), "not_converged")
            vals = vals.where(flag == "")
        out[name + suffix] = vals
        if flag is not None:
            out[name + suffix + FLAG_SUFFIX] = flag
    return out
