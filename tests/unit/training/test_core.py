"""The training library: streaming from recordings, the shuffle buffer, splits, checkpoints, the runner."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from training.core import checkpoint  # noqa: E402
from training.core.recorded import SPLITS, DataError, Recording, SplitFractions, signal_rows  # noqa: E402
from training.core.runtime import OrtRunner  # noqa: E402
from training.vcae import VCAE, VCAEConfig  # noqa: E402

from .conftest import write_foreign  # noqa: E402

pytestmark = pytest.mark.train
TRAINING = Path(__file__).resolve().parents[3] / "training"


def test_no_task_script_imports_another():
    tasks = {p.stem for p in TRAINING.glob("train_*.py")}
    for p in TRAINING.glob("train_*.py"):
        imported = set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported |= {node.module.split(".")[-1]} | {a.name for a in node.names if node.module == "training"}
            elif isinstance(node, ast.Import):
                imported |= {a.name.split(".")[-1] for a in node.names}
        assert not (imported & tasks) - {p.stem}, f"{p.name} imports {(imported & tasks) - {p.stem}}"


def test_splits_are_a_seeded_partition(foreign_noise):
    rec = Recording([foreign_noise], min_samples=256)
    fr = SplitFractions(0.5, 0.1, 0.3)
    labels = rec.assign(fr, 5)
    assert np.array_equal(labels, rec.assign(fr, 5)) and not np.array_equal(labels, rec.assign(fr, 6))
    counts = np.bincount(labels, minlength=4)
    assert dict(zip(SPLITS, counts.tolist(), strict=True)) == fr.counts(rec.n_events)


def test_stream_and_shuffle_buffer_give_every_noise_row_of_a_split_once(foreign_noise):
    rec = Recording([foreign_noise], min_samples=256, chunk_events=300)
    labels = rec.assign(SplitFractions(0.5, 0.1, 0.3), 5)
    rows, x = rec.load(labels, "train")
    data, truth = rec.reader.read(0, rec.n_events)
    sig = signal_rows(truth, rec.n_events)
    assert sig.any() and not sig[rows].any()  # signal rows dropped
    assert np.array_equal(np.sort(rows), np.nonzero((labels == 0) & ~sig)[0])
    assert x.dtype == np.float32 and np.array_equal(x, data[rows].astype(np.float32))  # as recorded, no scaling
    batches = list(rec.shuffled_batches(labels, "train", 32, np.random.default_rng(1), buffer_events=256))
    assert all(len(b) <= 32 for b in batches)
    got = np.concatenate(batches)
    key = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731
    assert np.array_equal(key(got), key(x))
    first = np.concatenate([b[:1] for b in batches[:20]])
    assert not np.array_equal(first, x[:20])  # not in file order


def test_refuses_short_traces_other_kinds_and_mixed_shapes(tmp_path):
    short = write_foreign(tmp_path / "short.h5", 50, seed=1, n_samples=200)
    with pytest.raises(DataError, match="200 samples; at least 256"):
        Recording([short], min_samples=256)
    a = write_foreign(tmp_path / "a.h5", 50, seed=1, n_samples=300)
    b = write_foreign(tmp_path / "b.h5", 50, seed=1, n_samples=400)
    with pytest.raises(DataError, match="differ in event shape"):
        Recording([a, b], min_samples=256)
    with pytest.raises(DataError):
        Recording([tmp_path / "missing.h5"], min_samples=256)


def test_checkpoint_round_trip_and_old_pulse_checkpoints(tmp_path):
    model = VCAE(VCAEConfig(n_samples=1024, trace_samples=700, input_offset=1000.0, input_scale=12.0))
    checkpoint.save_checkpoint(tmp_path / "m.pt", "pulse", model, {"epoch": 3})
    task, loaded, extra = checkpoint.load_checkpoint(tmp_path / "m.pt", {"pulse": lambda c: VCAE(VCAEConfig(**c))})
    assert task == "pulse" and extra == {"epoch": 3}
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values(),
                                                 strict=True))
    torch.save({"config": model.config.to_dict(), "state_dict": model.state_dict()}, tmp_path / "old.pt")
    from training.pulse_simulated import load_checkpoint

    assert load_checkpoint(tmp_path / "old.pt").config == model.config
    with pytest.raises(ValueError, match="reserved"):
        checkpoint.save_checkpoint(tmp_path / "x.pt", "pulse", model, {"task": "other"})


def test_one_runner_batches_like_one_call(tmp_path):
    from training.export import export_onnx

    model = VCAE(VCAEConfig(n_samples=512, trace_samples=300)).eval()
    path = tmp_path / "m.onnx"
    x = np.random.default_rng(0).normal(size=(70, 300)).astype(np.float32)
    export_onnx(model, path, pt2=False, check=x)
    runner = OrtRunner(path, batch_size=16)
    assert runner.input_names == ["waveform"] and runner.output_names == ["z_mean"]
    np.testing.assert_allclose(runner(x), OrtRunner(path, batch_size=1000)(x), atol=1e-6)


def test_several_files_read_as_one_run_with_per_file_counts(tmp_path):
    a = write_foreign(tmp_path / "a.h5", 120, seed=1, n_samples=300)
    b = write_foreign(tmp_path / "b.h5", 80, seed=2, n_samples=300)
    rec = Recording([a, b], min_samples=256, chunk_events=50)
    assert rec.n_events == 200 and rec.file_rows.tolist() == [0, 120, 200]
    labels = rec.assign(SplitFractions(0.5, 0.1, 0.3), 1)
    rows, x = rec.load(labels, "train")
    assert sum(rec.per_file(rows)) == len(rows) and all(c > 0 for c in rec.per_file(rows))
    from trigger.runfile import open_run

    with open_run(b) as r:
        tail, _ = r.read(0, 80)
    mine = rows >= 120
    assert np.array_equal(x[mine], tail[rows[mine] - 120].astype(np.float32))
