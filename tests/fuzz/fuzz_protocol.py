"""Coverage-guided fuzzing of the wire decoder with atheris (by hand, not in CI).

    pip install atheris
    python tests/fuzz/fuzz_protocol.py -atheris_runs=200000          # or -max_total_time=600
    python tests/fuzz/fuzz_protocol.py corpus_dir/                   # keep and grow a corpus

The input bytes are split into frames (a 2-byte length prefix per frame), so the fuzzer explores
frame counts, topics, msgpack headers and array frames together. The only allowed outcomes are a
decoded message or ProtocolError; anything else (another exception, a crash, a hang) is a bug.
"""

import sys

import atheris

with atheris.instrument_imports():
    from trigger.protocol import INPUT_KINDS, ProtocolError, decode


def frames_from(data: bytes) -> list[bytes]:
    frames, i = [], 0
    while i + 2 <= len(data) and len(frames) < 8:
        n = int.from_bytes(data[i:i + 2], "little") % 4096
        frames.append(data[i + 2:i + 2 + n])
        i += 2 + n
    return frames


def one_input(data: bytes) -> None:
    frames = frames_from(data)
    kinds = INPUT_KINDS if not data or data[0] % 2 else {"decision": 0}
    try:
        msg = decode(frames, max_bytes=1 << 16, kinds=kinds)
    except ProtocolError:
        return
    # A decoded message must be internally consistent.
    assert len(msg.arrays) == len(msg.header["arrays"])
    for arr in msg.arrays.values():
        assert not arr.flags.writeable


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
