"""Deployment data shipped with gliaflow: cluster profiles, SLURM scripts, container files.

Nothing here is imported for code; ``importlib.resources.files("gliaflow.infrastructure")``
locates the files in both a source checkout and an installed wheel.
"""
