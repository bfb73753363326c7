"""Tests for vinework.protocol: the messages and the sans-IO framing codec.

No sockets: bytes go straight from ``encode`` into a ``FrameDecoder``. Invalid
input of every kind must raise ``RemoteProtocolError`` (never anything else) and
leave the decoder in its error state; a hypothesis fuzz test checks that for
random bytes too.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vinework.protocol import (
    MAX_FRAME,
    PROTOCOL_VERSION,
    REGISTRY,
    CacheInvalid,
    CacheUpdate,
    Fetch,
    FileHeader,
    FrameDecoder,
    GetFile,
    Heartbeat,
    Hello,
    Hoist,
    Kill,
    Leaving,
    LocalProtocolError,
    Message,
    ProtocolError,
    RemoteProtocolError,
    RunTask,
    Shutdown,
    TaskDone,
    Unlink,
    Welcome,
    codec,
    decode_body,
    encode,
    encode_many,
)
from vinework.protocol.messages import (  # noqa: E402  (serverless libraries)
    CacheReport,
    Challenge,
    LibraryEnded,
    LibraryReady,
    OutputChunk,
    Proof,
    StartLibrary,
    StatusQuery,
    StatusReply,
    StopLibrary,
)

# Pairs are written as lists, the shape msgpack gives back, so a decoded message
# compares equal to the one that was sent.
SAMPLES: list[Message] = [
    Hello(version=PROTOCOL_VERSION, hostname="node-1", cores=8, memory=16000, disk=50000,
          gpus=1, transfer_port=40123, cached=[["file-abc", 12], ["temp-1", 0]],
          password_proof="deadbeef"),
    TaskDone(task_id=7, attempt=2, result=0, exit_code=0, output="hello\n", start=1.5,
             end=2.25, outputs=[["temp-7", 1024]], python_result=b"\x80\x05K\x01.",
             python_error="", message=""),
    TaskDone(task_id=8, attempt=0, result=2, exit_code=1, output="", start=0.0, end=0.0,
             outputs=[], python_result=None, python_error="Traceback ...", message="oops"),
    CacheUpdate(name="temp-7", size=1024, seconds=0.5, transfer_id=3, source="w2"),
    CacheInvalid(name="temp-7", transfer_id=3, reason="source: gone", source="w2"),
    Heartbeat(seq=42, disk_used=123456789),
    Leaving(reason="SIGTERM from the batch system"),
    Welcome(version=PROTOCOL_VERSION, worker_id="w1", keepalive_interval=5.0,
            transfer_port=9124, manager_name="mgr"),
    RunTask(task_id=7, attempt=1, command="cat in > out", inputs=[["file-abc", "in"]],
            outputs=[["temp-7", "out"]], env=[["A", "1"], ["B", "two"]], cores=1, memory=500,
            disk=1000, gpus=0, time_max=60.0, python_payload=b"payload",
            python_output="pyout-7-1", python_mode="fork"),
    RunTask(task_id=9, attempt=0, command="true", inputs=[], outputs=[], env=[], cores=4,
            memory=8000, disk=16000, gpus=1, time_max=0.0),
    Fetch(transfer_id=5, name="temp-7", host="10.0.0.2", port=40123, size=-1),
    Unlink(name="temp-7"),
    Kill(task_id=7),
    Shutdown(reason="manager closing"),
    Hoist(modules=["numpy", "pandas"]),
    LibraryReady(instance_id=3, pid=4242),
    OutputChunk(task_id=4, attempt=1, name="file-out-1", offset=1 << 33, data=b"\x00line\n"),
    LibraryEnded(instance_id=3, reason="killed by signal 9", setup_failed=False,
                 output="log tail\n", pid=4242),
    StartLibrary(instance_id=3, name="lib", payload=b"fns", exec_mode="direct", slots=4,
                 cores=2, memory=100, disk=100, gpus=0, inputs=[["file-abc", "model.bin"]],
                 env=[["A", "1"]], env_unset=["B"], init_command="true"),
    StopLibrary(instance_id=3, reason="evicted"),
    Challenge(nonce="ab" * 16, proof="cd" * 32),
    StatusQuery(version=5, what="all", nonce="ab" * 16),
    StatusReply(json='{"schema": 1}', error=""),
    Proof(proof="ef" * 32),
    CacheReport(cached=[["file-abc", 12], ["temp-1", 0]]),
    Fetch(transfer_id=6, name="file-abc", host="10.0.0.3", port=9, size=12,
          token="1700000000.abcdef"),
    RunTask(task_id=10, attempt=0, command="python:f", inputs=[], outputs=[], env=[],
            cores=0, memory=0, disk=0, gpus=0, time_max=0.0, python_payload=b"args",
            library_instance=3, function="f"),
    GetFile(name="temp-7", token="t0k3n"),
    FileHeader(name="temp-7", size=1024, error=""),
    FileHeader(name="dir-7", size=10240, mode=0o755, kind="dir"),
]


def frame(body: bytes) -> bytes:
    """A frame with an arbitrary body (valid or not)."""
    return struct.pack(">I", len(body)) + body


def packed(obj: Any) -> bytes:
    return frame(msgpack.packb(obj, use_bin_type=True))


def drain(dec: FrameDecoder) -> list[Message]:
    out = []
    while (m := dec.next_message()) is not None:
        out.append(m)
    return out


def assert_broken(data: bytes, match: str | None = None) -> FrameDecoder:
    """Feeding ``data`` raises RemoteProtocolError, and the decoder stays broken."""
    dec = FrameDecoder()
    dec.receive_data(data)
    with pytest.raises(RemoteProtocolError, match=match) as first:
        dec.next_message()
    assert dec.error is first.value
    dec.receive_data(encode(Heartbeat(seq=1)))  # valid data afterwards does not revive it
    with pytest.raises(RemoteProtocolError) as again:
        dec.next_message()
    assert again.value is first.value
    return dec


# ------------------------------------------------------------------ round trips


def test_samples_cover_every_registered_message() -> None:
    assert {type(m) for m in SAMPLES} == set(REGISTRY.values())
    assert all(cls.TAG == tag for tag, cls in REGISTRY.items())


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(msg: Message) -> None:
    data = encode(msg)
    assert struct.unpack(">I", data[:4])[0] == len(data) - 4
    dec = FrameDecoder()
    dec.receive_data(data)
    got = dec.next_message()
    assert got == msg
    assert type(got) is type(msg)
    assert dec.next_message() is None
    assert dec.pending() == 0
    assert decode_body(data[4:]) == msg


def test_tuple_pairs_round_trip_to_the_same_wire_bytes() -> None:
    msg = RunTask(task_id=1, attempt=0, command="x", inputs=[("a", "b")], outputs=[("c", "d")],
                  env=[("K", "V")], cores=1, memory=1, disk=1, gpus=0, time_max=0.0)
    got = decode_body(encode(msg)[4:])
    assert isinstance(got, RunTask)
    assert encode(got) == encode(msg)
    assert [tuple(p) for p in got.inputs] == [("a", "b")]


def test_defaults_fill_in_on_construction() -> None:
    h = Heartbeat(seq=3)
    assert decode_body(encode(h)[4:]) == Heartbeat(seq=3, disk_used=0)


def test_messages_are_slotted_and_keyword_only() -> None:
    k = Kill(task_id=1)
    with pytest.raises(AttributeError):
        k.other = 2  # type: ignore[attr-defined]  # nothing but its fields
    with pytest.raises(TypeError):
        Kill(1)  # type: ignore[misc]
    assert not hasattr(k, "__dict__")


def test_many_frames_in_one_buffer() -> None:
    dec = FrameDecoder()
    dec.receive_data(encode_many(SAMPLES))
    assert drain(dec) == SAMPLES
    assert dec.pending() == 0


def test_byte_at_a_time() -> None:
    data = encode_many(SAMPLES)
    dec = FrameDecoder()
    got: list[Message] = []
    for i in range(len(data)):
        dec.receive_data(data[i : i + 1])
        got.extend(drain(dec))
    assert got == SAMPLES


def test_arbitrary_chunking() -> None:
    data = encode_many(SAMPLES * 3)
    for size in (2, 3, 5, 7, 13, 64, 1000):
        dec = FrameDecoder()
        got: list[Message] = []
        for i in range(0, len(data), size):
            dec.receive_data(data[i : i + size])
            got.extend(drain(dec))
        assert got == SAMPLES * 3, size


@pytest.mark.parametrize("cut", [0, 1, 3, 4, 5, -1])
def test_truncated_frame_needs_more_data(cut: int) -> None:
    data = encode(SAMPLES[0])
    part = data[:cut] if cut >= 0 else data[:-1]
    dec = FrameDecoder()
    dec.receive_data(part)
    assert dec.next_message() is None
    assert dec.next_message() is None  # asking again changes nothing
    assert dec.error is None
    assert dec.pending() == len(part)
    dec.receive_data(data[len(part) :])
    assert dec.next_message() == SAMPLES[0]


def test_raw_bytes_after_a_header_frame() -> None:
    dec = FrameDecoder()
    dec.receive_data(encode(FileHeader(name="f", size=10)) + b"0123")
    assert dec.next_message() == FileHeader(name="f", size=10)
    assert dec.pending() == 4
    assert dec.take_raw(100) == b"0123"
    dec.receive_data(b"456789" + encode(Heartbeat(seq=1)))
    assert dec.take_raw(6) == b"456789"
    assert dec.next_message() == Heartbeat(seq=1)


def test_empty_frame_body_is_rejected() -> None:
    assert_broken(frame(b""), "undecodable")


# ------------------------------------------------------------------ oversize


def test_oversized_length_prefix() -> None:
    dec = FrameDecoder(max_frame=100)
    dec.receive_data(struct.pack(">I", 101))  # the length alone is enough to refuse
    with pytest.raises(RemoteProtocolError, match="exceeds limit") as first:
        dec.next_message()
    dec.receive_data(b"x" * 101 + encode(Heartbeat(seq=1)))
    with pytest.raises(RemoteProtocolError) as again:
        dec.next_message()
    assert again.value is first.value
    assert isinstance(dec.error, RemoteProtocolError)


def test_length_at_the_limit_is_accepted() -> None:
    msg = Unlink(name="n" * 50)
    data = encode(msg)
    dec = FrameDecoder(max_frame=len(data) - 4)
    dec.receive_data(data)
    assert dec.next_message() == msg


def test_default_limit_refuses_huge_prefix() -> None:
    assert_broken(struct.pack(">I", MAX_FRAME + 1), "exceeds limit")
    assert_broken(b"\xff\xff\xff\xff", "exceeds limit")


def test_encoding_an_oversized_message_is_a_local_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "MAX_FRAME", 100)  # the limit itself is 64 MiB: keep this fast
    assert len(encode(Hoist(modules=["m" * 80]))) <= 104
    with pytest.raises(LocalProtocolError, match="Hoist frame of"):
        encode(Hoist(modules=["m" * 100]))
    assert issubclass(LocalProtocolError, ProtocolError)
    assert not issubclass(LocalProtocolError, RemoteProtocolError)


# ------------------------------------------------------------------ invalid bodies


def test_unknown_tag() -> None:
    assert 99 not in REGISTRY
    assert_broken(packed([99, "x"]), "unknown message tag 99")


def test_negative_unknown_tag() -> None:
    assert_broken(packed([-1]), "unknown message tag")


@pytest.mark.parametrize("extra", [[], [1, [], 2]], ids=["too-few", "too-many"])
def test_wrong_field_count(extra: list[int]) -> None:
    body = [Heartbeat.TAG, 1, *extra] if extra else [Heartbeat.TAG]
    assert_broken(packed(body), "Heartbeat has")


def test_wrong_field_count_for_defaults() -> None:
    # a field with a default must still be present on the wire
    assert_broken(packed([Heartbeat.TAG, 1]), "Heartbeat has 1 fields, expected 3")


@pytest.mark.parametrize(
    "body, field",
    [
        ([Heartbeat.TAG, "1", 0, []], "seq"),  # str where an int is expected
        ([Heartbeat.TAG, True, 0, []], "seq"),  # bool where an int is expected
        ([Heartbeat.TAG, 1.0, 0, []], "seq"),  # float where an int is expected
        ([Heartbeat.TAG, None, 0, []], "seq"),  # None where an int is expected
        ([Heartbeat.TAG, 1, 0, ["7"]], "running"),  # a task id that is not an int
        ([Kill.TAG, [1]], "task_id"),
        ([Unlink.TAG, b"bytes"], "name"),  # bytes where a str is expected
        ([Unlink.TAG, 5], "name"),
        ([Shutdown.TAG, None], "reason"),
        ([Hoist.TAG, "numpy"], "modules"),  # str where a list is expected
        ([Hoist.TAG, ["numpy", 3]], "modules"),  # a bad list item
        ([Fetch.TAG, 1, "n", "h", "80", 0, 1, "", "", "", "", "", [], [], ""], "port"),
        ([Welcome.TAG, 1, "w", "5s", 0, "", 30.0, "", "", ""], "keepalive_interval"),
        ([Welcome.TAG, 1, "w", True, 0, "", 30.0, "", "", ""], "keepalive_interval"),
        ([FileHeader.TAG, "f", False, "", 0o644, "file"], "size"),
        ([GetFile.TAG, "f", None], "token"),
        ([CacheUpdate.TAG, "n", 1, 0.5, 2.0, ""], "transfer_id"),
        ([Hello.TAG, 1, "h", 1, 1, 1, 0, 9, [["f", "12"]], "", [], ""], "cached"),
        ([Hello.TAG, 1, "h", 1, 1, 1, 0, 9, [["f", 12, 3]], "", [], ""], "cached"),
        ([Hello.TAG, 1, "h", 1, 1, 1, 0, 9, [["f"]], "", [], ""], "cached"),
        ([Hello.TAG, 1, "h", 1, 1, 1, 0, 9, ["f", 12], "", [], ""], "cached"),
        ([Hello.TAG, 1, "h", 1, 1, 1, 0, 9, {"f": 12}, "", [], ""], "cached"),
        ([TaskDone.TAG, 1, 0, 0, 0, "", 0.0, 0.0, [], "not-bytes", "", "", [], "", 0, []], "python_result"),
        ([TaskDone.TAG, 1, 0, 0, 0, b"out", 0.0, 0.0, [], None, "", "", [], "", 0, []], "output"),
        ([RunTask.TAG, 1, 0, "c", [], [], [], 1, 1, 1, 0, 0.0, None, "", 5, False, 0.0, [], 1, [], [], [], [], 0, ""], "python_mode"),
        ([RunTask.TAG, 1, 0, "c", [], [], [], 1, 1, 1, 0, 0.0, None, "", "", 1, 0.0, [], 1, [], [], [], [], 0, ""], "python_keep"),
        ([CacheInvalid.TAG, "n", 1, "why", "", "2"], "cause"),
        ([Leaving.TAG, 3], "reason"),
    ],
)
def test_wrong_field_types(body: list[Any], field: str) -> None:
    assert_broken(packed(body), rf"\.{field} has wrong type")


def test_int_is_accepted_where_a_float_is_expected() -> None:
    dec = FrameDecoder()
    dec.receive_data(packed([Welcome.TAG, 1, "w", 5, 0, "", 30, "", "", ""]))
    msg = dec.next_message()
    assert isinstance(msg, Welcome) and msg.keepalive_interval == 5


def test_optional_fields_accept_none_and_their_type() -> None:
    base = [TaskDone.TAG, 1, 0, 0, 0, "", 0.0, 0.0, []]
    for pr in (None, b"x"):
        dec = FrameDecoder()
        dec.receive_data(packed([*base, pr, "", "", [], "", 0, []]))
        msg = dec.next_message()
        assert isinstance(msg, TaskDone) and msg.python_result == pr


@pytest.mark.parametrize(
    "obj",
    [5, "hello", b"bytes", None, True, 1.5, {"tag": 1}, [], ["1", 2], [None], [1.0, 1], [[1]]],
    ids=repr,
)
def test_non_list_or_untagged_body(obj: Any) -> None:
    assert_broken(packed(obj), "not a \\[tag, fields...\\] array")


@pytest.mark.parametrize(
    "body",
    [
        b"\xc1",  # a byte msgpack never uses
        b"\x92\x05",  # an array of 2 with only one item
        b"\xd9\x05ab",  # a str8 cut short
        msgpack.packb([5, 1, 0]) + b"\x00",  # trailing bytes after the object
        msgpack.packb({1: 2}),  # a map with an int key (strict_map_key)
        b"\xff" * 16,
    ],
    ids=["reserved", "short-array", "short-str", "trailing", "int-key-map", "ff"],
)
def test_garbage_bytes(body: bytes) -> None:
    assert_broken(frame(body))


def test_bad_frame_after_good_ones() -> None:
    dec = FrameDecoder()
    dec.receive_data(encode(Kill(task_id=1)) + packed([99]) + encode(Kill(task_id=2)))
    assert dec.next_message() == Kill(task_id=1)
    with pytest.raises(RemoteProtocolError):
        dec.next_message()
    with pytest.raises(RemoteProtocolError):
        dec.next_message()


def test_ext_types_are_rejected() -> None:
    body = msgpack.packb([Unlink.TAG, msgpack.ExtType(5, b"xyz")])
    assert_broken(frame(body), "Unlink.name has wrong type")


# ------------------------------------------------------------------ fuzz


def _feed_and_drain(data: bytes, chunk: int) -> None:
    dec = FrameDecoder(max_frame=1 << 16)
    try:
        for i in range(0, len(data), chunk):
            dec.receive_data(data[i : i + chunk])
            while (m := dec.next_message()) is not None:
                assert isinstance(m, Message)
                assert type(m) in REGISTRY.values()
    except RemoteProtocolError:
        assert dec.error is not None
        with pytest.raises(RemoteProtocolError):
            dec.next_message()


@settings(max_examples=150, deadline=None, database=None)
@given(data=st.binary(max_size=512), chunk=st.integers(min_value=1, max_value=64))
def test_fuzz_random_bytes(data: bytes, chunk: int) -> None:
    _feed_and_drain(data, chunk)


@settings(max_examples=100, deadline=None, database=None)
@given(bodies=st.lists(st.binary(max_size=64), max_size=4))
def test_fuzz_well_framed_random_bodies(bodies: list[bytes]) -> None:
    _feed_and_drain(b"".join(frame(b) for b in bodies), 7)


_leaf = (
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False) | st.text(max_size=8) | st.binary(max_size=8)
)
_values = st.recursive(_leaf, lambda inner: st.lists(inner, max_size=4), max_leaves=6)


@settings(max_examples=60, deadline=None, database=None)
@given(tag=st.sampled_from(sorted(REGISTRY) + [0, 99]), fields=st.lists(_values, max_size=12))
def test_fuzz_tagged_arrays(tag: int, fields: list[Any]) -> None:
    """Well-formed msgpack with a real tag and random fields: a message or a remote error."""
    body = msgpack.packb([tag, *fields], use_bin_type=True)
    try:
        msg = decode_body(body)
    except RemoteProtocolError:
        return
    assert type(msg) is REGISTRY[tag]
    assert encode(msg)[4:] == body  # what was accepted re-encodes to the same bytes


@settings(max_examples=40, deadline=None, database=None)
@given(msgs=st.lists(st.sampled_from(SAMPLES), max_size=6), data=st.data())
def test_fuzz_valid_stream_any_split(msgs: list[Message], data: st.DataObject) -> None:
    wire = encode_many(msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    dec = FrameDecoder()
    got: list[Message] = []
    prev = 0
    for c in [*cuts, len(wire)]:
        dec.receive_data(wire[prev:c])
        prev = c
        got.extend(drain(dec))
    assert got == msgs
