"""The services a run talks to: Dask clusters from profiles (:mod:`.cluster`), the private or
shared Prefect server (:mod:`.prefect_server`), worker start-up (:mod:`.worker_setup`),
toolkit thread counts (:mod:`.threads`) and Prefect deployments (:mod:`.deployment`)."""
