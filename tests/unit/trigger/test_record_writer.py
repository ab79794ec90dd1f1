"""The recorder's writer thread on an error nobody foresaw (a bug): one line, and the receiving side is
never left waiting on a dead writer."""

from __future__ import annotations

import numpy as np

from trigger.protocol import decode, encode_input
from trigger.record import _STOP, RecordStats, _ByteQueue, _message_item, _Writer


def test_an_unforeseen_error_in_the_writer_is_one_line_and_the_file_keeps_what_was_flushed(tmp_path):
    q = _ByteQueue(1 << 20)
    writer = _Writer(tmp_path / "run.h5", 0, {}, False, None, None, q, RecordStats())
    writer.start()
    data = np.zeros((2, 16), "<f4")
    msg = decode(encode_input("waveform", "adc00", 0, 0, data), max_bytes=1 << 20)
    _, (layout, arrays, truth, decision, seg, nbytes) = _message_item(msg, None)
    q.put(("msg", layout, "adc00", 0, 0, arrays, truth, decision, seg, nbytes), nbytes, lambda: False)
    q.put(("msg", layout, "adc00", 1, 0, {"data": object()}, truth, decision, seg, 8), 8, lambda: False)  # a bug
    q.put(_STOP, 0, lambda: False)
    writer.join(timeout=10)
    assert not writer.is_alive()
    assert writer.error is not None and writer.error.startswith("internal error while writing")
    assert "\n" not in writer.error
    assert (tmp_path / "run.h5.writing").is_file() and not (tmp_path / "run.h5").exists()
