#!/usr/bin/env python3
"""Times `tx` (a receipt: a transaction with its proofs) against a running node.

usage: scripts/receipts.py RPC_URL [COUNT] [CLIENTS]

Lists every committed transaction from the node's blocks, picks COUNT of them at
random (500 by default; seeded, so runs compare), and asks the node for their
receipts: one at a time in block order, one at a time in random order, then from
CLIENTS concurrent clients (8 by default) in another random order. Prints the time per
ask and the asks per second. Load the node first, e.g. with
`pyralog-testnet bench --home DIR --txs 40000` on a testnet started with `up`.
Standard library only; every request goes to RPC_URL.
"""

import json
import random
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor


def call(url, method, params):
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    req = urllib.request.Request(
        url, body.encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        answer = json.load(r)
    if "result" not in answer:
        raise SystemExit(f"{method} {params}: {answer.get('error')}")
    return answer["result"]


def main():
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        return
    url = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 500
    clients = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    tip = call(url, "status", [])["height"]
    txs = []
    for height in range(1, tip + 1):
        for tx in call(url, "block", [height])["txs"]:
            txs.append((height, tx["hash"]))
    if not txs:
        raise SystemExit("no committed transactions: load the node first")
    count = min(count, len(txs))
    print(f"{len(txs)} transactions in {tip} blocks; {count} receipts asked")
    picked = random.Random(1).sample(txs, count)
    for name, order in [("in block order", sorted(picked)), ("in random order", picked)]:
        start = time.monotonic()
        for _, h in order:
            call(url, "tx", [h])
        took = time.monotonic() - start
        print(f"one at a time, {name}: {took / count * 1000:.2f} ms an ask")
    others = random.Random(2).sample(txs, count)
    start = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda t: call(url, "tx", [t[1]]), others))
    took = time.monotonic() - start
    print(f"{clients} clients at once, in random order: {count / took:.0f} asks a second")


if __name__ == "__main__":
    main()
