"""Toolkits behind one seam (see :mod:`.base` for the interface and its conventions).

``ants`` (:mod:`.ants`, ANTsPy) is embedded and the default for every step. A step's engine is a
setting (``motion.engine``, ``registration.engine``, ``segmentation.engine``,
``segmentation.normalization_engine``; a top-level ``engine:`` in a config file sets them all).
"""
from __future__ import annotations

from gliaflow.pipeline.engines.base import Engine, Normalization, RigidLevel
from gliaflow.pipeline.errors import ConfigError

__all__ = ["ENGINE_NAMES", "get_engine", "Engine", "Normalization", "RigidLevel"]

#: engines a setting may name
ENGINE_NAMES = ("ants",)


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
    raise ConfigError(f"unknown engine {name!r}; available: {', '.join(ENGINE_NAMES)}", field="engine")
