"""The cohort's group step: statistics on the tidy regional table and the template-space maps.

Called by the cohort flow as ``group_step(table_path, config, out_dir)`` once
``OUT_DIR/group/regional.tsv`` is written; usable from a notebook the same way.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from gliaflow.pipeline.config import PipelineConfig
from gliaflow.pipeline.io.derivatives import save_nifti

__all__ = ["find_template_maps", "group_step"]

_SUB = re.compile(r"(?:^|_)sub-([A-Za-z0-9]+)")


def find_template_maps(out_dir: str | Path, metrics: list[str],
                       resolution_mm: int = 2) -> dict[str, list[tuple[str, Path]]]:
    """Template-space parametric maps written by the kinetics stage, per metric.

    Parameters
    ----------
    out_dir : path
        Derivatives root.
    metrics : list of str
        Map names as the kinetics stage writes them in ``meas-<name>`` (e.g. ``suvr``, ``logan``).
    resolution_mm : int
        ``res-<n>`` entity of the maps.

    Returns
    -------
    dict
        metric -> sorted list of ``(participant_id, path)``; sessions of the same participant
        each appear (the stats step decides how to combine them).
    """
    out: dict[str, list[tuple[str, Path]]] = {}
    root = Path(out_dir)
    for metric in metrics:
        meas = metric.replace("_", "")
        hits = sorted(root.glob(f"sub-*/**/pet/*_space-MNI*_res-{resolution_mm}_meas-{meas}_pet.nii.gz"))
        rows = []
        for p in hits:
            m = _SUB.search(p.name)
            if m:
                rows.append((f"sub-{m.group(1)}", p))
        if rows:
            out[metric] = rows
    return out


def group_step(table_path: str | Path, config: PipelineConfig, out_dir: str | Path) -> dict[str, Any]:
    """Regional and voxelwise group statistics written under ``OUT_DIR/group``.

    Parameters
    ----------
    table_path : path
        ``OUT_DIR/group/regional.tsv``.
    config : PipelineConfig
        ``config.stats`` drives the models; ``config.atlas`` names the atlas of the cluster tables.
    out_dir : path
        Derivatives root.

    Returns
    -------
    dict
        ``paths`` and ``summary`` from :func:`gliaflow.pipeline.stats.group.run_group_stats`.
    """
    from gliaflow.pipeline.io import resources
    from gliaflow.pipeline.regions.atlas import load_atlas
    from gliaflow.pipeline.stats.group import run_group_stats

    out_dir = Path(out_dir)
    st = config.stats
    maps = find_template_maps(out_dir, list(st.voxelwise_metrics)) if st.voxelwise else {}
    mask_path = None
    if maps:
        mask_path = save_nifti(resources.template_mask(2), out_dir / "group" / "space-MNI152NLin2009aSym_res-2_desc-brain_mask.nii.gz")
    atlas = load_atlas(config.atlas) if maps else None
    return run_group_stats(table_path, out_dir, st, maps=maps or None, mask=mask_path, atlas=atlas)

