"""Library warnings and log records during a run go to the run's log file, not the terminal."""
import logging
import threading
import warnings

import numpy as np

from gliaflow.workflows.runlog import run_log, run_log_path, session_log_path


def _noisy(tag: str) -> None:
    """What libraries do during a run: a numpy RuntimeWarning, a Python warning, nipype's INFO
    line (nipype logs to stdout through its own handler), and a gliaflow INFO record."""
    with np.errstate(divide="warn", invalid="warn"):
        np.array([0.0]) / np.array([0.0])
    warnings.warn(f"{tag}: deprecated thing", DeprecationWarning, stacklevel=1)
    logging.getLogger("nipype.interface").info("%s: nipype interface line", tag)
    logging.getLogger("gliaflow.pipeline.stats.voxelwise").info("%s: voxels left out", tag)


def _fake_nipype() -> tuple[logging.Logger, logging.Handler]:
    """nipype's logging as set up at import: a stream handler on 'nipype', INFO levels."""
    nipype = logging.getLogger("nipype")
    handler = logging.StreamHandler()
    nipype.addHandler(handler)
    nipype.setLevel(logging.INFO)
    return nipype, handler


def test_warnings_and_library_logs_land_in_the_run_log_not_the_terminal(tmp_path, capfd):
    # nipype may already be imported (and have set up its own handlers) by earlier tests
    before = list(logging.getLogger("nipype").handlers)
    propagate = logging.getLogger("nipype").propagate
    nipype, stdout_handler = _fake_nipype()
    showwarning = warnings.showwarning
    try:
        path = run_log_path(tmp_path / "out")
        assert not path.exists()
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            with run_log(path) as got:
                _noisy("driver")
        assert got == path.absolute()
        text = path.read_text()
        for line in ("RuntimeWarning: invalid value encountered in divide",
                     "DeprecationWarning: driver: deprecated thing",
                     "nipype.interface INFO: driver: nipype interface line",
                     "gliaflow.pipeline.stats.voxelwise INFO: driver: voxels left out"):
            assert line in text, line
        cap = capfd.readouterr()
        assert "driver" not in cap.out + cap.err and "encountered" not in cap.out + cap.err
        # everything is put back when the block ends
        assert warnings.showwarning is showwarning
        assert nipype.handlers == before + [stdout_handler] and nipype.propagate == propagate
        assert not logging.getLogger("py.warnings").handlers
        logging.getLogger("nipype.interface").info("after the run")
        assert "after the run" in capfd.readouterr().err
        assert "after the run" not in path.read_text()
    finally:
        nipype.removeHandler(stdout_handler)
        nipype.setLevel(logging.NOTSET)


def test_each_session_thread_writes_its_own_log(tmp_path, capfd):
    out = tmp_path / "out"
    errors = []

    def session(sid: str) -> None:
        try:
            with run_log(session_log_path(out, sid)):
                barrier.wait(timeout=10)  # both blocks open at once
                _noisy(sid)
                barrier.wait(timeout=10)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    barrier = threading.Barrier(2)
    nipype, handler = _fake_nipype()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            with run_log(run_log_path(out)):
                threads = [threading.Thread(target=session, args=(s,)) for s in ("sub-01", "sub-02")]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                logging.getLogger("nipype.workflow").info("driver line")
    finally:
        nipype.removeHandler(handler)
        nipype.setLevel(logging.NOTSET)
    assert not errors
    for sid, other in (("sub-01", "sub-02"), ("sub-02", "sub-01")):
        text = session_log_path(out, sid).read_text()
        assert f"{sid}: nipype interface line" in text and f"{sid}: deprecated thing" in text
        assert other not in text and "driver line" not in text
    assert "driver line" in run_log_path(out).read_text()
    cap = capfd.readouterr()
    assert "sub-0" not in cap.out + cap.err and "driver line" not in cap.out + cap.err
