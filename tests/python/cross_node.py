"""Writes through one ringkv node and reads through another (replication across the cluster).

Usage: python3 tests/python/cross_node.py --write HOST:PORT --read HOST:PORT
Prints one PASS/FAIL line per check and then `N passed, M failed`; exits 1 on failure.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ringkv_client import Client  # noqa: E402


def addr(s):
    host, port = s.rsplit(":", 1)
    return host, int(port)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--write", required=True)
    ap.add_argument("--read", required=True)
    a = ap.parse_args()
    w = Client(*addr(a.write))
    r = Client(*addr(a.read))
    bucket = b"cross-%d" % os.getpid()
    passed = failed = 0

    def check(name, ok, detail=""):
        nonlocal passed, failed
        print(("PASS " if ok else "FAIL ") + name + ("" if ok else ": " + detail))
        if ok:
            passed += 1
        else:
            failed += 1

    # Default bucket properties are n=3 r=2 w=2: a write acknowledged by 2 replicas is seen
    # by any read of 2 replicas.
    for i in range(50):
        w.put(bucket, b"k%d" % i, b"value-%d" % i)
    missing = [i for i in range(50) if r.get(bucket, b"k%d" % i)[0] != [b"value-%d" % i]]
    check("write on one node, read on another", not missing, "missing %r" % missing[:5])

    # Siblings made on two nodes are seen and resolved on a third path.
    w.put(bucket, b"cart", b"milk")
    _, ctx = r.get(bucket, b"cart")
    w.put(bucket, b"cart", b"milk,eggs", context=ctx)
    r.put(bucket, b"cart", b"milk,bread", context=ctx)
    values, ctx = r.get(bucket, b"cart")
    check("concurrent writes on two nodes become siblings", sorted(values) == [b"milk,bread", b"milk,eggs"], repr(values))
    merged = b",".join(sorted(set(b",".join(values).split(b","))))
    w.put(bucket, b"cart", merged, context=ctx)
    values, _ = r.get(bucket, b"cart")
    check("the merged context resolves them", values == [merged], repr(values))

    values, ctx = w.get(bucket, b"k0")
    r.delete(bucket, b"k0", context=ctx)
    check("a delete on one node is seen on the other", w.get(bucket, b"k0")[0] == [])

    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
