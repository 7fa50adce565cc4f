"""BIDS derivatives writer: names, refusal to write into the input, atomic writes."""
from __future__ import annotations

import os
import json
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from gliaflow.pipeline.io.derivatives import (
    Derivatives,
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    build_name,
    save_nifti,
    write_tsv,
)
from gliaflow.pipeline.errors import OutputError


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------------------------------
# names
# ------------------------------------------------------------------------------------------
def test_build_name_entity_order():
    ent = {"desc": "preproc", "space": "MNI152NLin2009cAsym", "run": "1", "trc": "PBR28",
           "ses": "baseline", "sub": "01"}
    assert build_name(ent, "pet", ".nii.gz") == \
        "sub-01_ses-baseline_trc-PBR28_run-1_space-MNI152NLin2009cAsym_desc-preproc_pet.nii.gz"
    assert build_name({"to": "T1w", "from": "petref", "sub": "01", "mode": "image"}, "xfm", "txt") == \
        "sub-01_from-petref_to-T1w_mode-image_xfm.txt"
    # None and empty entities are dropped
    assert build_name({"sub": "01", "ses": None, "run": "", "seg": "ho"}, "tacs", ".tsv") == \
        "sub-01_seg-ho_tacs.tsv"


def test_build_name_unknown_entity():
    with pytest.raises(ValueError, match="bogus"):
        build_name({"sub": "01", "bogus": "x"}, "pet", ".nii.gz")


def test_derivatives_path(tmp_path):
    d = Derivatives(tmp_path / "out")
    p = d.path({"sub": "01", "ses": "a", "trc": "PBR28", "desc": "preproc"}, "pet", ".nii.gz")
    assert p == tmp_path / "out/sub-01/ses-a/pet/sub-01_ses-a_trc-PBR28_desc-preproc_pet.nii.gz"
    p = d.path({"sub": "02", "ses": None}, "T1w", ".nii.gz", datatype="anat")
    assert p == tmp_path / "out/sub-02/anat/sub-02_T1w.nii.gz"


# ------------------------------------------------------------------------------------------
# output inside input
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["same", "inside", "deep", "symlink"])
def test_refuses_output_inside_input(tmp_path, where):
    bids = tmp_path / "bids"
    (bids / "derivatives").mkdir(parents=True)
    out = {"same": bids, "inside": bids / "derivatives" / "gliaflow",
           "deep": bids / "sub-01" / "x" / "y"}.get(where)
    if where == "symlink":
        out = tmp_path / "link"
        out.symlink_to(bids / "derivatives", target_is_directory=True)
    with pytest.raises(OutputError) as exc:
        Derivatives(out, input_dir=bids)
    assert "inside the input dataset" in exc.value.message


def test_output_next_to_input_is_fine(tmp_path):
    bids = tmp_path / "bids"
    bids.mkdir()
    d = Derivatives(tmp_path / "bids-derivatives", input_dir=bids)  # shares a name prefix only
    p = d.write_dataset_description("0.1.0", config_hash="abc123")
    desc = json.loads(p.read_text())
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"][0]["Name"] == "gliaflow" and desc["GeneratedBy"][0]["ConfigHash"] == "abc123"
    assert desc["SourceDatasets"][0]["URL"] == bids.absolute().as_uri()
    assert _listing(bids) == []


# ------------------------------------------------------------------------------------------
# atomic writes
# ------------------------------------------------------------------------------------------
def test_atomic_path_success(tmp_path):
    final = tmp_path / "a" / "b" / "img.nii.gz"
    with atomic_path(final) as tmp:
        assert tmp.parent == final.parent and tmp.name.endswith(".nii.gz") and tmp != final
        assert not final.exists()
        tmp.write_bytes(b"data")
    assert final.read_bytes() == b"data"
    assert _listing(final.parent) == ["img.nii.gz"]


def test_exception_leaves_no_final_and_no_temp(tmp_path):
    final = tmp_path / "out.tsv"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(final) as tmp:
            tmp.write_text("half written")
            raise RuntimeError("boom")
    assert not final.exists()
    assert _listing(tmp_path) == []


def test_existing_final_untouched_on_failure(tmp_path):
    final = tmp_path / "report.json"
    final.write_text('{"old": true}')
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(final) as tmp:
            tmp.write_text('{"new": tr')
            raise KeyboardInterrupt
    assert final.read_text() == '{"old": true}'
    assert _listing(tmp_path) == ["report.json"]
    # a writer that fails inside atomic_write_json leaves the old file as well
    with pytest.raises(TypeError):
        atomic_write_json(final, {"x": object()})
    assert final.read_text() == '{"old": true}'
    assert _listing(tmp_path) == ["report.json"]


def test_atomic_replace_existing(tmp_path):
    final = atomic_write_text(tmp_path / "f.txt", "one")
    atomic_write_text(final, "two")
    assert final.read_text() == "two" and _listing(tmp_path) == ["f.txt"]


def test_json_numpy_values(tmp_path):
    p = atomic_write_json(tmp_path / "v.json", {"a": np.float32(1.5), "b": np.int64(3),
                                                 "c": np.array([1, 2]), "d": np.float32("nan"),
                                                 "e": tmp_path})
    assert json.loads(p.read_text()) == {"a": 1.5, "b": 3, "c": [1, 2], "d": None, "e": str(tmp_path)}


@pytest.mark.parametrize("value", [float("nan"), np.float64("inf")])
def test_json_non_finite_python_floats_become_null(tmp_path, value):
    p = atomic_write_json(tmp_path / "v.json", {"d": value})
    assert "NaN" not in p.read_text() and "Infinity" not in p.read_text()
    assert json.loads(p.read_text()) == {"d": None}


def test_save_nifti_and_tsv(tmp_path):
    img = nib.Nifti1Image(np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.eye(4))
    p = save_nifti(img, tmp_path / "x" / "sub-01_pet.nii.gz")
    assert np.array_equal(np.asarray(nib.load(p).dataobj), img.get_fdata(dtype=np.float32))
    assert _listing(p.parent) == ["sub-01_pet.nii.gz"]
    t = write_tsv(pd.DataFrame({"frame_start": [0.0, 10.0], "WB": [1.5, np.nan]}), tmp_path / "t.tsv")
    assert t.read_text().splitlines() == ["frame_start\tWB", "0\t1.5", "10\tn/a"]


def test_sidecar_name(tmp_path):
    p = Derivatives.sidecar(tmp_path / "sub-01_desc-preproc_pet.nii.gz", {"Units": "Bq/mL"})
    assert p.name == "sub-01_desc-preproc_pet.json" and json.loads(p.read_text())["Units"] == "Bq/mL"


# ------------------------------------------------------------------------------------------
# full disk and read-only folder (need mount; skipped where not permitted)
# ------------------------------------------------------------------------------------------
@pytest.fixture
def tiny_tmpfs(tmp_path):
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_disk_full(tiny_tmpfs):
    final = tiny_tmpfs / "big.txt"
    final.write_text("previous")
    with pytest.raises(OutputError) as exc:
        atomic_write_text(final, "x" * 2_000_000)
    assert exc.value.file == str(final)
    assert final.read_text() == "previous"
    assert _listing(tiny_tmpfs) == ["big.txt"]


def test_read_only_folder(tiny_tmpfs):
    (tiny_tmpfs / "sub").mkdir()
    r = subprocess.run(["mount", "-o", "remount,ro", str(tiny_tmpfs)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot remount read-only")
    with pytest.raises(OutputError) as exc:
        atomic_write_text(tiny_tmpfs / "sub" / "a.txt", "x")
    assert "a.txt" in str(exc.value)
    with pytest.raises(OutputError):
        atomic_write_text(tiny_tmpfs / "new" / "a.txt", "x")  # folder cannot be created


def test_atomic_files_get_the_usual_mode_not_owner_only(tmp_path):
    old = os.umask(0o022)
    try:
        p = atomic_write_text(tmp_path / "shared.txt", "x")
    finally:
        os.umask(old)
    from gliaflow.pipeline.io import derivatives
    assert (p.stat().st_mode & 0o777) == derivatives._FILE_MODE
    assert p.stat().st_mode & 0o044  # group/other can read under the usual umask
