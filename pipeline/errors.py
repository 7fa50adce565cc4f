"""Exceptions a user can act on: one type per kind, each naming the file and the field.

The cohort flow catches :class:`GliaflowError` per session, records it in the ledger and
continues with the other sessions.
"""
from __future__ import annotations

from pathlib import Path


class GliaflowError(Exception):
    """Base class for errors about the user's inputs or settings.

    Parameters
    ----------
    message : str
        What is wrong and, where possible, what to do about it.
    file : str or Path, optional
        The file the problem was found in.
    field : str, optional
        The field, column, key or entity within ``file``.
    """

    kind = "error"

    def __init__(self, message: str, file: str | Path | None = None, field: str | None = None):
        self.message = message
        self.file = str(file) if file is not None else None
        self.field = field
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = []
        if self.file:
            where.append(self.file)
        if self.field:
            where.append(f"field '{self.field}'")
        prefix = f"{': '.join(where)}: " if where else ""
        return f"{prefix}{self.message}"

    def as_record(self) -> dict:
        """A JSON-serialisable description (for ledgers and reports)."""
        return {"kind": self.kind, "file": self.file, "field": self.field, "message": self.message}


class ConfigError(GliaflowError):
    """A configuration file, flag or environment variable has a bad key or value."""

    kind = "config"


class BIDSError(GliaflowError):
    """A BIDS file is missing, unreadable or has a bad value."""

    kind = "bids"


class BloodDataError(GliaflowError):
    """A blood recording (TSV/JSON) is unusable."""

    kind = "blood"


class ImageError(GliaflowError):
    """An image is unusable for processing (all zero, NaNs, bad affine, wrong dimensionality)."""

    kind = "image"


class ModelError(GliaflowError):
    """A kinetic model cannot be fitted with the data and settings given."""

    kind = "model"


class StatsError(GliaflowError):
    """The group design is unusable (too few subjects, constant covariate, unknown column)."""

    kind = "stats"


class OutputError(GliaflowError):
    """An output cannot be written (read-only, disk full, inside the input dataset)."""

    kind = "output"
