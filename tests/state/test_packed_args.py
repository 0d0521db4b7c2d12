"""state.store.packed_args against a real Redis: the one payload argument unpacks in Lua to
exactly the strings the values were as separate ARGV (binary blobs of every header size)."""

from __future__ import annotations

import numpy as np

from state.store import Client, packed_args

UNPACK = "return cmsgpack.unpack(ARGV[1])"


def test_values_unpack_as_their_argv_strings(redis_client: Client) -> None:
    rng = np.random.default_rng(15)
    blobs = [rng.bytes(n) for n in (0, 1, 31, 32, 255, 256, 65535, 65536, 200_000)]
    values = [*blobs, "unit-é", "u" * 40, 0, -3, 2**62, 1.5, repr(0.1), b"\x00\xff"]
    argv = [*blobs, "unit-é".encode(), b"u" * 40, b"0", b"-3", str(2**62).encode(), b"1.5",
            b"0.1", b"\x00\xff"]
    assert redis_client.eval(UNPACK, 0, packed_args(values)) == argv


def test_many_values_in_one_argument(redis_client: Client) -> None:
    values = [f"u{i}" for i in range(100_000)]
    got = redis_client.eval("return #cmsgpack.unpack(ARGV[1])", 0, packed_args(values))
    assert got == 100_000
