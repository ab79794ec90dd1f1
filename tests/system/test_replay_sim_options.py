"""``trigger replay --simulate waveform|sky --sim KEY=VALUE``: the simulator's configuration fields reach
the stream (a detector unlike the defaults, as README's "Your own detector" needs), and a misspelt or
mistyped option is refused with one line that names the options, before anything is sent."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from simulators.waveform import WaveformSimulator
from trigger.runfile import open_run
from trigger.testing import ManagedProcess, free_port

TRIGGER = [sys.executable, "-m", "trigger"]
ENV = dict(os.environ, PYTHONUNBUFFERED="1")
OPTIONS = {"n_samples": "3000", "adc": "int16", "pedestal": "1000", "gain": "2000", "white_noise": "0.005",
           "noise_mean_pulses": "30"}


def test_sim_options_shape_the_recorded_stream(tmp_path):
    """A real replay (PUSH) of 96 int16 traces of 3000 samples -> a real ``trigger record`` (PULL): the
    file holds exactly what the simulator configured the same way makes."""
    ep = f"tcp://127.0.0.1:{free_port()}"
    out = tmp_path / "noise.h5"
    rec = ManagedProcess([*TRIGGER, "record", "--input", ep, "--input-pattern", "pull", "--output", str(out),
                          "--events", "96"], " ready: ", startup_timeout=30)
    try:
        sim = [a for k, v in OPTIONS.items() for a in ("--sim", f"{k}={v}")]
        r = subprocess.run([*TRIGGER, "replay", "--simulate", "waveform", *sim, "--signal-fraction", "0",
                            "--seed", "5", "--events", "96", "--batch", "16", "--rate", "0", "--pattern", "push",
                            "--output", ep], capture_output=True, text=True, env=ENV, timeout=120)
        assert r.returncode == 0, r.stderr
        assert rec.proc.wait(timeout=60) == 0, rec.text()
    finally:
        rec.close()
    reference = WaveformSimulator(seed=5, signal_fraction=0.0, n_samples=3000, adc="int16", pedestal=1000.0,
                                  gain=2000.0, white_noise=0.005, noise_mean_pulses=30.0)
    reference.next(0)  # replay asks its source for 0 events first, then one message at a time
    expected = np.concatenate([reference.next(16)[0] for _ in range(6)])
    with open_run(out) as run:
        data, _ = run.read()
    assert data.dtype == np.dtype("<i2") and data.shape == (96, 3000)
    np.testing.assert_array_equal(data, expected)


def test_unknown_or_mistyped_sim_option_is_one_line_exit_2():
    for option, says in (("n_sample=3000", "unknown waveform simulation option(s) n_sample; the options are "
                                           "n_samples,"),
                         ("n_samples=2.5", "waveform simulation option n_samples must be int, got 2.5"),
                         ("adc=7", "waveform simulation option adc must be str, got 7")):
        r = subprocess.run([*TRIGGER, "replay", "--simulate", "waveform", "--sim", option, "--events", "1",
                            "--output", f"tcp://127.0.0.1:{free_port()}"], capture_output=True, text=True, env=ENV,
                           timeout=60)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and says in lines[0], r.stderr


def test_sky_sim_option_sets_the_frame_size(tmp_path):
    ep = f"tcp://127.0.0.1:{free_port()}"
    out = tmp_path / "sky.h5"
    rec = ManagedProcess([*TRIGGER, "record", "--input", ep, "--input-pattern", "pull", "--output", str(out),
                          "--events", "4"], " ready: ", startup_timeout=30)
    try:
        r = subprocess.run([*TRIGGER, "replay", "--simulate", "sky", "--sim", "size=32", "--events", "4",
                            "--batch", "2", "--rate", "0", "--pattern", "push", "--output", ep],
                           capture_output=True, text=True, env=ENV, timeout=120)
        assert r.returncode == 0, r.stderr
        assert rec.proc.wait(timeout=60) == 0, rec.text()
    finally:
        rec.close()
    with open_run(out) as run:
        assert run.read()[0].shape == (4, 32, 32)


def test_signal_start_beyond_a_shortened_trace_is_warned_about():
    """``--sim n_samples=2500`` with the default signal start (sample 3000) would stream signals nobody can
    see, labelled signal in the truth: replay says so."""
    def replay(*sim: str) -> subprocess.CompletedProcess:
        return subprocess.run([*TRIGGER, "replay", "--simulate", "waveform", *sim, "--events", "32", "--rate", "0",
                               "--output", f"tcp://127.0.0.1:{free_port()}"], capture_output=True, text=True,
                              env=ENV, timeout=60)

    r = replay("--sim", "n_samples=2500")
    assert r.returncode == 0, r.stderr
    assert ("signal pulses start at sample 3000, at or after the end of the 2500-sample trace: none is visible, "
            "although truth says signal (set signal_t0, e.g. --sim signal_t0=500)") in r.stderr
    r = replay("--sim", "n_samples=2500", "--sim", "signal_t0=500")
    assert r.returncode == 0 and "signal pulses start" not in r.stderr, r.stderr
