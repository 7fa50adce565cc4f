"""What actually ran: tool calls recorded by the code that made them.

Each stage returns the :class:`ToolCall` records of the tools it called (an engine records its
own calls; see :class:`gliaflow.pipeline.engines.base.Engine`). The methods text, the session
report and ``dataset_description.json`` are generated from these records only, so they can
name nothing that did not run.
"""
from __future__ import annotations

from importlib import metadata
from typing import Iterable

from pydantic import BaseModel, Field

__all__ = ["ToolCall", "package_version", "merge_calls", "tools_used"]


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


def package_version(dist: str) -> str:
    """Installed version of a Python distribution, or ``'unknown'``."""
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
