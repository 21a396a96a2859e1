#!/usr/bin/env python3
"""Protocol-conformance test for a running ringkv node, written from api/PROTOCOL.md alone.

Usage: python3 tests/python/test_protocol.py --addr 127.0.0.1:PORT

Prints one line per scenario (``PASS name`` or ``FAIL name: reason``), then exactly one line
``N passed, M failed``. Exit status: 0 if all passed, 1 if any failed, 2 if the node cannot be
reached.
"""

import argparse
import os
import socket
import struct
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ringkv_client import (  # noqa: E402
    Client,
    ConditionFailed,
    ConnectionClosed,
    RingkvError,
    encode_frame,
)

HOST = None
PORT = None
# A bucket unique to this run, so runs against a reused node do not collide.
BUCKET = ("conf-%d-%s" % (os.getpid(), os.urandom(4).hex())).encode()

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
    return Client(HOST, PORT)


def expect_error(c, request, code):
    """Send ``request`` (a map, or raw frame bytes), expect an error answer with ``code``."""
    if isinstance(request, (bytes, bytearray)):
        c.send_raw(request)
        ans = c.recv()
        want_id = None
    else:
        want_id = c.send(request)
        ans = c.recv_id(want_id)
    check(isinstance(ans, dict), "answer is not a map: %r" % (ans,))
    check(ans.get("ok") is False, "expected ok=false/%s, got %r" % (code, ans))
    check(ans.get("code") == code, "expected code %r, got %r" % (code, ans))
    check(isinstance(ans.get("message"), str), "error answer has no str message: %r" % (ans,))
    if want_id is not None:
        check(ans.get("id") == want_id, "error answer id %r != request id %r" % (ans.get("id"), want_id))
    return ans


# --------------------------------------------------------------------------- scenarios


@scenario
def ping():
    with connect() as c:
        rid = c.send({"op": "ping"})
        ans = c.recv_id(rid)
        check(ans.get("ok") is True, "ping answer %r" % (ans,))
        check(ans.get("id") == rid, "ping answer id %r != %r" % (ans.get("id"), rid))
        # The spec's own example id.
        c.send({"id": 1, "op": "ping"})
        ans = c.recv_id(1)
        check(ans.get("ok") is True and ans.get("id") == 1, "ping id 1 answer %r" % (ans,))


@scenario
def spec_example_bytes():
    """The exact request bytes of the spec's example are understood as a get."""
    with connect() as c:
        raw = bytes.fromhex(
            "0000001d" "84" "a2696401" "a26f70a3676574" "a66275636b6574c40162" "a36b6579c4016b"
        )
        check(raw == encode_frame({"id": 1, "op": "get", "bucket": b"b", "key": b"k"}),
              "client encoding differs from the spec's example")
        c.send_raw(raw)
        ans = c.recv_id(1)
        check(ans.get("ok") is True, "answer %r" % (ans,))
        check(isinstance(ans.get("values"), list), "no values list: %r" % (ans,))
        check(isinstance(ans.get("context"), bytes), "context is not bin: %r" % (ans,))


@scenario
def put_get_exact_bytes():
    with connect() as c:
        cases = {
            b"all-bytes": bytes(range(256)),
            b"empty": b"",
            b"text": "h\u00e9llo \u2603".encode("utf-8"),
            b"\x00\xff binary key \x80": b"\x00" * 1000,
            b"k" * 442: b"max-length key",
        }
        for key, value in cases.items():
            c.put(BUCKET, key, value)
        for key, value in cases.items():
            values, ctx = c.get(BUCKET, key)
            check(values == [value], "key %r: expected [%r...], got %r" % (key[:20], value[:20], values))
            check(all(isinstance(v, bytes) for v in values), "values are not bin: %r" % (values,))
            check(isinstance(ctx, bytes) and len(ctx) > 0,
                  "context after a write should be non-empty bin, got %r" % (ctx,))
        # str is accepted for bucket and key.
        rid = c.send({"op": "get", "bucket": BUCKET.decode(), "key": "text"})
        ans = c.recv_id(rid)
        check(ans.get("ok") is True and ans.get("values") == [cases[b"text"]],
              "get with str bucket/key: %r" % (ans,))
        # Max-length bucket (64 bytes).
        b64 = (BUCKET + b"-" + b"x" * 64)[:64]
        c.put(b64, b"k", b"v")
        check(c.get(b64, b"k")[0] == [b"v"], "64-byte bucket round trip failed")


@scenario
def get_missing_key():
    with connect() as c:
        values, ctx = c.get(BUCKET, b"never-written")
        check(values == [], "expected no values, got %r" % (values,))
        check(isinstance(ctx, bytes), "context is not bin: %r" % (ctx,))


@scenario
def delete_then_resurrect():
    with connect() as c:
        k = b"del"
        c.put(BUCKET, k, b"first")
        values, ctx = c.get(BUCKET, k)
        check(values == [b"first"], "before delete: %r" % (values,))
        c.delete(BUCKET, k, context=ctx)
        values, ctx2 = c.get(BUCKET, k)
        check(values == [], "after delete: expected no values, got %r" % (values,))
        check(isinstance(ctx2, bytes) and len(ctx2) > 0,
              "after delete the spec promises a non-empty context, got %r" % (ctx2,))
        c.put(BUCKET, k, b"second", context=ctx2)
        values, _ = c.get(BUCKET, k)
        check(values == [b"second"], "after put with the tombstone's context: %r" % (values,))


@scenario
def siblings_shopping_cart():
    with connect() as c:
        k = b"cart"
        c.put(BUCKET, k, b"milk")
        values, ctx = c.get(BUCKET, k)
        check(values == [b"milk"], "initial cart: %r" % (values,))
        c.put(BUCKET, k, b"milk,eggs", context=ctx)
        c.put(BUCKET, k, b"milk,bread", context=ctx)
        values, ctx2 = c.get(BUCKET, k)
        check(sorted(values) == [b"milk,bread", b"milk,eggs"],
              "expected siblings milk,eggs and milk,bread, got %r" % (values,))
        merged = set()
        for v in values:
            merged |= set(v.split(b","))
        merged_value = b",".join(sorted(merged))
        c.put(BUCKET, k, merged_value, context=ctx2)
        values, _ = c.get(BUCKET, k)
        check(values == [merged_value], "after merge: expected [%r], got %r" % (merged_value, values))
        check(set(values[0].split(b",")) == {b"milk", b"eggs", b"bread"}, "union wrong: %r" % (values,))


@scenario
def blind_puts_make_siblings():
    with connect() as c:
        k = b"blind"
        c.put(BUCKET, k, b"a")
        c.put(BUCKET, k, b"b")
        values, _ = c.get(BUCKET, k)
        check(sorted(values) == [b"a", b"b"], "expected siblings a and b, got %r" % (values,))
        # An explicitly empty context is also a blind write.
        c.put(BUCKET, k, b"c", context=b"")
        values, _ = c.get(BUCKET, k)
        check(sorted(values) == [b"a", b"b", b"c"], "empty context: expected a, b, c, got %r" % (values,))


@scenario
def conditional_writes():
    with connect() as c:
        k = b"cond"
        c.put(BUCKET, k, b"created", if_none_match=True)
        try:
            c.put(BUCKET, k, b"again", if_none_match=True)
            raise Fail("if_none_match on a present key succeeded")
        except RingkvError as e:
            check(e.code == "condition_failed", "if_none_match: %r" % (e.answer,))
            check("if_none_match" in e.message, "message names the condition: %r" % (e.message,))
        values, stale = c.get(BUCKET, k)
        check(values == [b"created"], "after the refused create: %r" % (values,))
        c.put(BUCKET, k, b"second", context=stale)
        try:
            c.put(BUCKET, k, b"late", context=stale, if_match=True)
            raise Fail("if_match with a stale context succeeded")
        except RingkvError as e:
            check(e.code == "condition_failed", "if_match: %r" % (e.answer,))
        _, fresh = c.get(BUCKET, k)
        c.put(BUCKET, k, b"third", context=fresh, if_match=True)
        check(c.get(BUCKET, k)[0] == [b"third"], "if_match with the fresh context")
        expect_error(c, {"op": "put", "bucket": BUCKET, "key": k, "value": b"x",
                         "if_none_match": True, "if_match": True}, "malformed_request")


@scenario
def time_to_live():
    """A value put with ttl_ms reads until it expires, then as missing; its context still
    replaces it, and if_none_match treats it as absent. Polled against a deadline, never a
    fixed sleep."""
    with connect() as c:
        k = b"ttl"
        ttl_ms = 400
        sent = time.monotonic()
        c.put(BUCKET, k, b"short-lived", ttl_ms=ttl_ms)
        values, _ = c.get(BUCKET, k)
        if time.monotonic() - sent < ttl_ms / 1000.0:
            check(values == [b"short-lived"], "before expiry: %r" % (values,))
        deadline = time.monotonic() + 10
        while True:
            values, ctx = c.get(BUCKET, k)
            if not values:
                break
            check(time.monotonic() < deadline, "still readable 10 s after a 400 ms TTL: %r" % (values,))
            time.sleep(0.02)
        check(time.monotonic() - sent >= ttl_ms / 1000.0, "expired before its TTL")
        check(len(ctx) > 0, "an expired (not yet purged) key still has a context")
        c.put(BUCKET, k, b"created", if_none_match=True)
        check(c.get(BUCKET, k)[0] == [b"created"], "if_none_match over an expired value")
        # ttl_ms 0 is no expiry; more than 100 years is a mistake.
        c.put(BUCKET, b"ttl0", b"kept", ttl_ms=0)
        check(c.get(BUCKET, b"ttl0")[0] == [b"kept"], "ttl_ms 0")
        expect_error(c, {"op": "put", "bucket": BUCKET, "key": k, "value": b"x",
                         "ttl_ms": 100 * 366 * 86400 * 1000}, "malformed_request")


@scenario
def explain_a_key_with_siblings():
    """Two blind puts make two siblings; explain shows them on the answering node's replica,
    each with its dot and size, under one clock; bad input is refused as get refuses it."""
    k = b"explained"
    with connect() as c:
        c.put(BUCKET, k, b"one")
        c.put(BUCKET, k, b"three")
        info = c.explain(BUCKET, k)
        check(info.get("bucket") == BUCKET.decode() and info.get("key") == "explained",
              "names: %r" % (info,))
        mine = [r for r in info.get("replicas", []) if r.get("node") == info.get("node")]
        check(len(mine) == 1 and mine[0].get("status") == "ok", "own replica: %r" % (info,))
        record = mine[0]["record"]
        check(record.get("siblings") == 2 and record.get("live") == 2, "siblings: %r" % (record,))
        sizes = sorted(s.get("size") for s in record.get("listed", []))
        check(sizes == [3, 5], "sizes %r" % (sizes,))
        for s in record["listed"]:
            replica, counter = s["dot"].split(":")
            check(record["clock"].get(replica, 0) >= int(counter), "dot %r not covered" % (s,))
        expect_error(c, {"op": "explain", "bucket": b"", "key": k}, "invalid_bucket")
        expect_error(c, {"op": "explain", "bucket": BUCKET, "key": b"x" * 443}, "invalid_key")
        expect_error(c, {"op": "explain", "bucket": BUCKET}, "malformed_request")


@scenario
def strong_bucket_cas():
    """A fresh bucket made strong before its first write: cas creates, refuses a wrong
    expectation with the current value, swaps and deletes; get answers at most one value and
    an empty context; cas is refused on an eventual bucket."""
    strong = BUCKET + b"-strong"
    with connect() as c:
        props = c.bucket_set(strong, consistency="strong")
        check(props.get("consistency") == "strong", "bucket_set answer: %r" % (props,))
        check(c.bucket_get(strong).get("consistency") == "strong", "bucket_get after the set")
        k = b"lock"
        c.cas(strong, k, None, b"one")
        for expect in (None, b"zero"):
            try:
                c.cas(strong, k, expect, b"two")
                raise Fail("cas expecting %r over b'one' succeeded" % (expect,))
            except ConditionFailed as e:
                check(e.code == "condition_failed", "code %r" % (e.code,))
                check(e.current == b"one", "current value %r" % (e.current,))
                check(e.answer.get("values") == [b"one"], "answer values %r" % (e.answer,))
        values, ctx = c.get(strong, k)
        check(values == [b"one"] and ctx == b"", "get after the refused cas: %r %r" % (values, ctx))
        c.cas(strong, k, b"one", b"two")
        check(c.get(strong, k)[0] == [b"two"], "get after the swap")
        c.cas(strong, k, b"two", None)
        check(c.get(strong, k)[0] == [], "get after the cas delete")
        try:
            c.cas(strong, k, b"two", b"three")
            raise Fail("cas expecting b'two' over an absent key succeeded")
        except ConditionFailed as e:
            check(e.current is None and e.answer.get("values") == [],
                  "absent current value: %r" % (e.answer,))
        # put and delete are linearizable writes; put with if_none_match is a cas on absent.
        c.put(strong, k, b"put")
        try:
            c.put(strong, k, b"again", if_none_match=True)
            raise Fail("if_none_match over a present key succeeded")
        except RingkvError as e:
            check(e.code == "condition_failed", "if_none_match: %r" % (e.answer,))
        c.delete(strong, k)
        check(c.get(strong, k)[0] == [], "get after delete")
        expect_error(c, {"op": "cas", "bucket": BUCKET, "key": k, "value": b"v"},
                     "wrong_consistency")
        expect_error(c, {"op": "put", "bucket": strong, "key": k, "value": b"v", "ttl_ms": 1000},
                     "wrong_consistency")
        expect_error(c, {"op": "bucket_set", "bucket": strong,
                         "props": {"consistency": "eventual"}}, "cluster_error")


@scenario
def put_return_body():
    with connect() as c:
        k = b"rb"
        values, ctx = c.put(BUCKET, k, b"one", return_body=True)
        check(values == [b"one"], "return_body values: %r" % (values,))
        check(isinstance(ctx, bytes) and len(ctx) > 0, "return_body context: %r" % (ctx,))
        # The returned context is usable like a get's: it replaces "one".
        values, ctx = c.put(BUCKET, k, b"two", context=ctx, return_body=True)
        check(values == [b"two"], "put with return_body's context: %r" % (values,))
        check(c.get(BUCKET, k)[0] == [b"two"], "get after return_body puts disagrees")
        # Without return_body the answer carries no values.
        rid = c.send({"op": "put", "bucket": BUCKET, "key": k, "value": b"three", "context": ctx})
        ans = c.recv_id(rid)
        check(ans.get("ok") is True, "plain put: %r" % (ans,))


@scenario
def pipelining():
    """200 requests written before any answer is read; answers matched by id.

    The spec does not say that pipelined requests on one connection are executed in order
    (only that answers may come back in any order), so a get in the pipeline is not required
    to see a put sent before it. The keys are therefore written before the pipeline starts,
    and the pipelined puts are blind: every get must see at least one value (nothing removes
    a version), and afterwards each key must hold every value written to it as siblings.
    """
    with connect() as c:
        n, nkeys = 200, 20
        keys = [b"pipe-%d" % j for j in range(nkeys)]
        written = {k: {b"init"} for k in keys}
        for k in keys:
            c.put(BUCKET, k, b"init")
        expect = {}
        frames = []
        for i in range(n):
            rid = 1000 + i
            key = keys[i % nkeys]
            if i % 2 == 0:
                value = b"v%d" % i
                written[key].add(value)
                frames.append(encode_frame({"id": rid, "op": "put", "bucket": BUCKET, "key": key,
                                            "value": value}))
                expect[rid] = ("put", key)
            else:
                frames.append(encode_frame({"id": rid, "op": "get", "bucket": BUCKET, "key": key}))
                expect[rid] = ("get", key)
        c.send_raw(b"".join(frames))  # all 200 requests before reading any answer
        seen = {}
        order = []
        for _ in range(n):
            ans = c.recv()
            rid = ans.get("id")
            check(rid in expect, "answer with unexpected id: %r" % (ans,))
            check(rid not in seen, "two answers for id %r" % (rid,))
            seen[rid] = ans
            order.append(rid)
        for rid, (kind, key) in expect.items():
            ans = seen[rid]
            check(ans.get("ok") is True, "id %d (%s) failed: %r" % (rid, kind, ans))
            if kind == "get":
                vals = ans.get("values")
                check(isinstance(vals, list) and len(vals) >= 1,
                      "id %d get of %r (written before the pipeline): %r" % (rid, key, ans))
                check(set(vals) <= written[key], "id %d get of %r: values never written: %r"
                      % (rid, key, vals))
        for k in keys:
            vals, _ = c.get(BUCKET, k)
            check(sorted(vals) == sorted(written[k]),
                  "after the pipeline %r holds %r, expected siblings %r" % (k, vals, sorted(written[k])))
        c.ping()


@scenario
def errors_keep_connection():
    with connect() as c:
        expect_error(c, {"op": "frobnicate", "bucket": BUCKET, "key": b"k"}, "unknown_op")
        c.ping()
        expect_error(c, {"op": "put", "bucket": BUCKET, "key": b"k"}, "malformed_request")
        c.ping()
        expect_error(c, {"op": "get", "bucket": BUCKET, "key": b"k" * 447}, "invalid_key")
        c.ping()
        expect_error(c, {"op": "get", "bucket": BUCKET, "key": b""}, "invalid_key")
        c.ping()
        expect_error(c, {"op": "get", "bucket": b"", "key": b"k"}, "invalid_bucket")
        c.ping()
        expect_error(c, {"op": "get", "bucket": b"b" * 65, "key": b"k"}, "invalid_bucket")
        c.ping()
        ans = expect_error(c, struct.pack(">I", 2) + b"\xc1\xc1", "malformed_request")
        check(ans.get("id") == 0, "id of an unreadable request should be 0, got %r" % (ans.get("id"),))
        c.ping()
        # A msgpack value that is not a map.
        body = b"\x93\x01\x02\x03"  # array [1, 2, 3]
        expect_error(c, struct.pack(">I", len(body)) + body, "malformed_request")
        c.ping()
        # A field with the wrong type (value is an int, not bin).
        expect_error(c, {"op": "put", "bucket": BUCKET, "key": b"k", "value": 5}, "malformed_request")
        c.ping()
        # Unknown request keys are ignored.
        rid = c.send({"op": "ping", "some_future_key": [1, 2, 3]})
        ans = c.recv_id(rid)
        check(ans.get("ok") is True, "unknown request key not ignored: %r" % (ans,))


@scenario
def oversized_frame_closes():
    c = connect()
    try:
        c.send_raw(struct.pack(">I", 0x7FFFFFFF))
        ans = c.recv()
        check(ans.get("ok") is False and ans.get("code") == "frame_too_large",
              "expected frame_too_large, got %r" % (ans,))
        check(ans.get("id") == 0, "frame_too_large answer id should be 0, got %r" % (ans.get("id"),))
        try:
            extra = c.recv_frame()
            raise Fail("connection not closed after frame_too_large; read %r" % (extra,))
        except (ConnectionClosed, ConnectionResetError):
            pass
        except socket.timeout:
            raise Fail("connection not closed after frame_too_large (read timed out)")
    finally:
        c.close()
    with connect() as c2:
        c2.ping()


@scenario
def truncated_frame():
    s = socket.create_connection((HOST, PORT), timeout=10)
    s.sendall(struct.pack(">I", 100) + b"\x00" * 10)
    s.close()
    time.sleep(0.1)
    with connect() as c:
        c.ping()
        c.put(BUCKET, b"after-truncated", b"ok")
        check(c.get(BUCKET, b"after-truncated")[0] == [b"ok"], "node unusable after a truncated frame")


# --------------------------------------------------------------------------- main


def main():
    global HOST, PORT
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--addr", required=True, help="HOST:PORT of a running ringkv node")
    args = ap.parse_args()
    host, _, port = args.addr.rpartition(":")
    HOST, PORT = host.strip("[]") or "127.0.0.1", int(port)

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
            print("FAIL %s: unexpected error answer %s: %s (%r)" % (name, e.code, e.message, e.answer))
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
