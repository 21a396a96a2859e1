#!/usr/bin/env python3
"""Large values through the Python client (api/PROTOCOL.md, "Large values: streamed ``put``,
ranged ``get``"), against a running ringkv node.

Usage: python3 tests/python/test_streaming.py --addr 127.0.0.1:PORT [--mib 100]

Streams a value of ``--mib`` MiB (default 100) in with ``put_stream`` and back with
``get_stream``, comparing CRC-32 (zlib) and SHA-256 end to end without holding the value in
memory; reads ranges across chunk boundaries; and checks the stream errors. Prints one line
per scenario (``PASS name`` or ``FAIL name: reason``), then ``N passed, M failed``. Exit
status: 0 if all passed, 1 if any failed, 2 if the node cannot be reached.
"""

import argparse
import hashlib
import io
import os
import random
import sys
import traceback
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ringkv_client import Client, RingkvError, Siblings  # noqa: E402

HOST = None
PORT = None
MIB_COUNT = 100
MIB = 1 << 20
BUCKET = ("stream-%d-%s" % (os.getpid(), os.urandom(4).hex())).encode()

SCENARIOS = []


class Fail(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Fail(msg)


def scenario(fn):
    SCENARIOS.append(fn)
    return fn


def connect():
    return Client(HOST, PORT, timeout=60.0)


def block(seed, i):
    """Block ``i`` (1 MiB) of the deterministic value ``seed``: regenerated on demand, so no
    scenario holds a whole large value."""
    return random.Random(seed * 1000003 + i).randbytes(MIB)


def blocks(seed, count):
    for i in range(count):
        yield block(seed, i)


def byte_range(seed, offset, length):
    out = bytearray()
    while length > 0:
        i, at = divmod(offset, MIB)
        take = min(length, MIB - at)
        out += block(seed, i)[at:at + take]
        offset += take
        length -= take
    return bytes(out)


# --------------------------------------------------------------------------- scenarios


@scenario
def stream_value_in_and_out_with_checksums():
    size = MIB_COUNT * MIB
    crc_in, sha_in = 0, hashlib.sha256()
    for b in blocks(1, MIB_COUNT):
        crc_in = zlib.crc32(b, crc_in)
        sha_in.update(b)
    progress = []
    with connect() as c:
        ans = c.put_stream(BUCKET, b"big", blocks(1, MIB_COUNT), size=size,
                           progress=progress.append)
        check(ans["size"] == size, "commit size %r" % ans.get("size"))
        check(ans["crc32"] == crc_in, "commit crc32 %r != %r" % (ans.get("crc32"), crc_in))
        check(len(ans["version"]) == 16, "version %r" % ans.get("version"))
        check(progress and progress[-1] == size, "progress ends at %r" % progress[-1:])
        check(progress == sorted(progress), "progress goes backwards")

        values, meta, _ = c.get_meta(BUCKET, b"big")
        check(values == [b""], "a large value is not inline: %r" % [len(v) for v in values])
        check(meta[0]["large"] is True and meta[0]["size"] == size, "meta %r" % meta)
        check(meta[0]["crc32"] == crc_in and meta[0]["version"] == ans["version"],
              "meta %r" % meta)

        crc_out, sha_out, n = 0, hashlib.sha256(), 0
        for piece in c.get_stream(BUCKET, b"big"):
            crc_out = zlib.crc32(piece, crc_out)
            sha_out.update(piece)
            n += len(piece)
        check(n == size, "read back %d bytes of %d" % (n, size))
        check(crc_out == crc_in, "CRC-32 read %#x != written %#x" % (crc_out, crc_in))
        check(sha_out.digest() == sha_in.digest(), "SHA-256 of the bytes read back differs")
        c.ping()  # the connection is still in step


@scenario
def ranges_across_chunk_boundaries():
    with connect() as c:
        c.put_stream(BUCKET, b"ranged", blocks(2, 9), size=9 * MIB)
        for offset, length in [(0, 10), (MIB - 3, 7), (4 * MIB + 1, 2 * MIB), (9 * MIB - 4, 100)]:
            ans = c.get_range(BUCKET, b"ranged", offset=offset, length=length)
            want = byte_range(2, offset, min(length, 9 * MIB - offset))
            check(ans["offset"] == offset and ans["size"] == 9 * MIB, "answer %r" % (
                {k: v for k, v in ans.items() if k != "value"},))
            check(ans["value"] == want, "slice %d+%d differs" % (offset, length))
        end = c.get_range(BUCKET, b"ranged", offset=9 * MIB)
        check(end["value"] == b"", "a range at the end is empty")
        try:
            c.get_range(BUCKET, b"ranged", offset=9 * MIB + 1)
            raise Fail("a range past the end was answered")
        except RingkvError as e:
            check(e.code == "invalid_range", "code %r" % e.code)
        # Pipelined ranges of 1 MiB, 4 in flight.
        got = b"".join(c.get_stream(BUCKET, b"ranged", range_bytes=MIB, window=4))
        check(got == byte_range(2, 0, 9 * MIB), "streamed by 1 MiB ranges differs")


@scenario
def file_object_replaces_with_context():
    data = random.Random(3).randbytes(5 * MIB + 7)
    with connect() as c:
        c.put_stream(BUCKET, b"file", io.BytesIO(data))
        _, _, ctx = c.get_meta(BUCKET, b"file")
        second = random.Random(4).randbytes(6 * MIB)
        c.put_stream(BUCKET, b"file", io.BytesIO(second), context=ctx)
        got = b"".join(c.get_stream(BUCKET, b"file"))
        check(got == second, "the second value did not replace the first")


@scenario
def siblings_are_listed_and_read_by_version():
    a = random.Random(5).randbytes(3 * MIB)
    b = random.Random(6).randbytes(2 * MIB + 1)
    with connect() as c:
        va = c.put_stream(BUCKET, b"sib", [a])["version"]
        vb = c.put_stream(BUCKET, b"sib", [b])["version"]
        try:
            c.get_stream(BUCKET, b"sib")
            raise Fail("siblings were streamed as one value")
        except Siblings as e:
            check(e.code == "siblings", "code %r" % e.code)
            check(sorted(m["version"] for m in e.meta) == sorted([va, vb]), "meta %r" % e.meta)
        check(b"".join(c.get_stream(BUCKET, b"sib", version=va)) == a, "sibling a differs")
        check(b"".join(c.get_stream(BUCKET, b"sib", version=vb)) == b, "sibling b differs")


@scenario
def stream_errors():
    with connect() as c:
        try:
            c.get_stream(BUCKET, b"never")
            raise Fail("a missing key was streamed")
        except RingkvError as e:
            check(e.code == "not_found", "code %r" % e.code)
        try:
            c.put_stream(BUCKET, b"short", [b"x" * 5000], size=5001)
            raise Fail("an upload short of its size was committed")
        except RingkvError as e:
            check(e.code == "upload_incomplete", "code %r" % e.code)
        try:
            c.put_stream(BUCKET, b"long", [b"x" * 5000], size=4999)
            raise Fail("an upload past its size was committed")
        except RingkvError as e:
            check(e.code == "upload_overrun", "code %r" % e.code)
        check(c.get(BUCKET, b"long")[0] == [], "a refused upload is visible")

        # A wrong CRC-32 at the commit, by hand; the upload is then gone.
        up = c.call({"op": "put_begin", "bucket": BUCKET, "key": b"crc"})["upload"]
        c.call({"op": "put_chunk", "upload": up, "seq": 0, "data": b"y" * 1000})
        try:
            c.call({"op": "put_commit", "upload": up, "crc32": zlib.crc32(b"y" * 1000) ^ 1})
            raise Fail("a wrong crc32 was committed")
        except RingkvError as e:
            check(e.code == "checksum_mismatch", "code %r" % e.code)
        try:
            c.call({"op": "put_chunk", "upload": up, "seq": 1, "data": b"y"})
            raise Fail("an ended upload took a chunk")
        except RingkvError as e:
            check(e.code == "upload_unknown", "code %r" % e.code)
        check(c.get(BUCKET, b"crc")[0] == [], "a mismatched upload is visible")

        # A source that fails midway: the upload is aborted and the error raised.
        def failing():
            yield b"z" * (2 * MIB)
            raise IOError("source failed")
        try:
            c.put_stream(BUCKET, b"half", failing())
            raise Fail("a failing source was committed")
        except IOError as e:
            check("source failed" in str(e), "error %r" % e)
        check(c.get(BUCKET, b"half")[0] == [], "half a value is visible")
        c.ping()


# --------------------------------------------------------------------------- main


def main():
    global HOST, PORT, MIB_COUNT
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--addr", required=True, help="HOST:PORT of a running ringkv node")
    ap.add_argument("--mib", type=int, default=100, help="size of the big value, MiB")
    args = ap.parse_args()
    host, _, port = args.addr.rpartition(":")
    HOST, PORT = host.strip("[]") or "127.0.0.1", int(port)
    MIB_COUNT = args.mib

    try:
        Client(HOST, PORT, timeout=5).close()
    except OSError as e:
        print("cannot connect to %s: %s" % (args.addr, e), file=sys.stderr)
        return 2

    passed = failed = 0
    for fn in SCENARIOS:
        name = fn.__name__
        try:
            fn()
        except Fail as e:
            failed += 1
            print("FAIL %s: %s" % (name, e))
        except RingkvError as e:
            failed += 1
            print("FAIL %s: unexpected error answer %s: %s" % (name, e.code, e.message))
        except Exception as e:  # noqa: BLE001
            failed += 1
            tb = traceback.extract_tb(e.__traceback__)[-1]
            print("FAIL %s: %s: %s (at line %d)" % (name, type(e).__name__, e, tb.lineno))
        else:
            passed += 1
            print("PASS %s" % name)
        sys.stdout.flush()
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
