"""Prefect flows over Dask: a task per session, a nested task per stage, resume from manifests, memory escalation.

:func:`run_cohort` is the entry point used by ``gliaflow run``:

1. **Plan** (driver, no services): discover nothing itself; for each session compute every
   stage's cache key (:mod:`gliaflow.workflows.cache`) and load the manifests of stages already
   finished with the same key. A fully cached cohort stops here: no Prefect server, no cluster.
2. **Execute** (a Prefect flow, ``prefect_dask.DaskTaskRunner``): each session with stages
   still to run is one ``session`` task run on a Dask worker, with its memory request
   (``dask.annotate(resources={"MEMORY": bytes})``, the largest ``Stage.memory_bytes`` among
   its stages to run). It runs those stages in order, each a nested Prefect task run
   ``<session>:<stage>`` (subject x stage granularity in Prefect, session granularity on Dask:
   see :mod:`gliaflow.workflows.tasks` for the measured reason). A failing stage fails only its
   session (the error is kept, :class:`GliaflowError` messages verbatim); other sessions go on.
   When a worker dies (``KilledWorker``, the scheduler allows 0 silent retries), the session's
   runs are marked CRASHED in Prefect and the session is resubmitted, from the stage that was
   running, with ``memory_escalation`` x more memory, at most ``max_memory_retries`` times.
   Nothing is left RUNNING: unfinished runs are marked crashed when the driver stops.
3. **Group**: the tidy table ``OUT_DIR/group/regional.tsv`` from the kinetics stage's
   ``regional_metrics`` outputs, then the group step callable.
4. **Ledger**: ``OUT_DIR/ledger.tsv`` (done / failed / skipped per session).
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from gliaflow.pipeline.config import PipelineConfig
from gliaflow.pipeline.errors import GliaflowError

from gliaflow.workflows.cache import FileHasher, load_manifest, stage_keys
from gliaflow.workflows.services.cluster import MEMORY_RESOURCE, ClusterHandle, ClusterProfile, load_profile, start_cluster
from gliaflow.workflows.cohort_table import build_regional_table
from gliaflow.workflows.ledger import Ledger
from gliaflow.workflows.progress import CohortProgress
from gliaflow.workflows.runlog import run_log, run_log_path

__all__ = ["SessionPlan", "CohortOutcome", "plan_sessions", "run_cohort", "run_session_flow",
           "TABLE_STAGE", "TABLE_OUTPUT"]

log = logging.getLogger("gliaflow.workflows")

TABLE_STAGE = "kinetics"  # the stage whose output feeds the cohort table
TABLE_OUTPUT = "regional_metrics"  # its output key (a TSV: region + one column per metric)

GroupStep = Callable[[Path, PipelineConfig, Path], Any]


@dataclass
class SessionPlan:
    """One session's stages: keys, cached results, and run bookkeeping."""

    spec: Any
    keys: dict[str, str]
    results: dict[str, dict] = field(default_factory=dict)  # finished (cached or run)
    cached: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)  # crashed attempts per stage
    error: str | None = None
    error_kind: str = ""
    seconds: float = 0.0  # time in the stages computed in this run

    @property
    def session_id(self) -> str:
        return self.spec.session_id

    def to_run(self, stages: Sequence) -> list[str]:
        return [s.name for s in stages if s.name not in self.results]


@dataclass
class CohortOutcome:
    """What a cohort run did."""

    plans: list[SessionPlan]
    ledger_path: Path | None
    table_path: Path | None = None
    group_result: Any = None
    group_error: str | None = None
    dashboard_path: Path | None = None
    log_path: Path | None = None  # the driver's log (library warnings), when it was written
    timings: dict[str, float] = field(default_factory=dict)  # seconds
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> list[str]:
        return [p.session_id for p in self.plans if p.error is None]

    @property
    def failed(self) -> dict[str, str]:
        return {p.session_id: p.error for p in self.plans if p.error is not None}


def plan_sessions(specs: Iterable, stages: Sequence, config: PipelineConfig, out_dir: str | Path,
                  work_dir: str | Path | None, save_hashes: bool = True) -> list[SessionPlan]:
    """Cache keys and cached results for every session (driver side, no services).

    Parameters
    ----------
    specs : iterable of SessionSpec
    stages : list of Stage (dependency order)
    config : PipelineConfig
    out_dir : path
        Derivatives root (manifests under ``OUT_DIR/.gliaflow/stages``).
    work_dir : path or None
        Where the file-hash table is remembered (``work_dir/filehashes.json``).
    save_hashes : bool
        Write the file-hash table (False for dry runs).
    """
    hasher = FileHasher(Path(work_dir) / "filehashes.json" if work_dir else None)
    plans = []
    for spec in specs:
        keys = stage_keys(stages, spec, config, hasher)
        plan = SessionPlan(spec=spec, keys=keys)
        for st in stages:
            m = load_manifest(out_dir, spec.session_id, st.name, keys[st.name])
            if m is not None:
                plan.results[st.name] = m
                plan.cached.append(st.name)
        plans.append(plan)
    if save_hashes:
        hasher.save()
    return plans


def _mark_crashed(task_run_ids: Iterable, message: str, session_ids: Iterable[str] = ()) -> None:
    """Set task runs to CRASHED in Prefect (force): the given runs, and the unfinished stage
    runs (``<session_id>:<stage>``) of the given sessions in the current flow run. Runs the
    API never saw are ignored."""
    ids = [i for i in task_run_ids if i is not None]
    sids = list(session_ids)
    if not ids and not sids:
        return
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (TaskRunFilter, TaskRunFilterFlowRunId,
                                                TaskRunFilterName, TaskRunFilterState,
                                                TaskRunFilterStateType)
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import TaskRunSort  # the server rejects no sort
    from prefect.context import FlowRunContext
    from prefect.states import Crashed

    ctx = FlowRunContext.get()
    flow_run_id = ctx.flow_run.id if ctx is not None and ctx.flow_run is not None else None
    try:
        with get_client(sync_client=True) as client:
            if flow_run_id is not None:
                active = TaskRunFilterState(type=TaskRunFilterStateType(
                    any_=[StateType.RUNNING, StateType.PENDING, StateType.SCHEDULED]))
                for sid in sids:
                    with contextlib.suppress(Exception):
                        runs = client.read_task_runs(task_run_filter=TaskRunFilter(
                            flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run_id]),
                            name=TaskRunFilterName(like_=f"{sid}:"), state=active),
                            sort=TaskRunSort.EXPECTED_START_TIME_DESC, limit=50)
                        ids += [r.id for r in runs if r.name.startswith(f"{sid}:")]
            for i in ids:
                with contextlib.suppress(Exception):
                    client.set_task_run_state(i, Crashed(message=message), force=True)
    except Exception as exc:  # the API is gone: nothing more to do
        log.warning("could not mark task runs crashed: %s", exc)


def crash_stale_runs() -> int:
    """Mark RUNNING/PENDING flow and task runs of a private server as CRASHED (a previous driver
    was killed). Returns how many runs were changed."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterState,
                                                FlowRunFilterStateType, TaskRunFilter,
                                                TaskRunFilterState, TaskRunFilterStateType)
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort, TaskRunSort
    from prefect.states import Crashed

    active = [StateType.RUNNING, StateType.PENDING, StateType.SCHEDULED]
    n = 0
    with get_client(sync_client=True) as client:
        trs = client.read_task_runs(task_run_filter=TaskRunFilter(
            state=TaskRunFilterState(type=TaskRunFilterStateType(any_=active))),
            sort=TaskRunSort.EXPECTED_START_TIME_DESC, limit=200)
        for tr in trs:
            client.set_task_run_state(tr.id, Crashed(message="driver stopped"), force=True)
            n += 1
        frs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=active))),
            sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=200)
        for fr in frs:
            client.set_flow_run_state(fr.id, Crashed(message="driver stopped"), force=True)
            n += 1
    return n


class _Scheduler:
    """Submits one ``session`` task per session to the flow's task runner and reacts to its end.

    The session task runs the session's unfinished stages in order on one worker (each a nested
    ``stage`` task run, see :mod:`gliaflow.workflows.tasks`); its memory request is the largest
    estimate among those stages.
    """

    def __init__(self, plans: list[SessionPlan], stages: Sequence, config: PipelineConfig,
                 out_dir: Path, work_dir: Path, handle: ClusterHandle | None,
                 progress: CohortProgress, ledger: Ledger):
        self.plans = plans
        self.stages = list(stages)
        self.stage_specs = [(s.name, s.func, tuple(s.requires)) for s in self.stages]
        self.config = config
        self.out_dir = out_dir
        self.work_dir = work_dir
        self.handle = handle
        self.progress = progress
        self.ledger = ledger
        ex = config.execution
        self.escalation = ex.memory_escalation
        self.max_retries = ex.max_memory_retries
        self.n_threads = ex.threads_per_task
        self.meta: dict[str, tuple] = {}
        self.client = None  # the flow's Dask client, set by run()
        self.context: dict[str, Any] = {}  # the flow run's serialized Prefect context
        self.submissions = 0
        self.stage_events: list[tuple[str, str]] = []  # (session, stage) reported by workers
        self.crashes = 0
        self.submit_s = 0.0  # driver time spent submitting task runs (s)
        self._last_ledger = 0.0

    def memory_request(self, plan: SessionPlan) -> int | None:
        """Bytes to reserve for the session task: the largest estimate of its stages to run,
        times ``memory_escalation`` per earlier crash of this session, capped at a worker's
        memory; None when the cluster does not declare the MEMORY resource."""
        if self.handle is None or not self.handle.use_resources:
            return None
        est = 0
        for st in self.stages:
            if st.name in plan.results:
                continue
            try:
                est = max(est, int(st.memory_bytes(plan.spec)))
            except Exception:
                est = max(est, 1 << 30)
        req = int(est * self.escalation ** sum(plan.attempts.values()))
        cap = self.handle.worker_memory_bytes
        return min(req, cap) if cap else req

    def submit(self, plan: SessionPlan, ac) -> None:
        """Submit the session task (a Prefect task run executed on a Dask worker)."""
        import uuid

        import dask

        from gliaflow.workflows.tasks import SessionWork, run_prefect_task, session_task

        t0 = time.perf_counter()
        mem = self.memory_request(plan)
        ann = {"resources": {MEMORY_RESOURCE: mem}} if mem else {}
        work = SessionWork(self.stage_specs, plan.spec, self.config, plan.keys, dict(plan.results))
        params = {"work": work, "out_dir": str(self.out_dir), "work_dir": str(self.work_dir),
                  "n_threads": self.n_threads}
        task_run_id = uuid.uuid4()
        with dask.annotate(**ann):
            fut = self.client.submit(run_prefect_task,
                                     session_task.with_options(task_run_name=plan.session_id),
                                     task_run_id, params, self.context,
                                     key=f"session-{plan.session_id}-{task_run_id}", pure=False)
        self.submissions += 1
        self.submit_s += time.perf_counter() - t0
        self.meta[fut.key] = (plan, task_run_id, fut, mem)
        ac.add(fut)

    def finish(self, plan: SessionPlan, error: tuple[str, str] | None = None) -> None:
        # time inside this run's stages (queueing for a worker excluded); 0 when all cached
        plan.seconds = sum(float((plan.results[s].get("_meta") or {}).get("seconds", 0.0))
                           for s in plan.ran if s in plan.results)
        if error is not None:
            plan.error_kind, plan.error = error
        self.ledger.record(
            plan.session_id, "done" if plan.error is None else "failed",
            participant_id=f"sub-{plan.spec.participant}", error_kind=plan.error_kind,
            error=plan.error or "", stages_run=",".join(plan.ran),
            stages_cached=",".join(plan.cached), seconds=round(plan.seconds, 3),
            attempts=sum(plan.attempts.values()) + len(plan.ran))
        self.progress.session_finished(plan.session_id, plan.error is None)
        now = time.perf_counter()
        if now - self._last_ledger > 2.0:
            self.ledger.write()
            self._last_ledger = now

    def _record(self, plan: SessionPlan, results: dict[str, dict]) -> None:
        for name, data in results.items():
            plan.results[name] = data
            plan.ran.append(name)

    def _crashed(self, plan: SessionPlan, task_run_id, mem, exc: BaseException, ac) -> None:
        """The worker died: keep the stages it finished (their manifests), mark the runs
        crashed, resubmit with more memory or give up."""
        self.crashes += 1
        for st in self.stages:  # stages finished before the crash wrote their manifests
            if st.name not in plan.results:
                m = load_manifest(self.out_dir, plan.session_id, st.name, plan.keys[st.name])
                if m is not None:
                    self._record(plan, {st.name: m})
        todo = plan.to_run(self.stages)
        where = f"{plan.session_id}:{todo[0]}" if todo else f"{plan.session_id} (after its last stage)"
        msg = f"worker died running {where} " \
              f"(memory request {mem or 0} bytes): {type(exc).__name__}: {exc}"
        _mark_crashed([task_run_id], msg, session_ids=[plan.session_id])
        if not todo:  # every stage had finished: nothing to redo
            self.finish(plan)
            return
        plan.attempts[todo[0]] = plan.attempts.get(todo[0], 0) + 1
        if sum(plan.attempts.values()) <= self.max_retries:
            self.progress.print(f"[yellow]{msg}; resubmitting with more memory")
            self.submit(plan, ac)
        else:
            self.finish(plan, ("crashed", msg + f" (gave up after "
                               f"{sum(plan.attempts.values())} attempts)"))

    def _on_stage(self, event) -> None:
        """Dask event handler (client thread): a session started a stage."""
        try:
            msg = event[1]
            self.stage_events.append((msg["session"], msg["stage"]))
            self.progress.stage_started(msg["session"], msg["stage"])
        except Exception:  # noqa: BLE001 - progress must never break a run
            pass

    def run(self) -> None:
        from distributed import as_completed

        from prefect.context import FlowRunContext, serialize_context

        from gliaflow.workflows.tasks import PROGRESS_TOPIC, StageFailed, error_record

        # prefect-dask serialises the Prefect context (the whole settings model) for every
        # submission (about 0.05 s of driver CPU); it does not change during the flow run, so
        # the session tasks share one copy
        self.context = serialize_context()
        self.client = FlowRunContext.get().task_runner.client
        ac = as_completed(loop=self.client.loop)
        with contextlib.suppress(Exception):
            self.client.subscribe_topic(PROGRESS_TOPIC, self._on_stage)
        try:
            for plan in self.plans:
                if plan.to_run(self.stages):
                    self.submit(plan, ac)
                else:
                    self.finish(plan)
            for fut in ac:
                plan, task_run_id, _, mem = self.meta.pop(fut.key)
                try:
                    state = fut.result()
                except Exception as exc:  # KilledWorker, lost connection: the run never reported
                    self._crashed(plan, task_run_id, mem, exc, ac)
                    continue
                if state.is_completed():
                    self._record(plan, state.result())
                    self.finish(plan)
                    continue
                exc = state.result(raise_on_failure=False)
                if isinstance(exc, StageFailed):
                    self._record(plan, exc.finished)
                    err = (exc.kind, f"{exc.stage}: {exc.message}")
                elif isinstance(exc, BaseException):
                    err = error_record(exc)
                else:
                    err = ("internal", f"session task: {state.message}")
                self.finish(plan, err)
        finally:
            with contextlib.suppress(Exception):
                self.client.unsubscribe_topic(PROGRESS_TOPIC)
            if self.meta:  # interrupted: leave nothing RUNNING
                leftovers = list(self.meta.values())
                self.meta.clear()
                for _, _, fut, _ in leftovers:
                    with contextlib.suppress(Exception):
                        fut.cancel()
                _mark_crashed([t for _, t, _, _ in leftovers], "driver stopped",
                              session_ids=[p.session_id for p, _, _, _ in leftovers])


def _group(plans: list[SessionPlan], config: PipelineConfig, out_dir: Path,
           group_step: GroupStep | None) -> tuple[Path | None, Any]:
    rows = []
    for p in plans:
        res = p.results.get(TABLE_STAGE)
        if p.error is None and res and TABLE_OUTPUT in (res.get("outputs") or {}):
            rows.append((p.spec, res["outputs"][TABLE_OUTPUT]))
    if not rows:
        return None, None
    table = out_dir / "group" / "regional.tsv"
    build_regional_table(rows, table)
    result = group_step(table, config, out_dir) if group_step is not None else None
    return table, result


CONFIG_FILE = "gliaflow_config.yaml"


def write_provenance(out_dir: Path, config: PipelineConfig, specs: Sequence,
                     group_calls: list | None = None) -> None:
    """``dataset_description.json`` (GeneratedBy: gliaflow's version, code revision, config
    hash, then every tool the stage manifests and the group step recorded), the provenance
    file with the records and command lines (:data:`gliaflow.workflows.reporting.PROVENANCE_FILE`)
    and the effective configuration ``OUT_DIR/gliaflow_config.yaml``. Refuses an OUT_DIR inside
    the input dataset. ``group_calls``: the group step's records when it ran (None keeps the
    previous ones)."""
    from gliaflow.pipeline import __version__
    from gliaflow.pipeline.config import config_hash, write_effective_config
    from gliaflow.pipeline.io.derivatives import Derivatives
    from gliaflow.pipeline.provenance import software_used

    from gliaflow.workflows.reporting import PROVENANCE_FILE, write_run_provenance

    bids = getattr(specs[0], "bids_dir", None) if specs else None
    derivatives = Derivatives(out_dir, bids)  # refuses an OUT_DIR inside the input first
    write_effective_config(config, out_dir / CONFIG_FILE)
    calls = write_run_provenance(out_dir, group_calls)
    derivatives.write_dataset_description(__version__, config_hash(config), CONFIG_FILE,
                                          tools=software_used(calls), provenance_file=PROVENANCE_FILE)


def engine_environment(config: PipelineConfig) -> dict[str, str]:
    """Environment the workers need for the selected engines: FSLDIR (this process's) and
    FSLOUTPUTTYPE when any step runs FSL, so batch jobs on other nodes find the same FSL."""
    from gliaflow.pipeline.engines import selected_engines

    if "fsl" in selected_engines(config).values() and os.environ.get("FSLDIR"):
        return {"FSLDIR": os.environ["FSLDIR"], "FSLOUTPUTTYPE": "NIFTI_GZ"}
    return {}


def run_cohort(specs: Sequence, *, stages: Sequence, config: PipelineConfig, out_dir: str | Path,
               work_dir: str | Path | None = None, level: str = "participant",
               invalid: Sequence = (), group_step: GroupStep | None = None,
               profile: ClusterProfile | str | None = None, handle: ClusterHandle | None = None,
               show_progress: bool = True, flow_name: str = "gliaflow-cohort",
               info: dict | None = None) -> CohortOutcome:
    """Run a cohort: plan, execute missing stages on Dask through Prefect, group, ledger.

    Parameters
    ----------
    specs : list of SessionSpec
        Valid sessions (from :func:`gliaflow.pipeline.io.bids.discover`).
    stages : list of Stage
        The session stages in dependency order (normally ``session.SESSION_STAGES``).
    config : PipelineConfig
        ``config.execution`` gives the cluster profile, workers, memory, retries.
    out_dir : path
        Derivatives root; ledger at ``OUT_DIR/ledger.tsv``, table at ``OUT_DIR/group/``.
    work_dir : path, optional
        Scratch (Prefect database, Dask spill, per-session scratch); ``OUT_DIR/../work`` style
        default: ``OUT_DIR/.gliaflow/work``.
    level : {"participant", "group", "all"}
        participant: process sessions; group: cohort table + group step from finished sessions;
        all: both.
    invalid : list of SessionIssue
        Sessions discovery rejected; recorded as ``skipped`` with the reason.
    group_step : callable, optional
        ``group_step(table_path, config, out_dir)``, run after the table is written.
    profile, handle :
        Cluster profile (name/path/model; default ``config.execution.cluster``) or an already
        running :class:`ClusterHandle` (reused, not closed).
    show_progress : bool
        Rich progress display and summary table on stderr.
    info : dict, optional
        Filled with timings and addresses.

    Library warnings and log records go to ``OUT_DIR/.gliaflow/logs/run.log`` (driver) and
    ``OUT_DIR/.gliaflow/logs/<session_id>.log`` (stages), not to the terminal
    (:mod:`gliaflow.workflows.runlog`); ``CohortOutcome.log_path`` names the driver's log when
    anything was written to it.
    """
    out_dir = Path(out_dir).absolute()
    with run_log(run_log_path(out_dir)) as log_file:
        outcome = _run_cohort(specs, stages=stages, config=config, out_dir=out_dir,
                              work_dir=work_dir, level=level, invalid=invalid,
                              group_step=group_step, profile=profile, handle=handle,
                              show_progress=show_progress, flow_name=flow_name, info=info)
    outcome.log_path = log_file if log_file.is_file() else None
    return outcome


def _run_cohort(specs: Sequence, *, stages: Sequence, config: PipelineConfig, out_dir: Path,
                work_dir: str | Path | None, level: str, invalid: Sequence,
                group_step: GroupStep | None, profile: ClusterProfile | str | None,
                handle: ClusterHandle | None, show_progress: bool, flow_name: str,
                info: dict | None) -> CohortOutcome:
    """The body of :func:`run_cohort` (same parameters; ``out_dir`` absolute)."""
    t_start = time.perf_counter()
    info = info if info is not None else {}
    ex = config.execution
    work_dir = Path(work_dir or ex.work_dir or out_dir / ".gliaflow" / "work").absolute()
    work_dir.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_provenance(out_dir, config, specs)
    stages = list(stages)
    ledger = Ledger(out_dir)
    for issue in invalid:
        where = ": ".join(x for x in (issue.file, f"field '{issue.field}'" if issue.field else None) if x)
        ledger.record(issue.session_id, "skipped", error_kind="invalid",
                      error=f"{where}: {issue.message}" if where else issue.message,
                      participant_id=issue.session_id.split("_")[0])

    plans = plan_sessions(specs, stages, config, out_dir, work_dir)
    timings = {"plan_s": time.perf_counter() - t_start}
    outcome = CohortOutcome(plans=plans, ledger_path=None, timings=timings, info=info)
    todo = [p for p in plans if p.to_run(stages)] if level in ("participant", "all") else []
    console_progress = CohortProgress(len(plans), enabled=show_progress)

    if level in ("participant", "all"):
        if not todo:  # fully cached: no services needed
            sched = _Scheduler([], stages, config, out_dir, work_dir, None, console_progress, ledger)
            for p in plans:
                sched.finish(p)
        else:
            _execute(plans, stages, config, out_dir, work_dir, profile, handle, console_progress,
                     ledger, flow_name, info, timings)
    if level in ("group", "all"):
        t0 = time.perf_counter()
        if level == "group":
            for p in plans:
                if p.to_run(stages):
                    p.error_kind, p.error = "missing", "not all stages finished; run the " \
                        "participant level first (stages missing: " + ",".join(p.to_run(stages)) + ")"
        if level == "all" or ledger.rows:
            outcome.ledger_path = ledger.write()  # before the group step, which may fail
        try:
            outcome.table_path, outcome.group_result = _group(plans, config, out_dir, group_step)
        except GliaflowError as exc:  # e.g. too few subjects for the design: sessions stay done
            outcome.group_error = str(exc)
            t = out_dir / "group" / "regional.tsv"
            outcome.table_path = t if t.exists() else None
            console_progress.print(f"[red]group step failed: {exc}")
        timings["group_s"] = time.perf_counter() - t0
    if level != "group" or invalid:
        outcome.ledger_path = ledger.write()
    write_provenance(out_dir, config, specs, (outcome.group_result or {}).get("provenance")
                     if isinstance(outcome.group_result, dict) else None)
    if level in ("group", "all"):
        from gliaflow.workflows.reporting import write_dashboard

        t0 = time.perf_counter()
        try:
            outcome.dashboard_path = write_dashboard(out_dir, config, outcome.group_result)
        except Exception as exc:  # noqa: BLE001 - a report must never lose a finished cohort
            console_progress.print(f"[red]cohort dashboard failed: {type(exc).__name__}: {exc}")
        timings["dashboard_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start
    if show_progress and ledger.rows:
        from gliaflow.workflows.progress import summary_table

        console_progress.console.print(summary_table([ledger.rows[k] for k in sorted(ledger.rows)]))
    return outcome


# Schedulers of running flows, by run id: the flow function must be a plain module-level
# function (Prefect serialises the flow run context, flow included, into every task submission).
_ACTIVE: dict[str, "_Scheduler"] = {}


def _flow_body(run_id: str, n_sessions: int) -> dict:
    """The cohort flow: run the scheduler registered under ``run_id``."""
    sched = _ACTIVE[run_id]
    sched.run()
    return {"sessions": n_sessions, "submissions": sched.submissions, "crashes": sched.crashes}


def _execute(plans, stages, config, out_dir, work_dir, profile, handle, progress, ledger,
             flow_name, info, timings) -> None:
    """Start the Prefect API and the cluster, run the flow, stop what was started."""
    from prefect import flow

    from gliaflow.workflows.services.prefect_server import prefect_api, quiet_prefect_env

    ex = config.execution
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        api_url = stack.enter_context(prefect_api(work_dir, info))
        timings["prefect_start_s"] = time.perf_counter() - t0
        if info.get("private"):
            with contextlib.suppress(Exception):
                crash_stale_runs()
        t1 = time.perf_counter()
        own = handle is None
        if own:
            prof = profile if isinstance(profile, ClusterProfile) else load_profile(profile or ex.cluster)
            env = quiet_prefect_env()
            env["PREFECT_API_URL"] = api_url
            if os.environ.get("PYTHONPATH"):
                env["PYTHONPATH"] = os.environ["PYTHONPATH"]
            env.update(engine_environment(config))
            handle = start_cluster(prof, nprocs=ex.nprocs, mem_gb=ex.mem_gb,
                                   threads_per_task=ex.threads_per_task, work_dir=work_dir, env=env)
            stack.callback(handle.close)
        timings["cluster_start_s"] = time.perf_counter() - t1
        info["dashboard"] = handle.dashboard_link
        progress.print(f"Prefect UI: {info.get('ui_url')}  (API {api_url}"
                       f"{', private server' if info.get('private') else ''})")
        progress.print(f"Dask dashboard: {handle.dashboard_link or 'n/a'}  scheduler {handle.address}")
        sched = _Scheduler(plans, stages, config, out_dir, work_dir, handle, progress, ledger)

        run_id = f"{os.getpid()}-{id(sched)}"
        _ACTIVE[run_id] = sched
        f = flow(_flow_body, name=flow_name, task_runner=handle.task_runner(),
                 validate_parameters=False, persist_result=False, log_prints=False)
        t2 = time.perf_counter()
        try:
            with progress:
                state = f(run_id=run_id, n_sessions=len(plans), return_state=True)
        finally:
            _ACTIVE.pop(run_id, None)
        timings["flow_s"] = time.perf_counter() - t2
        info["submissions"] = sched.submissions
        info["crashes"] = sched.crashes
        info["stage_events"] = list(sched.stage_events)
        info["flow_run_id"] = state.state_details.flow_run_id
        info["submit_s"] = sched.submit_s
        if state.is_failed() or state.is_crashed():
            exc = state.result(raise_on_failure=False)
            if isinstance(exc, BaseException):
                raise exc
        # sessions the flow never finished (flow crashed) are failed, not silently dropped
        for p in plans:
            if p.session_id not in ledger.rows:
                sched.finish(p, ("internal", "the flow stopped before this session finished"))


def run_session_flow(spec, **kwargs) -> CohortOutcome:
    """Run one session through the same machinery (flow name ``gliaflow-session``)."""
    kwargs.setdefault("flow_name", "gliaflow-session")
    return run_cohort([spec], **kwargs)
