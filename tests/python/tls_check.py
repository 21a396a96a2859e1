"""Talks to ringkv nodes over TLS with the Python client (the ssl module).

Usage: python3 tests/python/tls_check.py --ca CA.pem --cert C.pem --key K.pem HOST:PORT...
Writes through the first node and reads through each of the others over mutual TLS, then
checks that a plain connection, and a TLS one without a client certificate, are refused.
Prints one PASS/FAIL line per check and then `N passed, M failed`; exits 1 on failure.
"""

import argparse
import os
import ssl
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ringkv_client import Client, ConnectionClosed, RingkvError  # noqa: E402


def addr(s):
    host, port = s.rsplit(":", 1)
    return host, int(port)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ca", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("nodes", nargs="+")
    a = ap.parse_args()
    passed = failed = 0

    def check(name, ok, detail=""):
        nonlocal passed, failed
        print(("PASS " if ok else "FAIL ") + name + ("" if ok else ": " + detail))
        if ok:
            passed += 1
        else:
            failed += 1

    nodes = [addr(n) for n in a.nodes]
    clients = [Client(h, p, tls_ca=a.ca, tls_cert=a.cert, tls_key=a.key) for h, p in nodes]
    check("TLS connections open", isinstance(clients[0].sock, ssl.SSLSocket))
    bucket = b"py-tls-%d" % os.getpid()
    for i in range(20):
        clients[0].put(bucket, b"k%d" % i, b"value-%d" % i)
    for c, (h, p) in zip(clients[1:], nodes[1:]):
        missing = [i for i in range(20) if c.get(bucket, b"k%d" % i)[0] != [b"value-%d" % i]]
        check("written over TLS on the first node, read over TLS on %s:%d" % (h, p), not missing,
              "missing %r" % missing[:5])

    h, p = nodes[0]
    plain = Client(h, p)
    try:
        plain.ping()
        check("a plain connection is refused tls_required", False, "ping answered")
    except RingkvError as e:
        check("a plain connection is refused tls_required", e.code == "tls_required",
              "%s: %s" % (e.code, e))
    except ConnectionClosed as e:
        check("a plain connection is refused tls_required", False, "closed without answer: %s" % e)
    finally:
        plain.close()

    try:
        anon = Client(h, p, tls_ca=a.ca)
        anon.ping()
        check("a TLS connection without a client certificate is refused", False, "ping answered")
    except (ssl.SSLError, ConnectionClosed, OSError) as e:
        check("a TLS connection without a client certificate is refused", True)
        print("  (refused with %s: %s)" % (type(e).__name__, e))

    try:
        Client(h, p, tls_ca=a.cert, tls_cert=a.cert, tls_key=a.key).ping()
        check("a node whose certificate is not from the CA given is refused", False, "ping answered")
    except ssl.SSLCertVerificationError as e:
        check("a node whose certificate is not from the CA given is refused", True)
        print("  (refused: %s)" % e)

    for c in clients:
        c.close()
    print("%d passed, %d failed" % (passed, failed))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
