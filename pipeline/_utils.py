"""Small helpers shared across pipeline packages (private to gliaflow.pipeline)."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib

from gliaflow.pipeline.errors import ImageError

__all__ = ["load_image", "camel_case", "participant_label"]


def load_image(img_or_path, what: str) -> nib.spatialimages.SpatialImage:
    """A nibabel image from a path (opened lazily, file kept open) or an image passed through.

    Raises ImageError naming the file when it is missing or unreadable; ``what`` names it.
    """
    if isinstance(img_or_path, (str, Path)):
        p = Path(img_or_path)
        if not p.exists():
            raise ImageError(f"{what} not found", file=p)
        try:
            # keep_file_open: sequential frame reads of a .nii.gz continue the same gzip stream
            # instead of decompressing from the start for every frame.
            return nib.load(str(p), keep_file_open=True)
        except Exception as exc:  # nibabel raises several types for unreadable files
            raise ImageError(f"cannot read {what}: {exc}", file=p) from exc
    return img_or_path


def camel_case(s: str) -> str:
    """``"patient group"`` -> ``"patientGroup"`` (BIDS-style contrast names); ``"x"`` if empty."""
    parts = [p for p in "".join(ch if ch.isalnum() else " " for ch in str(s)).split() if p]
    return (parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])) if parts else "x"


def participant_label(x) -> str:
    """Participant label without the ``sub-`` prefix."""
    s = str(x)
    return s[4:] if s.startswith("sub-") else s
