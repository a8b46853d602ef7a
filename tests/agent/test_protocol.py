import zlib

from pyro_mcp.agent.protocol import HEADER, MAGIC, MAX_FRAME_BYTES, FrameDecoder, encode_frame


def header(length: int) -> bytes:
    return HEADER.pack(MAGIC, length, zlib.crc32(length.to_bytes(4, "big")))


def test_frames_round_trip_when_fed_byte_by_byte() -> None:
    data = encode_frame({"id": 1, "op": "ping"}) + encode_frame({"id": 2, "text": "é"})
    decoder = FrameDecoder()
    messages = []
    for byte in data:
        messages += decoder.feed(bytes([byte]))
    assert messages == [{"id": 1, "op": "ping"}, {"id": 2, "text": "é"}]
    assert decoder.skipped_bytes == 0


def test_stale_bytes_before_a_frame_are_skipped() -> None:
    decoder = FrameDecoder()
    stale = b"garbage" + MAGIC + b"\x00\x00"  # a frame cut off by a reconnect
    messages = decoder.feed(stale + encode_frame({"id": 7}))
    assert messages == [{"id": 7}]
    assert decoder.skipped_bytes >= len(b"garbage")


def test_a_frame_with_a_body_that_is_not_json_is_skipped() -> None:
    decoder = FrameDecoder()
    bad = header(3) + b"\xff\xfe{"
    assert decoder.feed(bad + encode_frame({"ok": True})) == [{"ok": True}]


def test_an_oversized_length_does_not_make_the_decoder_buffer_it() -> None:
    decoder = FrameDecoder(max_frame_bytes=1024)
    huge = header(MAX_FRAME_BYTES * 4)
    assert decoder.feed(huge + encode_frame({"id": 1})) == [{"id": 1}]


def test_non_object_messages_are_dropped() -> None:
    payload = b"[1,2]"
    decoder = FrameDecoder()
    assert decoder.feed(header(len(payload)) + payload) == []
