"""Toolkits behind one seam (see :mod:`.base` for the interface and its conventions).

``ants`` (:mod:`.ants`, ANTsPy) is embedded and the default for every step; ``fsl`` (:mod:`.fsl`)
runs the FSL installation at ``$FSLDIR`` through Nipype. A step's engine is a setting
(``motion.engine``, ``registration.engine``, ``segmentation.engine``,
``segmentation.normalization_engine``; a top-level ``engine:`` in a config file, or
``--engine`` on the command line, sets them all). :func:`check_engines` fails early, before any
work, when a selected engine cannot run here.
"""
from __future__ import annotations

from gliaflow.pipeline.engines.base import Engine, Normalization, RigidLevel
from gliaflow.pipeline.errors import ConfigError

__all__ = ["ENGINE_NAMES", "get_engine", "check_engines", "selected_engines", "engine_versions", "Engine",
           "Normalization", "RigidLevel"]

#: engines a setting may name
ENGINE_NAMES = ("ants", "fsl")


def get_engine(name: str, seed: int | None = 1) -> Engine:
    """A fresh engine instance (its own provenance record) by name.

    Raises
    ------
    ConfigError
        Unknown engine name.
    """
    if name == "ants":
        from gliaflow.pipeline.engines.ants import AntsEngine

        return AntsEngine(seed=seed)
    if name == "fsl":
        from gliaflow.pipeline.engines.fsl import FslEngine

        return FslEngine(seed=seed)
    raise ConfigError(f"unknown engine {name!r}; available: {', '.join(ENGINE_NAMES)}", field="engine")


def selected_engines(config) -> dict[str, str]:
    """``{step: engine name}`` for the engine settings of a PipelineConfig (steps named as in
    :data:`gliaflow.pipeline.engines.fsl.FSL_BINARIES`)."""
    return {"motion": config.motion.engine, "registration": config.registration.engine,
            "segmentation": config.segmentation.engine,
            "normalization": config.segmentation.normalization_engine}


def check_engines(config) -> dict[str, str]:
    """Check that every engine the config selects can run on this machine; return the toolkit
    versions ``{engine: version}``.

    Raises
    ------
    ConfigError
        Naming the variable (``FSLDIR``) or the missing binary, and the setting.
    """
    chosen = selected_engines(config)
    versions = {}
    fsl_steps = [s for s, e in chosen.items() if e == "fsl"]
    if fsl_steps:
        from gliaflow.pipeline.engines.fsl import FslEngine, check_fsl

        check_fsl(fsl_steps)
        versions["fsl"] = FslEngine().version()
    if "ants" in chosen.values():
        versions["ants"] = get_engine("ants").version()
    return versions


def engine_versions(config, sections) -> dict[str, str]:
    """``{setting: "engine version"}`` for the engine settings in the config ``sections`` (a stage's
    cache key includes them, so a new FSL or ANTsPy version recomputes the stages it runs)."""
    from gliaflow.pipeline.config import ENGINE_FIELDS

    out = {}
    for section in sections:
        for field in ENGINE_FIELDS.get(section, ()):
            name = getattr(getattr(config, section), field)
            try:
                version = get_engine(name).version()
            except ConfigError:  # not installed here: the key still differs from an installed one
                version = "unavailable"
            out[f"{section}.{field}"] = f"{name} {version}"
    return out
