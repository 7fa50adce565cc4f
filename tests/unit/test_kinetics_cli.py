"""``gliaflow kinetics`` on phantom files: TAC table + JSON sidecar, BIDS blood TSV/JSON."""
from __future__ import annotations

import json
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pandas as pd
import pytest

from gliaflow.pipeline.kinetics.forward import feng_input, tcm_tac
from gliaflow.workflows.cli.main import main

DUR = [10] * 8 + [20] * 5 + [30] * 4 + [60] * 4 + [180] * 4 + [360] * 12
FE = np.cumsum(DUR) * 1.0
FS = FE - np.array(DUR)
T = np.arange(0.0, FE[-1] + 2.0, 1.0)
CP = feng_input(T, 4.0e5, 2.5e3, 1.5e3, 4.0, 0.25, 0.008, 15.0)
REGIONS = {"frontal": (0.12, 0.10, 0.06, 0.05), "whole_brain": (0.10, 0.08, 0.05, 0.06)}


@pytest.fixture()
def files(tmp_path):
    tac = pd.DataFrame({"frame_start": FS, "frame_end": FE})
    for n, p in REGIONS.items():
        tac[n] = tcm_tac(FS, FE, T, CP, CP, *p, 0.05) / 1000.0  # kBq/mL
    tsv = tmp_path / "sub-01_seg-test_tacs.tsv"
    tac.to_csv(tsv, sep="\t", index=False)
    tsv.with_suffix(".json").write_text(json.dumps({"Units": "kBq/mL"}))
    # an already metabolite-corrected plasma recording, sampled densely early and sparsely late
    ts = np.concatenate([np.arange(0, 300, 2.0), np.arange(300, 5600, 60.0), [FE[-1]]])
    blood = pd.DataFrame({"time": ts, "plasma_radioactivity": np.interp(ts, T, CP),
                          "whole_blood_radioactivity": np.interp(ts, T, CP)})
    bt = tmp_path / "sub-01_recording-manual_blood.tsv"
    blood.to_csv(bt, sep="\t", index=False)
    bt.with_suffix(".json").write_text(json.dumps({
        "time": {"Units": "s"}, "plasma_radioactivity": {"Units": "Bq/mL"},
        "whole_blood_radioactivity": {"Units": "Bq/mL"}}))
    return tsv, bt


def test_cli_fits_one_row_per_region(files, tmp_path, capsys):
    tsv, bt = files
    out = tmp_path / "out" / "params.tsv"
    code = main(["kinetics", "--tacs", str(tsv), "--blood", str(bt), "--model", "2tcm",
                 "--parent-fraction-model", "none", "--blood-delay", "0", "--out", str(out)])
    assert code == 0
    res = pd.read_csv(out, sep="\t")
    assert list(res["region"]) == list(REGIONS)
    for c in ("K1", "k2", "k3", "k4", "vB", "VT", "VT_se", "aic", "wssr", "converged", "reason"):
        assert c in res.columns, c  # one model: no prefix
    truth = [p[0] / p[1] * (1 + p[2] / p[3]) for p in REGIONS.values()]
    assert np.allclose(res["VT"], truth, rtol=0.02)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["TACUnits"] == "kBq/mL" and meta["Blood"]["delay_s"] == 0


def test_cli_several_models_and_delay_fit(files, tmp_path):
    tsv, bt = files
    out = tmp_path / "p.tsv"
    code = main(["kinetics", "--tacs", str(tsv), "--blood", str(bt), "--model", "logan",
                 "--model", "ma1", "--model", "suvr", "--reference-region", "whole_brain",
                 "--parent-fraction-model", "none", "--tstar", "30", "--out", str(out)])
    assert code == 0
    res = pd.read_csv(out, sep="\t").set_index("region")
    assert res.loc["whole_brain", "suvr_SUVR"] == pytest.approx(1.0)
    assert res.loc["frontal", "logan_VT"] == pytest.approx(0.12 / 0.10 * 2.2, rel=0.05)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert abs(meta["Blood"]["delay_s"]) <= 2.0  # no delay in the phantom


def test_cli_bad_input_messages(files, tmp_path, capsys):
    tsv, bt = files
    tsv.with_suffix(".json").unlink()
    code = main(["kinetics", "--tacs", str(tsv), "--blood", str(bt), "--model", "2tcm",
                 "--parent-fraction-model", "none", "--out", str(tmp_path / "x.tsv")])
    assert code == 2
    assert "TAC units unknown" in capsys.readouterr().err
    code = main(["kinetics", "--tacs", str(tsv), "--tac-units", "kBq/mL", "--model", "logan",
                 "--out", str(tmp_path / "x.tsv")])
    assert code == 2
    assert "--blood" in capsys.readouterr().err
    # default parent-fraction model (hill) with no fractions in the blood data: clear error
    code = main(["kinetics", "--tacs", str(tsv), "--tac-units", "kBq/mL", "--blood", str(bt),
                 "--model", "2tcm", "--out", str(tmp_path / "x.tsv")])
    assert code == 2
    assert "metabolite_parent_fraction" in capsys.readouterr().err
