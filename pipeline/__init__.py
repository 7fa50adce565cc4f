"""gliaflow.pipeline: the science of gliaflow as plain functions (no orchestration).

Every module here takes explicit inputs (arrays, images, tables, paths) and a pydantic
settings object, and returns values or writes to the paths it is given.
"""
from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("gliaflow")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
