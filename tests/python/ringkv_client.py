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

Example::

    c = Client("127.0.0.1", 7379)
    values, ctx = c.get(b"cart", b"alice")
    c.put(b"cart", b"alice", b"milk", context=ctx)
"""

import socket
import struct

import msgpack

__all__ = ["Client", "RingkvError", "ConnectionClosed", "encode_frame"]

_LEN = struct.Struct(">I")  # 4-byte big-endian unsigned length prefix


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


class ConnectionClosed(Exception):
    """The server closed the connection (EOF), possibly in the middle of a frame."""


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

    def __init__(self, host, port, timeout=10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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


def _b(x):
    """Bytes for a bin field; ``str`` is encoded as UTF-8."""
    if isinstance(x, str):
        return x.encode("utf-8")
    return bytes(x)
