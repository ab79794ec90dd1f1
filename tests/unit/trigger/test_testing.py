"""The one harness: a managed process is ready at its marker, fails at once with its last lines
when it dies at start, and is killed when it hangs silently past its start-up time."""

from __future__ import annotations

import sys
import time

import pytest

from trigger.protocol import ProtocolError, Reason, decode
from trigger.testing import ManagedProcess, bad_messages


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_ready_at_the_marker_and_stopped_cleanly():
    code = "import sys, time; print('starting', file=sys.stderr); print('up: ready', file=sys.stderr); time.sleep(60)"
    with ManagedProcess(_python(code), "up: ready", startup_timeout=30) as p:
        assert p.alive and "starting" in p.text()
        assert p.stop() != 0  # SIGTERM ends the sleeping interpreter
    assert not p.alive


def test_a_process_that_dies_at_start_fails_at_once_with_its_last_lines():
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="exited with 3 before it was ready") as err:
        ManagedProcess(_python("import sys; print('bad config: x', file=sys.stderr); sys.exit(3)"), "ready",
                       startup_timeout=60)
    assert "bad config: x" in str(err.value)
    assert time.monotonic() - t0 < 30


def test_a_silent_hang_times_out_and_is_killed():
    with pytest.raises(RuntimeError, match="not ready within 1 s"):
        ManagedProcess(_python("import time; time.sleep(60)"), "ready", startup_timeout=1)


def test_every_bad_message_is_rejected_by_the_decoder_under_its_own_reason():
    """All but ``shape`` (a well-formed message of another event shape, which only the daemon, knowing
    its model, refuses: tests/system/test_daemon.py counts it) and ``oversize`` (a size limit)."""
    bad = bad_messages(n=3, samples=256)
    assert set(bad) == {r.value for r in Reason} - {"oversize"}
    for reason, frames in bad.items():
        if reason == "shape":
            assert decode(frames, kinds={"waveform": 2}).arrays["data"].shape == (2, 100)
            continue
        with pytest.raises(ProtocolError) as err:
            decode(frames, kinds={"waveform": 2})
        assert err.value.reason == reason, (reason, str(err.value))
