#!/usr/bin/env python3
"""Summarises a launch timeline written by a WICK_CUDA_TRACE=1 build (WICK_TRACE_OUT=file).

Each launch has two stamps from its first block: when it started and when its pdl_wait
returned (the launch before it had finished). Launches are ordered by release; a launch's
share of the critical path is the time from its release to the next one's. Decode steps
are cut at the output head (the launch with the most blocks), and each position of a step
takes its median over the steps of the most common length (a mean let the last step's
pick, whose share runs on to whatever the program does after generating, add 67 us to
every step's: docs/PERF.md, session 24); positions repeating with a layer's period are then
averaged over the layers.

Points inside a kernel (kind 2 and up, WICK_TRACE_MARK in kernels/cuda/trace.cuh) are
averaged per kernel shape and mark.

Usage: scripts/trace-summary.py trace.txt
"""
import collections
import statistics
import sys


def main(path):
    # A recorded graph's kernels keep their grid ids from one replay to the next, so a
    # launch is a start stamp and the next release stamp of the same grid id.
    pending, seq = {}, []
    marks = collections.defaultdict(list)  # (blocks, threads, kind) -> cycles since its start
    for line in open(path):
        grid, kind, ns, blocks, threads = map(int, line.split())
        if kind >= 2:
            marks[(blocks, threads, kind)].append(ns)
        elif kind == 0:
            pending[grid] = ns
        elif grid in pending:
            seq.append({"blocks": blocks, "threads": threads, "start": pending.pop(grid),
                        "release": ns})
    seq.sort(key=lambda r: r["release"])
    for a, b in zip(seq, seq[1:]):
        a["share"] = b["release"] - a["release"]
    seq = seq[:-1]
    head = max(r["blocks"] for r in seq)
    steps, cur = [], []
    for r in seq:
        cur.append(r)
        if r["blocks"] == head:
            steps.append(cur)
            cur = []
    # The first step includes the prompt; keep those of the most common length.
    n = collections.Counter(len(s) for s in steps[1:]).most_common(1)[0][0]
    steps = [s for s in steps[1:] if len(s) == n]
    # Each list ends with its step's head, so it begins with the step before's sampling.
    pos = []
    for i in range(n):
        shares = [s[i]["share"] for s in steps]
        waits = [s[i]["release"] - s[i]["start"] for s in steps]
        pos.append((steps[0][i]["blocks"], steps[0][i]["threads"],
                    statistics.median(shares), statistics.median(waits)))
    total = sum(p[2] for p in pos)
    print(f"{len(steps)} steps of {n} launches: {total / 1000:.1f} us a step "
          f"({1e9 / total:.1f} steps/s)")
    sigs = [(p[0], p[1]) for p in pos]

    def repeats(i, p):  # positions i.. look the same as i + p..
        return i + 2 * p <= n and all(sigs[i + k] == sigs[i + k + p] for k in range(p))

    # The shortest period that repeats four times from some position near the start.
    period = next((p for p in range(2, 40) for i in range(12)
                   if all(repeats(i + m * p, p) for m in range(3))), None)
    print("position blocks threads share_us resident_before_release_us")
    for i, p in enumerate(pos):
        print(f"{i:4d} {p[0]:6d} {p[1]:5d} {p[2] / 1000:8.2f} {p[3] / 1000:8.2f}")
    if period:
        # Layers: the longest run of whole periods, starting where the pattern starts.
        start = next(i for i in range(n) if repeats(i, period))
        layers = (n - start) // period
        while layers and any(sigs[start + k] != sigs[start + (layers - 1) * period + k]
                             for k in range(period)):
            layers -= 1
        print(f"layer pattern: period {period}, {layers} layers from position {start}")
        for k in range(period):
            vals = [pos[start + l * period + k] for l in range(layers)]
            share = sum(v[2] for v in vals) / layers
            wait = sum(v[3] for v in vals) / layers
            print(f"  {k}: blocks {vals[0][0]:6d} threads {vals[0][1]:5d} "
                  f"share {share / 1000:7.2f} us, resident {wait / 1000:6.2f} us before release")
    if marks:
        # Points inside a kernel (WICK_TRACE_MARK): SM clocks from a start the kernel chose,
        # in microseconds at the H100/H200 boost clock of 1.98 GHz.
        print("marks inside kernels: blocks threads mark mean_cycles mean_us (at 1.98 GHz) count")
        for (blocks, threads, kind), v in sorted(marks.items()):
            mean = sum(v) / len(v)
            print(f"  {blocks:6d} {threads:5d} {kind:3d} {mean:10.0f} {mean / 1980:7.2f} {len(v):6d}")


if __name__ == "__main__":
    main(sys.argv[1])
