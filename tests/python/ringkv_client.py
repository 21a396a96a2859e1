"""A small synchronous client for the ringkv client protocol.

Written from ``api/PROTOCOL.md`` alone. Summary of the wire format it implements:

* Transport is TCP. Both directions carry *frames*: a 4-byte big-endian unsigned length ``L``
  followed by exactly ``L`` bytes holding one msgpack map. ``L`` does not count the 4 length
  bytes.
* Maps use string keys. Buckets, keys, values and contexts are msgpack ``bin``; integers are
  msgpack integers.
* Every request carries ``id`` (uint64, chosen by the client) and ``op`` (``"ping"``,
  ``"get"``, ``"put"`` or ``"delete"``), optionally ``timeout_ms``. Every answer carries the
  request's ``id`` (0 if the server could not read it) and ``ok`` (bool); an error answer also
  carries ``code`` (a stable error code) and ``message`` (for people).
* Requests may be pipelined and answers may come back in any order, so answers are matched to
  requests by ``id``. Unknown keys in an answer are ignored.

* Strong buckets (section "Strong buckets"): ``bucket_set(b, consistency="strong")`` on a
  bucket that holds no data yet; then ``get``, ``put`` and ``delete`` are linearizable, and
  ``cas`` compares and sets a key (``None`` stands for "absent" on both sides) and raises
  :class:`ConditionFailed`, carrying the key's current value, when the key holds another.

* Large values (section "Large values: streamed ``put``, ranged ``get``"): ``put_stream``
  sends ``put_begin``, ``put_chunk`` frames of the node's ``chunk_bytes`` with at most its
  ``window`` unanswered, then ``put_commit`` with the CRC-32 of the whole value (``zlib.crc32``);
  ``get_range`` reads part of a value; ``get_stream`` reads a whole value by pipelined
  ``get_range`` requests and checks its CRC-32 at the end. Memory stays bounded by the windows.

* TLS (section "TLS"): a node started with ``tls-cert`` speaks only TLS; pass ``tls_ca`` (the
  CA that signed its certificate) and, for a node with ``tls-client-ca``, ``tls_cert`` and
  ``tls_key``. The frames inside are the same. A plain connection to such a node is answered
  ``tls_required``.
* An error answer with ``id`` 0 is about the connection itself (``too_many_connections``,
  ``tls_required``): the call waiting raises it.

Example::

    c = Client("127.0.0.1", 7379)
    t = Client("db1.example", 7379, tls_ca="ca.pem")  # TLS
    values, ctx = c.get(b"cart", b"alice")
    c.put(b"cart", b"alice", b"milk", context=ctx)
    c.cas(b"locks", b"job-7", None, b"worker-1")  # strong bucket: create only
    with open("big.iso", "rb") as f:
        c.put_stream(b"files", b"big.iso", f)
    with open("copy.iso", "wb") as out:
        for block in c.get_stream(b"files", b"big.iso"):
            out.write(block)
"""

import socket
import ssl
import struct
import zlib

import msgpack

__all__ = [
    "Client",
    "RingkvError",
    "ConditionFailed",
    "ConnectionClosed",
    "ChecksumMismatch",
    "Siblings",
    "encode_frame",
    "MAX_RANGE_BYTES",
]

_LEN = struct.Struct(">I")  # 4-byte big-endian unsigned length prefix

#: Most bytes one ``get_range`` answers by default (the node's ``max-range-bytes``, 4 MiB).
MAX_RANGE_BYTES = 4 << 20



class RingkvError(Exception):
    """An error answer ``{"id", "ok": false, "code", "message"}`` from the server.

    ``code`` is one of the stable codes of the spec (``malformed_request``, ``unknown_op``,
    ``invalid_bucket``, ``invalid_key``, ``value_too_large``, ``bad_context``,
    ``too_many_siblings``, ``storage_full``, ``storage_error``, ``timeout``,
    ``shutting_down``, ``frame_too_large``, ``too_many_connections``, ``condition_failed``, ...);
    ``message`` is the
    human-readable description; ``answer`` is the whole decoded answer map.
    """

    def __init__(self, code, message, answer=None):
        super().__init__("%s: %s" % (code, message))
        self.code = code
        self.message = message
        self.answer = answer
        self.id = answer.get("id") if isinstance(answer, dict) else None


class ConditionFailed(RingkvError):
    """A ``cas`` (or a conditional write on a strong bucket) found another value; nothing was
    written. ``code`` is ``condition_failed``; ``current`` is the key's value at the
    operation's linearization point, ``None`` if the key is absent.
    """

    def __init__(self, current, message, answer=None):
        super().__init__("condition_failed", message, answer)
        self.current = current


class ConnectionClosed(Exception):
    """The server closed the connection (EOF), possibly in the middle of a frame."""


class ChecksumMismatch(RingkvError):
    """The bytes a streamed read received do not have the CRC-32 the value was stored with.

    ``code`` is ``checksum_mismatch``; ``expected`` and ``actual`` are the two CRC-32s.
    """

    def __init__(self, expected, actual, size):
        super().__init__(
            "checksum_mismatch",
            "the %d bytes read have CRC-32 %#010x, the value was stored with %#010x"
            % (size, actual, expected),
        )
        self.expected = expected
        self.actual = actual


class Siblings(RingkvError):
    """``get_stream`` of a key with several live versions; ``code`` is ``siblings``.

    ``meta`` lists them (``{"size", "large", "version", "crc32"}`` each, as a ``get`` with
    ``meta`` answers), ``values`` holds the small ones (a large one is ``b""``) and
    ``context`` is the read's context: read each version with ``get_stream(...,
    version=...)`` and write the merge with ``context``.
    """

    def __init__(self, values, meta, context):
        super().__init__("siblings", "the key has %d live versions" % len(meta))
        self.values = values
        self.meta = meta
        self.context = context


def encode_frame(request):
    """Encode a request map as a frame: 4-byte big-endian length, then the msgpack map.

    ``bytes`` values are packed as msgpack ``bin`` and ``str`` values as msgpack ``str``
    (``use_bin_type=True``), which is what the spec asks for.
    """
    body = msgpack.packb(request, use_bin_type=True)
    return _LEN.pack(len(body)) + body


class Client:
    """One TCP connection to a ringkv node.

    The high-level calls (``ping``, ``get``, ``put``, ``delete``) send one request and wait
    for the answer with the same ``id``; answers to other ids that arrive meanwhile (from
    pipelined ``send`` calls) are kept and returned later by ``recv``/``recv_id``.
    """

    def __init__(self, host, port, timeout=10.0, tls_ca=None, tls_cert=None, tls_key=None,
                 server_hostname=None):
        """Connect to ``host:port``; with ``tls_ca`` (a PEM file), over TLS.

        The node's certificate is checked against ``tls_ca`` and ``server_hostname`` (default:
        ``host``). ``tls_cert`` and ``tls_key`` (PEM files) are the client certificate for a
        node that requires one.
        """
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls_ca is not None:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls_ca)
            if tls_cert is not None:
                ctx.load_cert_chain(tls_cert, tls_key)
            try:
                sock = ctx.wrap_socket(sock, server_hostname=server_hostname or host)
            except BaseException:
                sock.close()
                raise
        elif tls_cert is not None:
            sock.close()
            raise ValueError("tls_cert needs tls_ca")
        self.sock = sock
        self._buf = bytearray()
        self._next_id = 1
        self._stash = {}  # id -> list of answers read while waiting for another id

    # ----------------------------------------------------------------- connection

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def new_id(self):
        """Return a fresh request id (uint64) for this connection."""
        i = self._next_id
        self._next_id += 1
        return i

    # ----------------------------------------------------------------- low level

    def send_raw(self, data):
        """Write raw bytes to the socket, as they are (no framing added)."""
        self.sock.sendall(data)

    def send(self, request):
        """Send one request map as a frame, without waiting for the answer.

        If the map has no ``id``, a fresh one is assigned. Returns the id used.
        """
        if "id" not in request:
            request = dict(request, id=self.new_id())
        self.send_raw(encode_frame(request))
        return request["id"]

    def _read_exact(self, n):
        while len(self._buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self._buf)))
            if not chunk:
                if self._buf:
                    raise ConnectionClosed("connection closed in the middle of a frame")
                raise ConnectionClosed("connection closed by the server")
            self._buf += chunk
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def recv_frame(self):
        """Read one frame from the socket and return its decoded msgpack map.

        ``bin`` decodes to ``bytes`` and ``str`` to ``str`` (``raw=False``).
        """
        (length,) = _LEN.unpack(self._read_exact(4))
        body = self._read_exact(length)
        return msgpack.unpackb(body, raw=False, strict_map_key=False)

    def recv(self):
        """Return the next answer: a kept one if any, else one read from the socket.

        The answer is returned as a map, whether ``ok`` or not (no exception is raised for an
        error answer, so pipelining tests can inspect every answer).
        """
        for i, answers in list(self._stash.items()):
            ans = answers.pop(0)
            if not answers:
                del self._stash[i]
            return ans
        return self.recv_frame()

    def recv_id(self, want_id):
        """Return the answer carrying ``id == want_id``, keeping others for later."""
        answers = self._stash.get(want_id)
        if answers:
            ans = answers.pop(0)
            if not answers:
                del self._stash[want_id]
            return ans
        while True:
            ans = self.recv_frame()
            if isinstance(ans, dict) and ans.get("id") == want_id:
                return ans
            if isinstance(ans, dict) and ans.get("id") == 0 and ans.get("ok") is False:
                return ans  # the node refuses the connection itself
            key = ans.get("id") if isinstance(ans, dict) else None
            self._stash.setdefault(key, []).append(ans)

    def call(self, request):
        """Send a request and return its answer map; raise ``RingkvError`` if not ``ok``."""
        rid = self.send(request)
        ans = self.recv_id(rid)
        if not isinstance(ans, dict):
            raise RingkvError("client_error", "answer is not a map: %r" % (ans,), None)
        if ans.get("ok") is not True:
            raise RingkvError(ans.get("code"), ans.get("message"), ans)
        return ans

    # ----------------------------------------------------------------- operations

    def ping(self, timeout_ms=None):
        """``{"id", "op": "ping"}`` -> ``{"id", "ok": true}``. Returns True."""
        req = {"op": "ping"}
        if timeout_ms is not None:
            req["timeout_ms"] = timeout_ms
        self.call(req)
        return True

    def get(self, bucket, key, timeout_ms=None):
        """Read a key. Returns ``(values, context)``.

        ``values`` is the list of the values of all live siblings (order meaningless); an
        empty list means the key does not exist. ``context`` is the opaque causal context to
        send back with the next ``put``/``delete`` of this key (may be empty).
        """
        req = {"op": "get", "bucket": _b(bucket), "key": _b(key)}
        if timeout_ms is not None:
            req["timeout_ms"] = timeout_ms
        ans = self.call(req)
        return list(ans.get("values", [])), ans.get("context", b"")

    def put(self, bucket, key, value, context=None, return_body=False, timeout_ms=None,
            if_none_match=False, if_match=False, ttl_ms=None):
        """Write a value.

        With ``context`` (from an earlier ``get``), the new value replaces exactly the
        versions that ``get`` returned; without it (or empty) the write is *blind* and any
        existing value stays as a sibling. The answer is sent after the write is durable.

        ``if_none_match``: write only if the key holds no live value (create only).
        ``if_match``: write only if ``context`` still covers every live version (nothing was
        written since the read). A refused condition raises :class:`RingkvError` with code
        ``condition_failed``; the two are mutually exclusive (``malformed_request``).

        ``ttl_ms``: time to live in milliseconds. The value expires at the coordinating node's
        clock at the write plus this, then reads as missing (a ``get`` returns no values) and
        is purged in the background. ``None`` or 0: it never expires.

        Returns ``None``, or ``(values, context)`` as a ``get`` right after the write would
        if ``return_body`` is true.
        """
        req = {"op": "put", "bucket": _b(bucket), "key": _b(key), "value": _b(value)}
        if context is not None:
            req["context"] = _b(context)
        if if_none_match:
            req["if_none_match"] = True
        if if_match:
            req["if_match"] = True
        if return_body:
            req["return_body"] = True
        if timeout_ms is not None:
            req["timeout_ms"] = timeout_ms
        if ttl_ms is not None:
            req["ttl_ms"] = ttl_ms
        ans = self.call(req)
        if return_body:
            return list(ans.get("values", [])), ans.get("context", b"")
        return None

    def delete(self, bucket, key, context=None, timeout_ms=None, if_match=False):
        """Write a tombstone over the versions ``context`` covers. Returns None.

        ``if_match``: delete only if nothing was written since the read that gave ``context``
        (else :class:`RingkvError` ``condition_failed``).
        """
        req = {"op": "delete", "bucket": _b(bucket), "key": _b(key)}
        if context is not None:
            req["context"] = _b(context)
        if if_match:
            req["if_match"] = True
        if timeout_ms is not None:
            req["timeout_ms"] = timeout_ms
        self.call(req)

    def cas(self, bucket, key, expect, value, n=None, timeout_ms=None):
        """Compare-and-set on a key of a strong bucket (linearizable).

        If the key holds ``expect`` (``None``: the key is absent), it gets ``value``
        (``None``: it is deleted). Returns ``None`` on success. If the key holds anything
        else, nothing is written and :class:`ConditionFailed` is raised with the current
        value in ``current`` (``None``: absent). Other errors raise :class:`RingkvError`:
        ``no_majority`` (nothing was written; retrying is safe), ``indeterminate`` (the
        outcome is unknown: it may still take effect; read the key to find out),
        ``wrong_consistency`` (the bucket is not strong), ``value_too_large``.

        Leave ``n`` to the bucket: operations on a key with different ``n`` are not
        linearizable with each other.
        """
        req = {"op": "cas", "bucket": _b(bucket), "key": _b(key)}
        if expect is not None:
            req["expect"] = _b(expect)
        if value is not None:
            req["value"] = _b(value)
        if n is not None:
            req["n"] = n
        if timeout_ms is not None:
            req["timeout_ms"] = timeout_ms
        rid = self.send(req)
        ans = self.recv_id(rid)
        if isinstance(ans, dict) and ans.get("ok") is False and ans.get("code") == "condition_failed":
            values = ans.get("values")
            if not isinstance(values, list) or len(values) > 1:
                raise RingkvError("client_error", "condition_failed answer to a cas without "
                                  "0 or 1 values: %r" % (ans,), ans)
            raise ConditionFailed(values[0] if values else None, ans.get("message"), ans)
        if not isinstance(ans, dict):
            raise RingkvError("client_error", "answer is not a map: %r" % (ans,), None)
        if ans.get("ok") is not True:
            raise RingkvError(ans.get("code"), ans.get("message"), ans)
        return None

    # ------------------------------------------------------------- administration

    def bucket_get(self, bucket):
        """A bucket's properties: the ``info`` map of ``bucket_get`` (``n``, ``r``, ``w``,
        ``timeout_ms``, ``sloppy_quorum``, ``compression``, ``consistency``)."""
        return self.call({"op": "bucket_get", "bucket": _b(bucket)}).get("info")

    def bucket_set(self, bucket, **props):
        """Set bucket properties (``n=3``, ``consistency="strong"``, ...); returns the
        properties after the change. A refused change raises :class:`RingkvError`
        (``cluster_error`` for a refused ``consistency``)."""
        return self.call({"op": "bucket_set", "bucket": _b(bucket), "props": props}).get("info")

    def explain(self, bucket, key, timeout_ms=None):
        """Where a key lives and why it reads as it does: the ``info`` map of ``explain``
        (partition, ``preference_list`` and ``fallbacks`` with liveness, each primary's
        replica in ``replicas``, the ``hints`` held for the key, the partition's
        ``exchanges``; PROTOCOL.md has every field). ``timeout_ms`` bounds each node's
        answer."""
        req = {"op": "explain", "bucket": _b(bucket), "key": _b(key)}
        if timeout_ms is not None:
            req["timeout_ms"] = timeout_ms
        return self.call(req).get("info")

    # ------------------------------------------------------------- large values

    def get_meta(self, bucket, key, timeout_ms=None):
        """``get`` with ``"meta": true``. Returns ``(values, meta, context)``.

        A large value's entry in ``values`` is ``b""``; ``meta`` has one map per value,
        ``{"size", "large", "version", "crc32"}`` (``version`` and ``crc32`` for large values
        only).
        """
        req = {"op": "get", "bucket": _b(bucket), "key": _b(key), "meta": True}
        if timeout_ms is not None:
            req["timeout_ms"] = timeout_ms
        ans = self.call(req)
        values = list(ans.get("values", []))
        meta = ans.get("meta")
        if meta is None:
            meta = [{"size": len(v), "large": False} for v in values]
        return values, list(meta), ans.get("context", b"")

    def get_range(self, bucket, key, version=None, offset=0, length=None, timeout_ms=None):
        """``get_range``: up to ``length`` bytes from ``offset`` of the key's value (of
        ``version`` if given: required when the key has siblings).

        Returns the answer map: ``value``, ``offset``, ``size``, and for a large value
        ``version`` and ``crc32``, plus ``context``. Errors: ``not_found``, ``siblings``,
        ``invalid_range`` (:class:`RingkvError`).
        """
        return self.call(_range_request(bucket, key, version, offset, length, timeout_ms))

    def put_stream(self, bucket, key, source, context=None, size=None, if_none_match=False,
                   if_match=False, ttl_ms=None, timeout_ms=None, return_body=False,
                   progress=None):
        """Streamed put of ``source``: a binary file object (anything with ``read(n)``) or an
        iterable of ``bytes`` blocks of any sizes.

        Sends ``put_begin`` (with ``size`` when given: the node then refuses more or fewer
        bytes), then ``put_chunk`` frames of the node's ``chunk_bytes`` with at most its
        ``window`` unanswered, then ``put_commit`` with the CRC-32 of all the bytes sent. On
        any error the upload is aborted (``put_abort``) and the error raised. ``progress``,
        if given, is called with the bytes the node has accepted after each chunk's answer.

        Returns the commit's answer map: ``size``, ``version``, ``crc32`` (plus ``values``
        and ``context`` with ``return_body``).
        """
        req = {"op": "put_begin", "bucket": _b(bucket), "key": _b(key)}
        if context:
            req["context"] = _b(context)
        if size is not None:
            req["size"] = size
        if if_none_match:
            req["if_none_match"] = True
        if if_match:
            req["if_match"] = True
        if ttl_ms is not None:
            req["ttl_ms"] = ttl_ms
        if timeout_ms is not None:
            req["timeout_ms"] = timeout_ms
        begun = self.call(req)
        upload = begun["upload"]
        chunk = int(begun["chunk_bytes"])
        window = max(1, int(begun.get("window", 1)))
        committing = False
        in_flight = []  # put_chunk request ids, oldest first
        try:
            crc = 0
            sent = 0
            seq = 0
            for data in _chunks(source, chunk):
                if len(in_flight) >= window:
                    self._chunk_answered(in_flight.pop(0), progress)
                crc = zlib.crc32(data, crc)
                sent += len(data)
                in_flight.append(self.send({"op": "put_chunk", "upload": upload, "seq": seq,
                                            "data": data}))
                seq += 1
            while in_flight:
                self._chunk_answered(in_flight.pop(0), progress)
            committing = True
            req = {"op": "put_commit", "upload": upload, "seq": seq, "crc32": crc}
            if return_body:
                req["return_body"] = True
            ans = self.call(req)
        except BaseException:
            if not committing:
                self._abort(upload, in_flight)
            raise
        if ans.get("size") != sent or ans.get("crc32") != crc:
            raise RingkvError("client_error", "put_commit answered size %r crc32 %r for %d bytes "
                              "with CRC-32 %d" % (ans.get("size"), ans.get("crc32"), sent, crc), ans)
        return ans

    def _chunk_answered(self, rid, progress):
        ans = self.recv_id(rid)
        if ans.get("ok") is not True:
            raise RingkvError(ans.get("code"), ans.get("message"), ans)
        if progress is not None and "received" in ans:
            progress(ans["received"])

    def _abort(self, upload, in_flight):
        """Best-effort ``put_abort``, after reading (and dropping) the answers of the
        ``put_chunk`` frames still in flight."""
        try:
            for rid in in_flight:
                self.recv_id(rid)
            self.call({"op": "put_abort", "upload": upload})
        except (OSError, ConnectionClosed, RingkvError):
            pass

    def get_stream(self, bucket, key, version=None, range_bytes=MAX_RANGE_BYTES, window=3,
                   timeout_ms=None):
        """Read a whole value as a stream: a generator of ``bytes`` blocks.

        A ``get`` with ``meta`` comes first (on the call, before the generator is returned):
        a missing key raises :class:`RingkvError` ``not_found``, several live versions raise
        :class:`Siblings` unless ``version`` names one, a small value is yielded whole. A
        large value is read by ``get_range`` requests of its version, ``window`` of them in
        flight, ``range_bytes`` each; after the last block its CRC-32 is checked and a
        mismatch raises :class:`ChecksumMismatch` (so a consumer that reaches the end of the
        generator has the exact bytes). Abandoning the generator early leaves answers on the
        connection that later calls skip.
        """
        values, meta, context = self.get_meta(bucket, key, timeout_ms=timeout_ms)
        if version is not None:
            picked = [i for i, m in enumerate(meta) if m.get("version") == _b(version)]
            if not picked:
                raise RingkvError("not_found", "no live version %s" % _b(version).hex())
            i = picked[0]
        elif not values:
            raise RingkvError("not_found", "the key holds no live value")
        elif len(values) > 1:
            raise Siblings(values, meta, context)
        else:
            i = 0
        m = meta[i]
        if not m.get("large"):
            return iter([values[i]])
        return self._ranges(bucket, key, m["version"], m["size"], m["crc32"], range_bytes,
                            window, timeout_ms)

    def _ranges(self, bucket, key, version, size, expected_crc, range_bytes, window,
                timeout_ms):
        crc = 0
        received = 0
        requested = 0
        in_flight = []  # (id, offset, length asked), oldest first
        while received < size:
            while len(in_flight) < window and requested < size:
                length = min(range_bytes, size - requested)
                rid = self.send(_range_request(bucket, key, version, requested, length,
                                               timeout_ms))
                in_flight.append((rid, requested, length))
                requested += length
            rid, offset, asked = in_flight.pop(0)
            ans = self.recv_id(rid)
            if ans.get("ok") is not True:
                raise RingkvError(ans.get("code"), ans.get("message"), ans)
            value = ans.get("value", b"")
            if (ans.get("offset") != offset or ans.get("size") != size or not value
                    or ans.get("version") != version or len(value) > asked):
                raise RingkvError("client_error", "get_range from %d answered %d bytes from %r "
                                  "of a %r-byte value" % (offset, len(value), ans.get("offset"),
                                                          ans.get("size")), ans)
            if len(value) < asked:
                # The node's max-range-bytes is below ours: ask again from here in its size;
                # the answers already asked for are read and dropped.
                for stale, _, _ in in_flight:
                    self.recv_id(stale)
                in_flight = []
                range_bytes = len(value)
                requested = offset + len(value)
            crc = zlib.crc32(value, crc)
            received += len(value)
            yield value
        if crc != expected_crc:
            raise ChecksumMismatch(expected_crc, crc, size)


def _range_request(bucket, key, version, offset, length, timeout_ms):
    req = {"op": "get_range", "bucket": _b(bucket), "key": _b(key), "offset": offset}
    if version is not None:
        req["version"] = _b(version)
    if length is not None:
        req["length"] = length
    if timeout_ms is not None:
        req["timeout_ms"] = timeout_ms
    return req


def _chunks(source, size):
    """Blocks of exactly ``size`` bytes (the last one shorter) from a file object or an
    iterable of bytes."""
    if hasattr(source, "read"):
        while True:
            data = source.read(size)
            # A raw file may return fewer bytes than asked before its end.
            while data and len(data) < size:
                more = source.read(size - len(data))
                if not more:
                    break
                data += more
            if not data:
                return
            yield bytes(data)
            if len(data) < size:
                return
    else:
        buf = bytearray()
        for block in source:
            buf += block
            while len(buf) >= size:
                yield bytes(buf[:size])
                del buf[:size]
        if buf:
            yield bytes(buf)


def _b(x):
    """Bytes for a bin field; ``str`` is encoded as UTF-8."""
    if isinstance(x, str):
        return x.encode("utf-8")
    return bytes(x)
