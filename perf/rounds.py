#!/usr/bin/env python3
"""Where a round's time goes, step by step, from a testnet's validator logs.

Run the testnet with the round events on, then point this at its directory:

    RUST_LOG=info,consensus.round=trace,consensus.propose=debug \
        bpci testnet --duration 10s --rate 150000 --dir /tmp/tn
    python3 perf/rounds.py /tmp/tn [min_payload_bytes]

For every round whose proposal carried at least `min_payload_bytes` (default 100000), from the
events `building` (the leader starts packing), `proposed` (signed, about to be sent), `proposal
in` (a validator's core takes it), `voted` (its vote is durable and leaves) and `certified`
(the next leader formed the QC), it prints p50/p90/p99 in milliseconds of: build, arrival at
each other validator, arrival to vote, the leader's own vote after its proposal, proposal to
QC, and proposal to the next round's proposal. Times are the validators' own clocks (one
machine: one clock).
"""
import collections
import json
import sys
from datetime import datetime


def ms(stamp):
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    run = sys.argv[1]
    floor = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
    events = collections.defaultdict(dict)
    size = {}
    v = 0
    while True:
        try:
            log = open(f"{run}/validator-{v}.log")
        except FileNotFoundError:
            break
        for line in log:
            if '"consensus.round"' not in line and '"consensus.propose"' not in line:
                continue
            j = json.loads(line)
            f = j["fields"]
            r = f.get("round")
            if r is None:
                continue
            events[r].setdefault((v, f["message"]), ms(j["timestamp"]))
            if f["message"] == "proposed":
                size[r] = f["payload_bytes"]
        v += 1
    if v == 0:
        sys.exit(f"no validator-N.log in {run}")
    rows = collections.defaultdict(list)
    for r, e in events.items():
        if size.get(r, 0) < floor:
            continue
        leader = next(w for (w, m) in e if m == "proposed")
        sent = e[(leader, "proposed")]
        if (leader, "building") in e:
            rows["build"].append(sent - e[(leader, "building")])
        for w in range(v):
            if w == leader:
                if (w, "voted") in e:
                    rows["leader's own vote"].append(e[(w, "voted")] - sent)
                continue
            if (w, "proposal in") in e:
                rows["arrival"].append(e[(w, "proposal in")] - sent)
                if (w, "voted") in e:
                    rows["arrival to vote"].append(e[(w, "voted")] - e[(w, "proposal in")])
        qc = [t for (_, m), t in e.items() if m == "certified"]
        if qc:
            rows["proposal to QC"].append(min(qc) - sent)
        nxt = [t for (_, m), t in events.get(r + 1, {}).items() if m == "proposed"]
        if nxt:
            rows["round"].append(min(nxt) - sent)
        rows["payload MB"].append(size[r] / 1e6)
    if not rows:
        sys.exit("no round events: was RUST_LOG=info,consensus.round=trace,consensus.propose=debug set?")
    for k, xs in rows.items():
        xs.sort()
        n = len(xs)
        print(f"{k:20} n={n:5}  p50 {xs[n // 2]:7.2f}  p90 {xs[int(n * .9)]:7.2f}  p99 {xs[int(n * .99)]:7.2f}")


if __name__ == "__main__":
    main()
