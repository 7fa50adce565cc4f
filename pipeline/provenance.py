"""What actually ran: tool calls recorded by the code that made them.

Each stage returns the :class:`ToolCall` records of the tools it called. The methods text, the
session report ("What ran") and ``dataset_description.json`` are generated from these records
only, so they can name nothing that did not run.

Who records what
----------------
* An engine records each toolkit call it makes (:meth:`gliaflow.pipeline.engines.base.Engine.record`);
  a command-line tool (FSL through Nipype) gives its command line as ``command``.
* gliaflow's own science records itself and the library routines it relies on, in the function
  that makes the call, and returns the records through its result object
  (``FitResult.provenance``, ``PlasmaInput.provenance``, ``SessionLabels.provenance``, the
  ``provenance`` entry of the dicts of ``session_tacs`` and ``run_group_stats``, the
  ``provenance`` attribute of the maps of ``parametric_maps``):
  :func:`gliaflow_call` for a gliaflow implementation of a method (tool ``gliaflow``),
  :func:`library_call` for a library routine that computes a result (optimisers, solvers,
  filters, resampling, distributions: SciPy, NumPy).
* Plain array arithmetic and file input/output are not recorded per call.

Records are plain pydantic models, so they travel in stage manifests as JSON
(:func:`as_calls` reads them back).
"""
from __future__ import annotations

from functools import lru_cache
from importlib import metadata
from typing import Any, Iterable, Mapping

from pydantic import BaseModel, Field

__all__ = ["ToolCall", "package_version", "merge_calls", "tools_used", "library_call",
           "gliaflow_call", "as_calls", "software_used", "LIBRARY_DISTRIBUTIONS", "STEP_LABELS_PET", "STEP_TACS",
           "STEP_PVC", "STEP_PLASMA", "STEP_DELAY", "STEP_KINETICS", "STEP_MAPS",
           "STEP_GROUP_REGIONAL", "STEP_GROUP_CORRELATION", "STEP_GROUP_VOXELWISE"]

# Steps recorded by gliaflow's own science (engines name theirs: 'frame realignment',
# 'PET-to-T1w registration', 'bias correction', 'brain extraction', 'tissue segmentation',
# 'template normalization', 'atlas to T1w', 'maps to template space', ...). The methods text
# writes a sentence for each step found in the records.
STEP_LABELS_PET = "labels to PET"
STEP_TACS = "regional TACs"
STEP_PVC = "partial-volume correction"
STEP_PLASMA = "plasma input"
STEP_DELAY = "blood delay"
STEP_KINETICS = "regional kinetic modelling"
STEP_MAPS = "parametric maps"
STEP_GROUP_REGIONAL = "regional group comparison"
STEP_GROUP_CORRELATION = "clinical correlation"
STEP_GROUP_VOXELWISE = "voxelwise group comparison"

# tool name as cited -> Python distribution that provides it
LIBRARY_DISTRIBUTIONS = {"SciPy": "scipy", "NumPy": "numpy", "NiBabel": "nibabel",
                         "pandas": "pandas", "Nipype": "nipype", "ANTsPy": "antspyx"}


class ToolCall(BaseModel):
    """One kind of call to an external tool during a step (repeated calls are counted).

    ``interface`` is the Python function or Nipype interface used (``ants.registration``,
    ``nipype.interfaces.fsl.MCFLIRT``); ``command`` the command line a command-line tool ran
    (the first one when the call repeats, e.g. once per frame).
    """

    step: str = Field(description="Processing step, e.g. 'frame realignment'.")
    tool: str = Field(description="Toolkit name as cited, e.g. 'ANTs', 'FSL', 'Nipype'.")
    version: str = Field(description="Version of the toolkit that ran ('unknown' if not reported).")
    interface: str = Field(description="Function or interface called.")
    command: str | None = Field(None, description="Command line, for command-line tools.")
    count: int = Field(1, ge=1, description="How many times this call ran in the step.")


@lru_cache(maxsize=None)
def package_version(dist: str) -> str:
    """Installed version of a Python distribution, or ``'unknown'`` (cached per process)."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def merge_calls(calls: Iterable[ToolCall]) -> list[ToolCall]:
    """Fold calls with the same (step, tool, version, interface) into one record with a count;
    the first command line is kept. Order of first appearance is preserved."""
    out: dict[tuple[str, str, str, str], ToolCall] = {}
    for c in calls:
        k = (c.step, c.tool, c.version, c.interface)
        if k in out:
            out[k] = out[k].model_copy(update={"count": out[k].count + c.count})
        else:
            out[k] = c.model_copy()
    return list(out.values())


def tools_used(calls: Iterable[ToolCall]) -> dict[str, str]:
    """``{tool: version}`` of every tool in ``calls``."""
    return {c.tool: c.version for c in calls}


def library_call(step: str, tool: str, interface: str, count: int = 1) -> ToolCall:
    """Record of a call gliaflow's own code made to a Python library.

    Parameters
    ----------
    step : str
        Processing step, e.g. ``'regional kinetic modelling'``.
    tool : str
        Library as cited, a key of :data:`LIBRARY_DISTRIBUTIONS` (``'SciPy'``, ``'NumPy'``...);
        its version is the installed distribution's.
    interface : str
        The routine called, e.g. ``'scipy.optimize.least_squares'``.
    count : int
        How many times it was called.
    """
    dist = LIBRARY_DISTRIBUTIONS.get(tool, tool.lower())
    return ToolCall(step=step, tool=tool, version=package_version(dist), interface=interface,
                    count=max(1, int(count)))


def gliaflow_call(step: str, interface: str, count: int = 1) -> ToolCall:
    """Record of gliaflow's own implementation of a method (tool ``gliaflow``, its version).

    ``interface`` is the function, with the arguments that select the method, e.g.
    ``'gliaflow.pipeline.kinetics.compartment.fit_tcm(n_tissue=2)'``.
    """
    from gliaflow.pipeline import __version__

    return ToolCall(step=step, tool="gliaflow", version=__version__, interface=interface,
                    count=max(1, int(count)))


def as_calls(records: Iterable[ToolCall | Mapping[str, Any]] | None) -> list[ToolCall]:
    """Records as :class:`ToolCall` (from models or their JSON dumps, e.g. a stage manifest)."""
    return [r if isinstance(r, ToolCall) else ToolCall.model_validate(r) for r in records or ()]


def software_used(records: Iterable[ToolCall | Mapping[str, Any]] | None) -> list[tuple[str, str | None]]:
    """``(tool, version)`` of every tool in the records, in order of first appearance (a tool
    that ran in two versions appears twice). Nipype is added with version None when a Nipype
    interface (``nipype.*``) ran without a record of its own."""
    calls = as_calls(records)
    out: list[tuple[str, str | None]] = list(dict.fromkeys((c.tool, c.version) for c in calls))
    if any(c.interface.startswith("nipype.") for c in calls) and not any(t == "Nipype" for t, _ in out):
        out.append(("Nipype", None))
    return out
