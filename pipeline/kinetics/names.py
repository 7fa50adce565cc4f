"""Names of the kinetic models, parametric maps and tidy metrics, and what each one needs.

Kept free of other gliaflow imports so that the configuration can check, when it is loaded, that
the models, maps and metrics it names can run (:mod:`gliaflow.pipeline.config`).
"""
from __future__ import annotations

__all__ = ["PLASMA_MODELS", "REFERENCE_MODELS", "MAP_NAMES", "PLASMA_MAPS", "REFERENCE_MAPS",
           "METRIC_COLUMNS", "PVC_SUFFIX"]

#: regional models that need an arterial plasma input
PLASMA_MODELS = ("1tcm", "2tcm", "logan", "ma1")
#: regional models that need the reference-region TAC (``kinetics.reference_region``)
REFERENCE_MODELS = ("suvr", "srtm", "mrtm2")

#: voxelwise maps (``meas-<name>`` of the map files)
MAP_NAMES = ("suv", "suvr", "logan", "ma1", "basis1tcm")
#: maps that need an arterial plasma input
PLASMA_MAPS = ("logan", "ma1", "basis1tcm")
#: maps that need the reference-region TAC
REFERENCE_MAPS = ("suvr",)

#: (model, parameter) -> tidy metric column of the regional metrics and cohort tables
METRIC_COLUMNS = {
    ("suv", "SUV"): "suv", ("suvr", "SUVR"): "suvr", ("1tcm", "VT"): "vt_1tcm",
    ("2tcm", "VT"): "vt_2tcm", ("2tcm", "K1"): "k1_2tcm", ("2tcm", "BPND"): "bpnd_2tcm",
    ("logan", "VT"): "vt_logan", ("ma1", "VT"): "vt_ma1", ("srtm", "BPND"): "bpnd_srtm",
    ("mrtm2", "BPND"): "bpnd_mrtm2", ("1tcm", "K1"): "k1_1tcm",
}
#: suffix of the metrics computed from the partial-volume-corrected TACs
PVC_SUFFIX = "_pvc"
