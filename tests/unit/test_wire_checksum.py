"""The Internet checksum (usertcp.wire.checksum) against RFC 1071 and a plain reference loop."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usertcp.wire.checksum import (finish, internet_checksum, pseudo_header_sum, reduce, verify,
                                   word_sum)


def ref_checksum(data: bytes) -> int:
    """RFC 1071 done the obvious way: 16-bit words, end-around carry, complement."""
    if len(data) % 2:
        data = bytes(data) + b"\0"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _buffer(size: int, seed: int, fill: str) -> bytes:
    if fill == "zeros":
        return bytes(size)
    if fill == "ones":
        return b"\xff" * size
    return random.Random(seed).randbytes(size)


# --- reduce -----------------------------------------------------------------------------------

@settings(deadline=None)
@given(size=st.integers(0, 70000), seed=st.integers(0, 2**32),
       fill=st.sampled_from(["random", "random", "ones", "zeros"]))
def test_reduce_is_mod_ffff_for_random_buffers(size, seed, fill):
    x = int.from_bytes(_buffer(size, seed, fill), "big")
    assert reduce(x) == x % 0xFFFF


# reduce() switches strategy at 1024 and 12288 bits and halves beyond: probe every boundary with
# all-ones (largest carries), a single top bit, and exact multiples of 0xFFFF.
_BOUNDARY_BITS = [0, 1, 15, 16, 17, 1023, 1024, 1025, 6143, 6144, 6145, 12287, 12288, 12289,
                  24575, 24576, 24577, 65535 * 8, 70000 * 8, 70001 * 8]


@pytest.mark.parametrize("bits", _BOUNDARY_BITS)
def test_reduce_at_strategy_boundaries(bits):
    for x in ((1 << bits) - 1, 1 << max(bits - 1, 0), 0xFFFF * (((1 << bits) - 1) // 0xFFFF),
              0xFFFF * (((1 << bits) - 1) // 0xFFFF) + 0xFFFE):
        assert reduce(x) == x % 0xFFFF, (bits, x.bit_length())


# --- internet_checksum vs the reference ------------------------------------------------------

@settings(deadline=None)
@given(st.binary(max_size=3000))
def test_internet_checksum_matches_reference(data):
    assert internet_checksum(data) == ref_checksum(data)


@pytest.mark.parametrize("size", [0, 1, 2, 3, 19, 20, 39, 40, 575, 576, 1459, 1460, 9000, 9001,
                                  65535])
@pytest.mark.parametrize("fill", ["random", "ones", "zeros"])
def test_internet_checksum_matches_reference_odd_and_even(size, fill):
    data = _buffer(size, size, fill)
    assert internet_checksum(data) == ref_checksum(data)


def test_internet_checksum_accepts_bytes_like():
    data = random.Random(1).randbytes(1001)
    expected = ref_checksum(data)
    assert internet_checksum(bytearray(data)) == expected
    assert internet_checksum(memoryview(data)) == expected
    assert internet_checksum(memoryview(b"xx" + data)[2:]) == expected


def test_rfc1071_worked_example():
    # RFC 1071 section 3: bytes 00 01 f2 03 f4 f5 f6 f7 have one's-complement sum 0xddf2.
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert word_sum(data) == 0xDDF2
    assert internet_checksum(data) == (~0xDDF2 & 0xFFFF) == 0x220D
    # Byte-order independence (RFC 1071 1.(B)): the swapped buffer gives the swapped sum.
    swapped = bytes(b for pair in zip(data[1::2], data[0::2]) for b in pair)
    assert word_sum(swapped) == 0xF2DD


def test_rfc1071_example_with_checksum_inserted_verifies():
    data = bytes.fromhex("0001f203f4f5f6f7")
    packet = data + internet_checksum(data).to_bytes(2, "big")
    assert verify(int.from_bytes(packet, "big"))
    assert internet_checksum(packet) == 0
    corrupted = packet[:3] + bytes([packet[3] ^ 0x10]) + packet[4:]
    assert not verify(int.from_bytes(corrupted, "big"))


def test_ipv4_header_example():
    # A well-known IPv4 header with its checksum 0xb861 (Wikipedia's "IPv4 header checksum").
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert internet_checksum(header) == 0xB861 == ref_checksum(header)


def test_checksum_of_all_zero_data_is_ffff():
    # One's-complement +0 complements to 0xFFFF; 0x0000 would be rejected by a real receiver
    # (the one's-complement sum of an all-zero message with checksum 0 is +0, not -0).
    for size in (0, 1, 2, 8, 64):
        assert internet_checksum(bytes(size)) == 0xFFFF


def test_checksum_of_nonzero_data_summing_to_ffff_is_zero():
    # Words summing to 0xFFFF (one's-complement -0 already): the checksum field is 0x0000.
    data = bytes.fromhex("ff00 00ff")
    assert ref_checksum(data) == 0
    assert internet_checksum(data) == 0


# --- word_sum pieces, finish, pseudo-header ----------------------------------------------------

@settings(deadline=None)
@given(st.binary(max_size=600).filter(lambda b: len(b) % 2 == 0), st.binary(max_size=600))
def test_word_sums_of_even_offset_pieces_add_up(head, tail):
    whole = word_sum(head + tail)
    assert whole == (word_sum(head) + word_sum(tail)) % 0xFFFF
    # finish() takes an unreduced sum: piecewise integers added before any reduction.
    odd = len(tail) & 1
    unreduced = int.from_bytes(head, "big") + (int.from_bytes(tail, "big") << (8 * odd))
    assert finish(unreduced) == ref_checksum(head + tail)


def test_word_sum_pads_odd_length_with_a_zero_byte():
    assert word_sum(b"\x12") == 0x1200
    assert word_sum(b"\x12\x34\x56") == 0x1234 + 0x5600
    assert word_sum(b"\x12\x34\x56") == word_sum(b"\x12\x34\x56\x00")


@settings(deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 255),
       st.integers(0, 65535))
def test_pseudo_header_sum_matches_packed_pseudo_header(src, dst, proto, length):
    pseudo = struct.pack("!IIBBH", src, dst, 0, proto, length)
    assert pseudo_header_sum(src, dst, proto, length) % 0xFFFF == word_sum(pseudo)
    assert finish(pseudo_header_sum(src, dst, proto, length)) == ref_checksum(pseudo)
