"""Arterial input: blood tables cleaned, parent fraction fitted, dispersion and delay handled,
plasma input on a fine grid (:mod:`.input`)."""
