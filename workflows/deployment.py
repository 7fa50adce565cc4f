"""Entry point for Prefect deployments (infrastructure/prefect/prefect.yaml).

A deployment's flow run happens in a work-pool process that already talks to a shared Prefect
server (PREFECT_API_URL), so :func:`gliaflow_cohort` simply runs ``gliaflow run`` there.
"""
from __future__ import annotations

from prefect import flow

__all__ = ["gliaflow_cohort"]


@flow(name="gliaflow-deployment", log_prints=True)
def gliaflow_cohort(bids_dir: str, out_dir: str, analysis_level: str = "all",
                    cluster: str = "local", config: str | None = None) -> int:
    """Run ``gliaflow run BIDS_DIR OUT_DIR LEVEL --cluster CLUSTER [--config FILE]``."""
    from .cli import main

    argv = ["run", bids_dir, out_dir, analysis_level, "--cluster", cluster, "--quiet"]
    if config:
        argv += ["--config", config]
    rc = main(argv)
    if rc != 0:
        raise RuntimeError(f"gliaflow run exited with {rc}; see {out_dir}/ledger.tsv")
    return rc
