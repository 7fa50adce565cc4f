"""The run's log files: library warnings and log records go to a file, not the terminal.

During a run the terminal shows gliaflow's own progress and summary. Everything else that
libraries print through Python's ``warnings`` (numpy ``RuntimeWarning``, nibabel, scikit-learn
...) or through their loggers (nipype's INFO lines on stdout, matplotlib, PIL) goes to a log file
under ``OUT_DIR/.gliaflow/logs/``:

- ``run.log``: the driver (planning, the group step, the dashboard);
- ``<session_id>.log``: the stages of one session, on whichever worker ran them.

Inside :func:`run_log`, ``logging.captureWarnings(True)`` turns warnings into records of the
``py.warnings`` logger; that logger and the library loggers of :data:`LIBRARY_LOGGERS` get a
single routing handler in place of their own handlers (and stop propagating: Prefect puts a
console handler on the root logger), and the ``gliaflow`` logger gets it too, at INFO, without
propagating (the terminal has gliaflow's progress and summary instead). The handler writes each record to the file of the
innermost :func:`run_log` of the thread that emitted it (a context variable: two sessions
running in threads of one worker keep separate files), or, for threads that never entered one
(library threads), to the file of the most recent :func:`run_log` still open. When the last
:func:`run_log` of the process exits, the loggers and ``warnings.showwarning`` are restored.
Files are created at the first record (no empty logs).
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import warnings
from pathlib import Path
from typing import Iterator

from gliaflow.workflows.cache import STATE_DIR

__all__ = ["run_log", "run_log_path", "session_log_path", "LIBRARY_LOGGERS", "LOG_DIR"]

LOG_DIR = "logs"  # under OUT_DIR/.gliaflow
#: loggers whose records go only to the run's log while it is open (their own handlers, e.g.
#: nipype's stdout handler, are set aside)
LIBRARY_LOGGERS = ("py.warnings", "nipype", "matplotlib", "PIL", "fontTools", "h5py", "numexpr",
                   "nibabel")
_GLIAFLOW = "gliaflow"
_FORMAT = "%(asctime)s %(process)d %(threadName)s %(name)s %(levelname)s: %(message)s"

_target: contextvars.ContextVar[Path | None] = contextvars.ContextVar("gliaflow_run_log", default=None)


def run_log_path(out_dir: str | Path) -> Path:
    """The driver's log: ``OUT_DIR/.gliaflow/logs/run.log``."""
    return Path(out_dir) / STATE_DIR / LOG_DIR / "run.log"


def session_log_path(out_dir: str | Path, session_id: str) -> Path:
    """One session's log: ``OUT_DIR/.gliaflow/logs/<session_id>.log``."""
    return Path(out_dir) / STATE_DIR / LOG_DIR / f"{session_id}.log"


class _RoutingHandler(logging.Handler):
    """Writes each record to the log file of the :func:`run_log` the emitting thread is in."""

    def __init__(self):
        super().__init__(logging.NOTSET)
        self.files: dict[Path, logging.FileHandler] = {}
        self.open: list[Path] = []  # paths of the run_log blocks open, innermost last

    def emit(self, record: logging.LogRecord) -> None:
        path = _target.get() or (self.open[-1] if self.open else None)
        if path is None:
            return
        fh = self.files.get(path)
        if fh is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            fh = logging.FileHandler(path, encoding="utf-8", delay=True)
            fh.setFormatter(logging.Formatter(_FORMAT))
            self.files[path] = fh
        fh.handle(record)

    def close(self) -> None:
        for fh in self.files.values():
            fh.close()
        self.files.clear()
        super().close()


class _State:
    """What :func:`run_log` changed in this process (restored when the last block exits)."""

    lock = threading.RLock()
    handler: _RoutingHandler | None = None
    saved: dict[str, tuple[list[logging.Handler], bool, int]] = {}
    showwarning = None


def _install() -> _RoutingHandler:
    st = _State
    h = _RoutingHandler()
    st.showwarning = warnings.showwarning
    logging.captureWarnings(True)
    st.saved = {}
    for name in LIBRARY_LOGGERS:
        lg = logging.getLogger(name)
        st.saved[name] = (list(lg.handlers), lg.propagate, lg.level)
        lg.handlers = [h]
        lg.propagate = False
    lg = logging.getLogger(_GLIAFLOW)
    st.saved[_GLIAFLOW] = (list(lg.handlers), lg.propagate, lg.level)
    lg.addHandler(h)
    lg.propagate = False  # Prefect puts a console handler on the root logger
    if lg.level == logging.NOTSET or lg.level > logging.INFO:
        lg.setLevel(logging.INFO)
    st.handler = h
    return h


def _uninstall() -> None:
    st = _State
    for name, (handlers, propagate, level) in st.saved.items():
        lg = logging.getLogger(name)
        lg.handlers = handlers
        lg.propagate = propagate
        lg.setLevel(level)
    st.saved = {}
    logging.captureWarnings(False)
    warnings.showwarning = st.showwarning
    st.handler.close()
    st.handler = None


@contextlib.contextmanager
def run_log(path: str | Path) -> Iterator[Path]:
    """Send warnings and library log records of this block to ``path`` (see the module doc).

    Parameters
    ----------
    path : path
        Log file (appended; created with its folder at the first record).

    Yields
    ------
    Path
        ``path``, absolute.
    """
    path = Path(path).absolute()
    with _State.lock:
        h = _State.handler or _install()
        h.open.append(path)
    token = _target.set(path)
    try:
        yield path
    finally:
        _target.reset(token)
        with _State.lock:
            h.open.remove(path)
            if not h.open:
                _uninstall()
