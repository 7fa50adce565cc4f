"""The processing stages of one PET session, as plain functions the workflows run.

A stage is the unit of scheduling and caching (subject x stage granularity, see DESIGN.md): it
takes a :class:`StageContext` (the session, the config, where to write) and the results of the
stages it requires, writes its outputs as BIDS derivatives, and returns a :class:`StageResult`
(paths + small values). Nothing here knows about Prefect or Dask; a notebook user can run a
session with :func:`run_session`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field

from .bids import SessionSpec
from .config import PipelineConfig
from .derivatives import Derivatives

__all__ = ["StageContext", "StageResult", "Stage", "SESSION_STAGES", "stage_by_name", "run_session"]


class StageContext(BaseModel):
    """Everything a stage needs besides its upstream results."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    spec: SessionSpec
    config: PipelineConfig
    out_dir: Path = Field(description="Derivatives root (BIDS derivatives dataset).")
    work_dir: Path = Field(description="Scratch folder for this session.")
    n_threads: int = Field(1, ge=1, description="CPU threads this stage may use (ITK/BLAS).")

    @property
    def derivatives(self) -> Derivatives:
        return Derivatives(self.out_dir)

    def path(self, suffix: str, extension: str, datatype: str = "pet", **entities: str | None) -> Path:
        """Derivative path for this session with extra entities (e.g. desc='preproc')."""
        ents = dict(self.spec.entities)
        ents.update({k.replace("from_", "from"): v for k, v in entities.items()})
        return self.derivatives.path(ents, suffix, extension, datatype=datatype)


class StageResult(BaseModel):
    """What a stage produced: output paths, small JSON-able values, QC record, flags."""

    stage: str
    outputs: dict[str, Path] = Field(default_factory=dict)
    values: dict[str, Any] = Field(default_factory=dict)
    qc: dict[str, Any] = Field(default_factory=dict)
    flags: list[str] = Field(default_factory=list)


StageFunc = Callable[[StageContext, dict[str, StageResult]], StageResult]


@dataclass(frozen=True)
class Stage:
    """A processing stage: its function, what it needs, and what its cache key depends on."""

    name: str
    func: StageFunc
    requires: tuple[str, ...] = ()
    settings: tuple[str, ...] = ()
    input_files: Callable[[SessionSpec], list[Path]] = field(default=lambda spec: [])
    memory_bytes: Callable[[SessionSpec], int] = field(default=lambda spec: 1 << 30)


def _set_threads(n: int) -> None:
    for var in ("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


# The registry is filled in below as the stage functions are defined.
SESSION_STAGES: list[Stage] = []


def stage_by_name(name: str) -> Stage:
    for s in SESSION_STAGES:
        if s.name == name:
            return s
    raise KeyError(f"unknown stage {name!r}; known: {[s.name for s in SESSION_STAGES]}")


def run_session(spec: SessionSpec, config: PipelineConfig, out_dir: Path, work_dir: Path,
                stages: list[Stage] | None = None, n_threads: int = 1) -> dict[str, StageResult]:
    """Run the stages of one session in order, without orchestration (for notebooks and tests)."""
    _set_threads(n_threads)
    ctx = StageContext(spec=spec, config=config, out_dir=Path(out_dir), work_dir=Path(work_dir),
                       n_threads=n_threads)
    results: dict[str, StageResult] = {}
    for stage in stages or SESSION_STAGES:
        upstream = {r: results[r] for r in stage.requires}
        results[stage.name] = stage.func(ctx, upstream)
    return results
