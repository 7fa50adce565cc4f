"""A private Prefect server for single-machine runs (never ephemeral mode with worker processes).

Prefect's ephemeral mode starts a temporary in-process server in *each* process that talks to
the API, so Dask worker processes would each get their own and task runs would fail or vanish.
:func:`prefect_api` therefore either uses the server named by ``PREFECT_API_URL`` or starts
``prefect server start`` as a subprocess bound to loopback on a free port, with its home and
SQLite database under the work dir, exports ``PREFECT_API_URL`` (so Dask workers started
afterwards inherit it) and stops the server at the end.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

from gliaflow.pipeline.errors import ConfigError

__all__ = ["PrefectServer", "prefect_api", "quiet_prefect_env", "free_port"]

# Environment for quiet Prefect logging in the terminal (driver and workers).
QUIET_ENV = {
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_LOGGING_LOGGERS_PREFECT_FLOW_RUNS_LEVEL": "WARNING",
    # failed task runs are reported in the ledger and summary (tracebacks in WORK/<session>/)
    "PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL": "CRITICAL",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
    "PREFECT_TASKS_REFRESH_CACHE": "false",
    "PREFECT_CLI_COLORS": "false",
    # task-run logs are not shipped to the API (one HTTP batch less per task; states still are)
    "PREFECT_LOGGING_TO_API_ENABLED": "false",
}


def quiet_prefect_env() -> dict[str, str]:
    """Environment variables that keep Prefect's own logging quiet (WARNING and above)."""
    return dict(QUIET_ENV)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` at the time of the call."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _healthy(api_url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: SIGTERM this process when the driver dies (even by SIGKILL)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class PrefectServer:
    """A ``prefect server start`` subprocess on loopback, state under ``home``.

    Parameters
    ----------
    home : path
        Folder for PREFECT_HOME, the SQLite database (``prefect.db``) and the server log.
    port : int, optional
        TCP port; a free one by default.
    startup_timeout_s : float
        Seconds to wait for ``/api/health`` (seconds).

    Attributes
    ----------
    api_url : str
        ``http://127.0.0.1:<port>/api``.
    startup_s : float
        Measured start time (seconds), set by :meth:`start`.
    """

    def __init__(self, home: str | Path, port: int | None = None, startup_timeout_s: float = 90.0):
        self.home = Path(home).absolute()
        self.port = port or free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.ui_url = f"http://127.0.0.1:{self.port}"
        self.startup_timeout_s = startup_timeout_s
        self.startup_s: float | None = None
        self._proc: subprocess.Popen | None = None

    def start(self) -> "PrefectServer":
        """Start the server and wait until it answers (raises ConfigError on failure)."""
        self.home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(QUIET_ENV)
        env.update({
            "PREFECT_HOME": str(self.home),
            "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{self.home / 'prefect.db'}",
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(self.port),
            "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
            "PREFECT_UI_API_URL": self.api_url,
        })
        exe = shutil.which("prefect", path=str(Path(sys.executable).parent)) or shutil.which("prefect")
        cmd = [exe, "server", "start"] if exe else [sys.executable, "-m", "prefect", "server", "start"]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port), "--no-scheduler", "--no-late-runs",
                "--analytics-off"]
        self._log = open(self.home / "server.log", "ab")
        t0 = time.perf_counter()
        self._proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True,
                                      preexec_fn=_die_with_parent)
        while time.perf_counter() - t0 < self.startup_timeout_s:
            if self._proc.poll() is not None:
                self._log.close()
                tail = (self.home / "server.log").read_text(errors="replace")[-2000:]
                raise ConfigError(f"the private Prefect server exited (code {self._proc.returncode}):"
                                  f"\n{tail}", file=self.home / "server.log")
            if _healthy(self.api_url, timeout=0.5):
                self.startup_s = time.perf_counter() - t0
                return self
            time.sleep(0.1)
        self.stop()
        raise ConfigError(f"the private Prefect server did not answer within "
                          f"{self.startup_timeout_s:.0f} s", file=self.home / "server.log")

    def stop(self) -> None:
        """Stop the server (SIGTERM to its process group, SIGKILL after 10 s)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        with contextlib.suppress(Exception):
            self._log.close()

    def __enter__(self) -> "PrefectServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def prefect_api(work_dir: str | Path, info: dict | None = None) -> Iterator[str]:
    """Make a Prefect API available for this process and the processes it starts.

    Uses ``PREFECT_API_URL`` when it is set (a shared server, e.g. on a cluster); otherwise
    starts a :class:`PrefectServer` under ``work_dir/prefect`` and stops it on exit. While the
    block runs, ``os.environ`` carries ``PREFECT_API_URL`` and the quiet-logging variables, and
    Prefect's settings in this process point at the server.

    Parameters
    ----------
    work_dir : path
        Scratch folder; the private server keeps its SQLite database under ``work_dir/prefect``.
    info : dict, optional
        Filled with ``api_url``, ``ui_url``, ``private`` (bool) and ``startup_s`` (seconds).

    Yields
    ------
    str
        The API URL.
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_LOGGING_LEVEL, temporary_settings

    info = info if info is not None else {}
    saved = {k: os.environ.get(k) for k in list(QUIET_ENV) + ["PREFECT_API_URL"]}
    server = None
    saved_levels: dict[str, int] = {}
    try:
        for k, v in QUIET_ENV.items():
            os.environ.setdefault(k, v)
        url = os.environ.get("PREFECT_API_URL")
        if url:
            info.update(api_url=url, ui_url=url[:-4] if url.endswith("/api") else url,
                        private=False, startup_s=0.0)
        else:
            server = PrefectServer(Path(work_dir) / "prefect").start()
            url = server.api_url
            os.environ["PREFECT_API_URL"] = url
            info.update(api_url=url, ui_url=server.ui_url, private=True, startup_s=server.startup_s)
        import logging

        for name in ("prefect", "prefect.flow_runs", "prefect.task_runs", "prefect.task_runner.dask",
                     "distributed"):
            lg = logging.getLogger(name)
            saved_levels[name] = lg.level
            lg.setLevel(logging.WARNING)
        with temporary_settings(updates={PREFECT_API_URL: url,
                                         PREFECT_LOGGING_LEVEL: os.environ["PREFECT_LOGGING_LEVEL"]}):
            yield url
    finally:
        if server is not None:
            server.stop()
        import logging

        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
