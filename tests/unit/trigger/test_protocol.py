"""Wire protocol v1 (shared/PROTOCOL.md): round trips, one concrete reject per Reason, and fuzzing.

Other-language programs speak this protocol without reading our code, so the reject table below
builds every malformed message by hand (raw msgpack where the Python packer would refuse) and
pins the exact counted reason.
"""

from __future__ import annotations

import tracemalloc

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from trigger.protocol import (
    DTYPES,
    MAX_ARRAYS,
    MAX_HEADER_BYTES,
    Message,
    ProtocolError,
    Reason,
    as_float32,
    decode,
    encode,
    encode_input,
)

ALL_DTYPES = ["<f4", "<f2", "<i2", "<u2", "<i4", "|u1", "|b1"]
SHAPES = {"waveform": (3, 17), "image": (2, 5, 7)}
SOURCE_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-"
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def random_array(dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Values spanning the dtype's range (floats finite), from the seeded global RNG."""
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return (np.random.standard_normal(shape) * 100).astype(dt)
    if dt.kind == "b":
        return np.random.random(shape) < 0.5
    info = np.iinfo(dt)
    return np.random.randint(info.min, int(info.max) + 1, size=shape, dtype=np.int64).astype(dt)


def as_bytes(frames: list) -> list[bytes]:
    return [bytes(f) for f in frames]


# ---------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("kind", ["waveform", "image"])
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_round_trip_every_dtype(kind, dtype):
    data = random_array(dtype, SHAPES[kind])
    meta = {"truth": {"amplitude": [0.5, 0.0, 0.25], "is_signal": [True, False, True]}, "run": "r17"}
    frames = encode_input(kind, "adc03", 41, 1_700_000_000_123_456_789, data, meta=meta)

    for wire in (as_bytes(frames), [memoryview(f) for f in as_bytes(frames)], frames):
        msg = decode(wire)
        assert isinstance(msg, Message)
        assert (msg.kind, msg.source, msg.seq, msg.t_ns) == (kind, "adc03", 41, 1_700_000_000_123_456_789)
        assert msg.topic == ("wf" if kind == "waveform" else "img") + ".adc03"
        assert msg.meta == meta
        assert msg.header["v"] == 1
        assert msg.header["arrays"] == [{"name": "data", "dtype": dtype, "shape": list(SHAPES[kind])}]
        out = msg.arrays["data"]
        assert out.dtype == np.dtype(dtype)
        assert out.shape == SHAPES[kind]
        np.testing.assert_array_equal(out, data)
        assert msg.nbytes == sum(len(bytes(f)) for f in frames)


def test_meta_is_optional():
    msg = decode(as_bytes(encode_input("waveform", "adc03", 0, 0, np.zeros((1, 4), np.float32))))
    assert msg.meta is None
    assert "meta" not in msg.header


@pytest.mark.parametrize("wrap", [bytes, memoryview], ids=["bytes", "memoryview"])
def test_decoded_arrays_are_read_only_views_of_the_frame(wrap):
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    frames = [wrap(f) for f in as_bytes(encode_input("waveform", "adc03", 0, 0, data))]
    arr = decode(frames).arrays["data"]
    assert not arr.flags.writeable
    # No copy: the array is a view of the received frame's memory.
    assert np.shares_memory(arr, np.frombuffer(frames[2], dtype=np.uint8))


@pytest.mark.parametrize("wrap", [zmq.Frame, bytearray], ids=["zmq.Frame", "bytearray"])
def test_decoded_arrays_are_read_only_even_from_writable_frames(wrap):
    """The daemon receives zmq.Frame objects (copy=False) whose buffer is writable; the module
    promises read-only views, so no pipeline stage can scribble over a received frame."""
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    frames = [wrap(f) for f in as_bytes(encode_input("waveform", "adc03", 0, 0, data))]
    arr = decode(frames).arrays["data"]
    buffer = getattr(frames[2], "buffer", frames[2])
    assert np.shares_memory(arr, np.frombuffer(buffer, dtype=np.uint8))
    assert not arr.flags.writeable


def test_encode_converts_big_endian_and_fortran_order():
    data = np.asfortranarray(np.arange(12, dtype=">f4").reshape(3, 4))
    frames = encode_input("waveform", "adc03", 0, 0, data)
    msg = decode(as_bytes(frames))
    assert msg.header["arrays"][0]["dtype"] == "<f4"
    np.testing.assert_array_equal(msg.arrays["data"], data)
    assert bytes(frames[2]) == np.ascontiguousarray(data, dtype="<f4").tobytes()


def test_encode_refuses_dtypes_the_wire_does_not_allow():
    with pytest.raises(ValueError, match="not allowed"):
        encode_input("waveform", "adc03", 0, 0, np.zeros((1, 4), np.float64))


def test_decision_messages_decode_with_decision_kinds():
    n, k = 4, 3
    header = {"v": 1, "kind": "decision", "source": "adc03", "seq": 5, "t_ns": 9, "pipeline": "pulse",
              "threshold": 1.5, "working_point": "fpr_0.01"}
    arrays = {"accept": np.array([1, 0, 0, 1], bool), "score": np.arange(n, dtype=np.float32),
              "z": np.ones((n, k), np.float32)}
    frames = as_bytes(encode("dec.adc03", header, arrays))
    msg = decode(frames, kinds={"decision": 0})
    assert msg.header["threshold"] == 1.5
    for name, arr in arrays.items():
        np.testing.assert_array_equal(msg.arrays[name], arr)
    with pytest.raises(ProtocolError) as exc:
        decode(frames)  # the daemon's input side does not take decisions
    assert exc.value.reason is Reason.KIND


# ---------------------------------------------------------------------------------------------
# One concrete malformed message per reason

TOPIC = b"wf.adc03"
DATA = np.arange(6, dtype="<f4").reshape(2, 3)
BASE = {"v": 1, "kind": "waveform", "source": "adc03", "seq": 7, "t_ns": 123,
        "arrays": [{"name": "data", "dtype": "<f4", "shape": [2, 3]}]}


def header(**changes) -> dict:
    """BASE with keys replaced; a value of ``...`` deletes the key."""
    h = {**BASE, **changes}
    return {k: v for k, v in h.items() if v is not ...}


def spec(name="data", dtype="<f4", shape=(2, 3)) -> dict:
    return {"name": name, "dtype": dtype, "shape": list(shape)}


def msg(head=None, *frames, topic=TOPIC) -> list[bytes]:
    """A message: topic, header (a dict packed here, or raw bytes), array frames (default DATA)."""
    head = BASE if head is None else head
    raw = head if isinstance(head, bytes) else msgpack.packb(head, use_bin_type=True)
    return [topic, raw, *(frames if frames else (DATA.tobytes(),))]


def with_meta_raw(meta_raw: bytes) -> bytes:
    """BASE packed with a "meta" value given as raw msgpack (for values the packer refuses)."""
    body = msgpack.packb(BASE, use_bin_type=True)
    assert body[0] == 0x80 | len(BASE)  # a fixmap: bump the entry count and append one pair
    return bytes([body[0] + 1]) + body[1:] + msgpack.packb("meta") + meta_raw


DEEP = b"\x91" * 100_000 + b"\xc0"  # [[[[...[nil]...]]]], 100k levels

REJECTS = [
    # frame count
    pytest.param([], {}, Reason.FRAME_COUNT, id="no_frames"),
    pytest.param([TOPIC], {}, Reason.FRAME_COUNT, id="one_frame"),
    pytest.param(msg()[:2], {}, Reason.FRAME_COUNT, id="array_frame_missing"),
    pytest.param(msg() + [b""], {}, Reason.FRAME_COUNT, id="extra_frame"),
    pytest.param(msg(header(arrays=[])), {}, Reason.FRAME_COUNT, id="frame_without_spec"),
    # size
    pytest.param(msg(), {"max_bytes": 20}, Reason.OVERSIZE, id="message_over_max_bytes"),
    pytest.param(msg(header(meta={"pad": "x" * MAX_HEADER_BYTES})), {}, Reason.OVERSIZE, id="header_over_limit"),
    # topic
    pytest.param(msg(topic=b"wf.adc\xff03"), {}, Reason.TOPIC, id="topic_not_ascii"),
    pytest.param(msg(topic="wf.adcé".encode()), {}, Reason.TOPIC, id="topic_utf8"),
    pytest.param(msg(topic=b"wfadc03"), {}, Reason.TOPIC, id="topic_no_dot"),
    pytest.param(msg(topic=b"wf.adc04"), {}, Reason.TOPIC, id="topic_other_source"),
    pytest.param(msg(topic=b"wf.adc03.x"), {}, Reason.TOPIC, id="topic_source_suffix"),
    pytest.param(msg(topic=b".adc03"), {}, Reason.TOPIC, id="topic_empty_prefix"),
    pytest.param(msg(topic=b"w f.adc03"), {}, Reason.TOPIC, id="topic_bad_prefix_char"),
    pytest.param(msg(topic=b"x" * 33 + b".adc03"), {}, Reason.TOPIC, id="topic_prefix_too_long"),
    pytest.param(msg(topic=b""), {}, Reason.TOPIC, id="topic_empty"),
    # msgpack
    pytest.param(msg(b""), {}, Reason.MSGPACK, id="header_empty"),
    pytest.param(msg(b"\xc1"), {}, Reason.MSGPACK, id="never_used_byte"),
    pytest.param(msg(b"\xff\xfe garbage"), {}, Reason.MSGPACK, id="garbage"),
    pytest.param(msg(msgpack.packb(BASE)[:-3]), {}, Reason.MSGPACK, id="truncated"),
    pytest.param(msg(msgpack.packb(BASE) + b"\x00"), {}, Reason.MSGPACK, id="trailing_bytes"),
    pytest.param(msg(msgpack.packb(BASE) * 2), {}, Reason.MSGPACK, id="two_objects"),
    pytest.param(msg(with_meta_raw(msgpack.packb(msgpack.ExtType(5, b"ab")))), {}, Reason.MSGPACK,
                 id="ext_type"),
    pytest.param(msg(DEEP), {}, Reason.MSGPACK, id="deep_nesting"),
    pytest.param(msg(with_meta_raw(b"\x81\xa1d" + DEEP)), {}, Reason.MSGPACK, id="deep_nesting_in_meta"),
    pytest.param(msg(b"\xdd\xff\xff\xff\xff"), {}, Reason.MSGPACK, id="huge_array_length"),
    pytest.param(msg(b"\xdf\xff\xff\xff\xff"), {}, Reason.MSGPACK, id="huge_map_length"),
    pytest.param(msg(b"\xdb\xff\xff\xff\xff"), {}, Reason.MSGPACK, id="huge_str_length"),
    pytest.param(msg(b"\xc6\xff\xff\xff\xff"), {}, Reason.MSGPACK, id="huge_bin_length"),
    pytest.param(msg(with_meta_raw(b"\xdd\xff\xff\xff\xff")), {}, Reason.MSGPACK, id="huge_length_in_meta"),
    # Non-str/bytes keys are refused while unpacking (strict_map_key: no hash-flooding with int keys).
    pytest.param(msg({**BASE, 5: 1}), {}, Reason.MSGPACK, id="int_key"),
    pytest.param(msg(with_meta_raw(msgpack.packb({1: 2}))), {}, Reason.MSGPACK, id="int_key_in_meta"),
    # header type
    pytest.param(msg(msgpack.packb([1, 2, 3])), {}, Reason.HEADER, id="header_is_list"),
    pytest.param(msg(msgpack.packb(5)), {}, Reason.HEADER, id="header_is_int"),
    pytest.param(msg(msgpack.packb("v")), {}, Reason.HEADER, id="header_is_str"),
    pytest.param(msg(msgpack.packb(None)), {}, Reason.HEADER, id="header_is_nil"),
    pytest.param(msg(msgpack.packb({**BASE, b"x": 1}, use_bin_type=True)), {}, Reason.HEADER,
                 id="bytes_key"),
    # missing keys
    *[pytest.param(msg(header(**{key: ...})), {}, Reason.MISSING_KEY, id=f"missing_{key}")
      for key in ("v", "kind", "source", "seq", "t_ns", "arrays")],
    # key types and ranges
    pytest.param(msg(header(v="1")), {}, Reason.KEY_TYPE, id="v_str"),
    pytest.param(msg(header(v=True)), {}, Reason.KEY_TYPE, id="v_bool"),
    pytest.param(msg(header(v=1.0)), {}, Reason.KEY_TYPE, id="v_float"),
    pytest.param(msg(header(kind=1)), {}, Reason.KEY_TYPE, id="kind_int"),
    pytest.param(msg(header(kind=b"waveform")), {}, Reason.KEY_TYPE, id="kind_bin"),
    pytest.param(msg(header(source=["adc03"])), {}, Reason.KEY_TYPE, id="source_list"),
    pytest.param(msg(header(seq="7")), {}, Reason.KEY_TYPE, id="seq_str"),
    pytest.param(msg(header(seq=-1)), {}, Reason.KEY_TYPE, id="seq_negative"),
    pytest.param(msg(header(seq=True)), {}, Reason.KEY_TYPE, id="seq_bool"),
    pytest.param(msg(header(seq=7.0)), {}, Reason.KEY_TYPE, id="seq_float"),
    pytest.param(msg(header(seq=None)), {}, Reason.KEY_TYPE, id="seq_nil"),
    pytest.param(msg(header(t_ns=1.5)), {}, Reason.KEY_TYPE, id="t_ns_float"),
    pytest.param(msg(header(t_ns="123")), {}, Reason.KEY_TYPE, id="t_ns_str"),
    pytest.param(msg(header(meta=[1, 2])), {}, Reason.KEY_TYPE, id="meta_list"),
    pytest.param(msg(header(meta="truth")), {}, Reason.KEY_TYPE, id="meta_str"),
    pytest.param(msg(header(meta=None)), {}, Reason.KEY_TYPE, id="meta_nil"),
    # version
    pytest.param(msg(header(v=2)), {}, Reason.VERSION, id="v2"),
    pytest.param(msg(header(v=0)), {}, Reason.VERSION, id="v0"),
    # kind
    pytest.param(msg(header(kind="audio")), {}, Reason.KIND, id="kind_unknown"),
    pytest.param(msg(header(kind="")), {}, Reason.KIND, id="kind_empty"),
    pytest.param(msg(header(kind="Waveform")), {}, Reason.KIND, id="kind_case"),
    pytest.param(msg(header(kind="decision")), {}, Reason.KIND, id="kind_decision_on_input"),
    pytest.param(msg(), {"kinds": {"decision": 0}}, Reason.KIND, id="kind_waveform_on_output"),
    # source
    pytest.param(msg(header(source="adc/03"), topic=b"wf.adc/03"), {}, Reason.SOURCE, id="source_slash"),
    pytest.param(msg(header(source="a" * 65), topic=b"wf." + b"a" * 65), {}, Reason.SOURCE, id="source_65"),
    pytest.param(msg(header(source=""), topic=b"wf."), {}, Reason.SOURCE, id="source_empty"),
    pytest.param(msg(header(source="adc 03"), topic=b"wf.adc 03"), {}, Reason.SOURCE, id="source_space"),
    pytest.param(msg(header(source="adc03\n"), topic=b"wf.adc03\n"), {}, Reason.SOURCE, id="source_newline"),
    pytest.param(msg(header(source="adcé")), {}, Reason.SOURCE, id="source_non_ascii"),
    # arrays entries
    pytest.param(msg(header(arrays=spec())), {}, Reason.ARRAYS, id="arrays_map"),
    pytest.param(msg(header(arrays="data")), {}, Reason.ARRAYS, id="arrays_str"),
    pytest.param(msg(header(arrays=None)), {}, Reason.ARRAYS, id="arrays_nil"),
    pytest.param(msg(header(arrays=[["data", "<f4", [2, 3]]])), {}, Reason.ARRAYS, id="entry_list"),
    pytest.param(msg(header(arrays=[{"name": "data", "dtype": "<f4"}])), {}, Reason.ARRAYS, id="entry_no_shape"),
    pytest.param(msg(header(arrays=[{"dtype": "<f4", "shape": [2, 3]}])), {}, Reason.ARRAYS, id="entry_no_name"),
    pytest.param(msg(header(arrays=[{**spec(), "order": "C"}])), {}, Reason.ARRAYS, id="entry_extra_key"),
    pytest.param(msg(header(arrays=[spec(name=0)])), {}, Reason.ARRAYS, id="name_int"),
    pytest.param(msg(header(arrays=[spec(dtype=4)])), {}, Reason.ARRAYS, id="dtype_int"),
    pytest.param(msg(header(arrays=[spec(), spec()]), DATA.tobytes(), DATA.tobytes()), {}, Reason.ARRAYS,
                 id="duplicate_names"),
    pytest.param(msg(header(arrays=[spec(name="wave")])), {}, Reason.ARRAYS, id="wrong_name"),
    pytest.param(msg(header(arrays=[spec(), spec(name="extra")]), DATA.tobytes(), DATA.tobytes()), {},
                 Reason.ARRAYS, id="two_arrays_for_waveform"),
    pytest.param(msg(header(arrays=[]))[:2], {}, Reason.ARRAYS, id="no_arrays_for_waveform"),
    pytest.param(msg(header(arrays=[spec(name=f"a{i}") for i in range(MAX_ARRAYS + 1)]),
                     *[DATA.tobytes()] * (MAX_ARRAYS + 1)), {}, Reason.ARRAYS, id="too_many_arrays"),
    # dtype
    *[pytest.param(msg(header(arrays=[spec(dtype=d)])), {}, Reason.DTYPE, id=f"dtype_{d}")
      for d in ("<f8", "|O", ">f4", "object", "f4", "float32", "<c8", "|V4", "<U1", "")],
    # shape
    pytest.param(msg(header(arrays=[spec(shape=[6])])), {}, Reason.SHAPE, id="waveform_1d"),
    pytest.param(msg(header(arrays=[spec(shape=[1, 2, 3])])), {}, Reason.SHAPE, id="waveform_3d"),
    pytest.param(msg(header(kind="image"), topic=b"img.adc03"), {}, Reason.SHAPE, id="image_2d"),
    pytest.param(msg(header(arrays=[spec(shape=[0, 3])]), b""), {}, Reason.SHAPE, id="n_zero"),
    pytest.param(msg(header(arrays=[spec(shape=[2, 0])]), b""), {}, Reason.SHAPE, id="samples_zero"),
    pytest.param(msg(header(arrays=[spec(shape=[-1, 3])])), {}, Reason.SHAPE, id="negative_dim"),
    pytest.param(msg(header(arrays=[spec(shape=[2.0, 3])])), {}, Reason.SHAPE, id="float_dim"),
    pytest.param(msg(header(arrays=[spec(shape=["2", 3])])), {}, Reason.SHAPE, id="str_dim"),
    pytest.param(msg(header(arrays=[spec(shape=[True, 3])])), {}, Reason.SHAPE, id="bool_dim"),
    pytest.param(msg(header(arrays=[spec(shape=[None, 3])])), {}, Reason.SHAPE, id="nil_dim"),
    pytest.param(msg(header(arrays=[{**spec(), "shape": 6}])), {}, Reason.SHAPE, id="shape_int"),
    pytest.param(msg(header(arrays=[{**spec(), "shape": {"n": 2}}])), {}, Reason.SHAPE, id="shape_map"),
    pytest.param(msg(header(arrays=[spec(shape=[1] * 9)])), {}, Reason.SHAPE, id="nine_dims"),
    pytest.param(msg(header(arrays=[spec(shape=[1 << 40, 1])])), {}, Reason.SHAPE, id="dim_too_large"),
    # frame length
    pytest.param(msg(BASE, DATA.tobytes()[:-1]), {}, Reason.FRAME_LENGTH, id="frame_short"),
    pytest.param(msg(BASE, DATA.tobytes() + b"\x00"), {}, Reason.FRAME_LENGTH, id="frame_long"),
    pytest.param(msg(BASE, b""), {}, Reason.FRAME_LENGTH, id="frame_empty"),
    pytest.param(msg(header(arrays=[spec(dtype="<f2")])), {}, Reason.FRAME_LENGTH, id="frame_for_other_dtype"),
    # The element count overflows int64 (2**64 wraps to 0), so an empty frame must not pass as its data.
    pytest.param(msg(header(arrays=[spec(dtype="|u1", shape=[1 << 32, 1 << 32])]), b""), {},
                 Reason.FRAME_LENGTH, id="element_count_overflow"),
    pytest.param(msg(header(kind="image", arrays=[spec(dtype="|u1", shape=[1 << 21, 1 << 21, 1 << 22])]), b"",
                     topic=b"img.adc03"), {}, Reason.FRAME_LENGTH, id="element_count_overflow_3d"),
    # non-finite
    *[pytest.param(msg(header(arrays=[spec(dtype=d)]), np.array([[0, 1, v], [2, 3, 4]], d).tobytes()), {},
                   Reason.NON_FINITE, id=f"{name}_{d}")
      for d in ("<f4", "<f2") for name, v in (("nan", np.nan), ("inf", np.inf), ("neg_inf", -np.inf))],
    # bad values
    pytest.param(msg(header(arrays=[spec(dtype="|b1")]), bytes([0, 1, 2, 0, 1, 0])), {}, Reason.BAD_VALUE,
                 id="bool_byte_2"),
    pytest.param(msg(header(arrays=[spec(dtype="|b1")]), bytes([0, 0, 0, 0, 0, 255])), {}, Reason.BAD_VALUE,
                 id="bool_byte_255"),
]


@pytest.mark.parametrize(("frames", "kwargs", "reason"), REJECTS)
def test_reject(frames, kwargs, reason):
    with pytest.raises(ProtocolError) as exc:
        decode(frames, **kwargs)
    assert exc.value.reason is reason, str(exc.value)
    assert str(exc.value).startswith(reason.value + ": ")


def test_every_reason_has_a_reject_case():
    assert {p.values[2] for p in REJECTS} == set(Reason)


def test_reject_cases_differ_from_a_valid_message_only_where_intended():
    """The table's building blocks are themselves valid, so each case tests what its id says."""
    msg_ok = decode(msg())
    np.testing.assert_array_equal(msg_ok.arrays["data"], DATA)
    decode(msg(header(arrays=[spec(dtype="<f2")]), np.zeros((2, 3), "<f2").tobytes()))
    decode(msg(header(arrays=[spec(dtype="|b1")]), bytes([0, 1, 1, 0, 0, 1])))
    decode(msg(header(meta={"nested": {"ok": [1, [2, [3]]]}})))
    decode(msg(header(kind="image", arrays=[spec(shape=[1, 2, 3])]), topic=b"img.adc03"))
    decode(msg(header(source="A-z_0.9:x"), topic=b"wf.A-z_0.9:x"))
    decode(msg(header(source="a" * 64), topic=b"wf." + b"a" * 64))
    decode(msg(header(seq=2**64 - 1, t_ns=-(2**63))))
    decode(msg(), max_bytes=sum(len(f) for f in msg()))  # the limit itself is allowed


@pytest.mark.parametrize("depth", [10, 500])
def test_moderately_nested_meta_is_accepted(depth):
    meta = with_meta_raw(b"\x81\xa1d" + b"\x91" * depth + b"\xc0")
    value = decode(msg(meta)).meta["d"]
    for _ in range(depth):
        (value,) = value
    assert value is None


@pytest.mark.parametrize("raw", [b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff",
                                 b"\xc6\xff\xff\xff\xff", with_meta_raw(b"\xdd\xff\xff\xff\xff")],
                         ids=["array32", "map32", "str32", "bin32", "array32_in_meta"])
def test_huge_claimed_length_is_refused_without_allocating(raw):
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError) as exc:
            decode(msg(raw))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert exc.value.reason is Reason.MSGPACK
    assert peak < 1 << 20, f"decoding a {len(raw)}-byte header allocated {peak} bytes"


def test_timestamp_extension_is_refused():
    """msgpack's predefined Timestamp (ext -1) is an extension type too; the module says extension
    types are refused, and nothing but a plain msgpack value may reach meta."""
    frames = msg(header(meta={"when": msgpack.Timestamp(1, 2)}))
    with pytest.raises(ProtocolError) as exc:
        decode(frames)
    assert exc.value.reason is Reason.MSGPACK


# ---------------------------------------------------------------------------------------------
# Hypothesis

sources = st.text(alphabet=SOURCE_ALPHABET, min_size=1, max_size=64)
meta_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def inputs(draw):
    """(kind, source, seq, t_ns, data, meta) of a valid input message."""
    kind = draw(st.sampled_from(["waveform", "image"]))
    dtype = draw(st.sampled_from(ALL_DTYPES))
    shape = draw(st.tuples(st.integers(1, 4), *[st.integers(1, 6)] * (1 if kind == "waveform" else 2)))
    elements = st.floats(width=16 if dtype == "<f2" else 32, allow_nan=False, allow_infinity=False) \
        if dtype in ("<f4", "<f2") else None
    data = draw(hnp.arrays(np.dtype(dtype), shape, elements=elements))
    meta = draw(st.none() | st.dictionaries(st.text(max_size=8), meta_values, max_size=4))
    return (kind, draw(sources), draw(st.integers(0, 2**64 - 1)), draw(st.integers(-(2**63), 2**63 - 1)),
            data, meta)


def decode_or_reject(frames, **kwargs) -> Message | None:
    """Decode; None for a ProtocolError. Anything else escapes and fails the test."""
    try:
        out = decode(frames, **kwargs)
    except ProtocolError as exc:
        assert isinstance(exc.reason, Reason)
        return None
    assert isinstance(out, Message)
    assert all(arr.dtype.str in DTYPES for arr in out.arrays.values())
    if out.kind in ("waveform", "image"):
        data = out.arrays["data"]
        assert data.ndim == {"waveform": 2, "image": 3}[out.kind] and min(data.shape) >= 1
    return out


@FUZZ
@given(inputs())
def test_hypothesis_round_trip(message):
    kind, source, seq, t_ns, data, meta = message
    frames = encode_input(kind, source, seq, t_ns, data, meta=meta)
    msg_out = decode(as_bytes(frames))
    assert (msg_out.kind, msg_out.source, msg_out.seq, msg_out.t_ns, msg_out.meta) == (kind, source, seq, t_ns, meta)
    assert msg_out.arrays["data"].dtype == data.dtype
    np.testing.assert_array_equal(msg_out.arrays["data"], data)


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=6))
def test_hypothesis_garbage_frames(frames):
    decode_or_reject(frames)
    decode_or_reject(frames, kinds={"decision": 0})


header_keys = st.sampled_from(["v", "kind", "source", "seq", "t_ns", "arrays", "meta", "name", "dtype", "shape"])
shape_dims = (st.integers(-2, 3) | st.sampled_from([1 << 32, 1 << 40, 2**63, 2**64 - 1])
              | st.none() | st.text(max_size=2))
plausible_values = (
    st.sampled_from([1, 2, "waveform", "image", "decision", "adc03", "data", *ALL_DTYPES, "<f8"])
    | st.integers(-(2**63), 2**64 - 1) | st.none() | st.booleans() | st.floats() | st.binary(max_size=4)
    | st.lists(shape_dims, max_size=4)
)
array_specs = st.lists(st.fixed_dictionaries(
    {"name": st.sampled_from(["data", "x"]), "dtype": st.sampled_from(ALL_DTYPES + ["<f8", ">f4"]),
     "shape": st.lists(shape_dims, max_size=4)},
    optional={"extra": st.none()}), max_size=3)


@FUZZ
@given(head=st.dictionaries(header_keys, plausible_values | array_specs | meta_values, max_size=8),
       valid_base=st.booleans(), topic=st.sampled_from([b"wf.adc03", b"img.adc03", b"wf.x", b"bad"]),
       frames=st.lists(st.binary(max_size=48), max_size=3))
def test_hypothesis_structured_garbage(head, valid_base, topic, frames):
    """Headers that are valid msgpack maps near the real keys, so the checks past msgpack get fuzzed."""
    if valid_base:
        head = {**BASE, **head}
    decode_or_reject([topic, msgpack.packb(head, use_bin_type=True), *frames])


@FUZZ
@given(inputs(), st.data())
def test_hypothesis_mutated_messages(message, data):
    kind, source, seq, t_ns, arr, meta = message
    frames = as_bytes(encode_input(kind, source, seq, t_ns, arr, meta=meta))
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        i = data.draw(st.integers(0, len(frames) - 1), label="frame")
        frame = bytearray(frames[i])
        op = data.draw(st.sampled_from(["flip", "set", "truncate", "extend", "insert", "delete"]), label="op")
        pos = data.draw(st.integers(0, max(len(frame) - 1, 0)), label="pos")
        if op == "flip" and frame:
            frame[pos] ^= 1 << data.draw(st.integers(0, 7), label="bit")
        elif op == "set" and frame:
            frame[pos] = data.draw(st.integers(0, 255), label="byte")
        elif op == "truncate":
            del frame[pos:]
        elif op == "extend":
            frame += data.draw(st.binary(min_size=1, max_size=16), label="tail")
        elif op == "insert":
            frame[pos:pos] = data.draw(st.binary(min_size=1, max_size=4), label="inserted")
        elif op == "delete" and frame:
            del frame[pos]
        frames[i] = bytes(frame)
    decode_or_reject(frames)


# ---------------------------------------------------------------------------------------------
# as_float32


@pytest.mark.parametrize("dtype", ["<i2", "<u2", "<i4", "|u1"])
@pytest.mark.parametrize(("pedestal", "gain"), [(0.0, 1.0), (100.0, 0.5), (12.5, 0.37), (0.0, 2.0), (-3.0, 1.0)])
def test_as_float32_applies_pedestal_and_gain_to_integer_data(dtype, pedestal, gain):
    info = np.iinfo(np.dtype(dtype))
    lo, hi = max(int(info.min), -(2**20)), min(int(info.max), 2**20)  # exact in float32
    adc = np.random.randint(lo, hi + 1, size=(3, 50)).astype(dtype)
    adc[0, :2] = lo, hi
    adc.flags.writeable = False  # decoded arrays are read-only: as_float32 must not write to them
    out = as_float32(adc, pedestal=pedestal, gain=gain)
    assert out.dtype == np.float32 and out.shape == adc.shape
    assert not np.shares_memory(out, adc)
    np.testing.assert_allclose(out, (adc.astype(np.float64) - pedestal) * gain, rtol=1e-6, atol=0)


def test_as_float32_on_decoded_adc_message():
    adc = np.array([[100, 101, 99, 4095]], dtype="<u2")
    msg_out = decode(as_bytes(encode_input("waveform", "adc03", 0, 0, adc)))
    out = as_float32(msg_out.arrays["data"], pedestal=100, gain=0.25)
    np.testing.assert_array_equal(out, np.array([[0, 0.25, -0.25, 998.75]], np.float32))


def test_as_float32_passes_float32_through_without_copy():
    data = np.random.standard_normal((4, 8)).astype(np.float32)
    assert as_float32(data) is data
    # Float data counts as calibrated: pedestal and gain do not touch it.
    assert as_float32(data, pedestal=5.0, gain=3.0) is data
    decoded = decode(as_bytes(encode_input("waveform", "adc03", 0, 0, data))).arrays["data"]
    assert as_float32(decoded, pedestal=5.0, gain=3.0) is decoded


def test_as_float32_converts_float16_without_calibration():
    data = np.array([[0.5, -2.0, 65504.0]], np.float16)
    out = as_float32(data, pedestal=5.0, gain=3.0)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, data.astype(np.float32))


def test_decisions_may_carry_nan_where_a_quantity_is_undefined_inputs_may_not():
    hil = np.array([[0.0] + [np.nan] * 9], np.float32)  # Hillas of a frame whose cleaning kept nothing
    frames = encode("dec.cam1", {"v": 1, "kind": "decision", "source": "cam1", "seq": 0, "t_ns": 1}, {"hillas": hil})
    got = decode(frames, kinds={"decision": 0})
    np.testing.assert_array_equal(got.arrays["hillas"], hil)
    with pytest.raises(ProtocolError) as exc:
        decode(frames, kinds={"decision": 0}, check_finite=True)
    assert exc.value.reason is Reason.NON_FINITE
