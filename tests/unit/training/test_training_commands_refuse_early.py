"""Training commands refuse what they cannot finish before they spend time on it: a missing module of
the train extra (found otherwise only when the plots are drawn, after the whole training), and
``training.export`` given a checkpoint of a recording (it checks and calibrates on simulated waveforms
of another length, and crashed inside torch with a shape error)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("torch")

from training.core import checkpoint  # noqa: E402
from training.vcae import VCAE, VCAEConfig  # noqa: E402

# A child interpreter in which the named modules do not import (as in an environment installed without the
# extra: `pip install -e .` alone has no torch; torch installed alone has no matplotlib).
WITHOUT = ("import runpy, sys; sys.modules.update(dict.fromkeys(sys.argv.pop(1).split(','))); "
           "runpy.run_module('training.train_pulse', run_name='__main__')")


@pytest.mark.parametrize("hidden", ["matplotlib", "torch,matplotlib"])
def test_train_pulse_without_the_extra_stops_before_training(tmp_path, hidden):
    out = tmp_path / "m.onnx"
    r = subprocess.run([sys.executable, "-c", WITHOUT, hidden, "--data", str(tmp_path / "noise.h5"),
                        "--profile", "quick", "--export", str(out)], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines == [f"train_pulse: error: {hidden.replace(',', ', ')} not installed; the training needs the train "
                     "extra: pip install -e '.[train]' (it pins torch to the CPU build)"], r.stderr
    assert not out.exists() and not (tmp_path / "runs").exists()


def test_export_refuses_a_checkpoint_of_a_recording(tmp_path):
    model = VCAE(VCAEConfig(n_samples=3072, trace_samples=3000))
    ck = tmp_path / "model.pt"
    checkpoint.save_checkpoint(ck, "pulse", model, {"epoch": 1, "profile": "quick"})
    out = tmp_path / "re.onnx"
    r = subprocess.run([sys.executable, "-m", "training.export", str(ck), "-o", str(out), "--n-noise", "2000"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert "takes 3000-sample traces (a model of a recording)" in r.stderr.splitlines()[-1]
    assert not out.exists()
