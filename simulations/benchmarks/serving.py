"""Serving latency and throughput of the node recommender on ML-1M (6,040 users × 3,706 items).

Model: the benchmarks' cached ML-1M GMF (:data:`simulations.benchmarks.ML1M_GMF`).

- in-process: one ``Recommend``-equivalent call (pseudonym → row, score the catalog,
  exclude seen items, top-10, rows → item pseudonyms), p50/p99 over seeded random users;
- gRPC: ``fedrec serve`` in a child process on 127.0.0.1 (plain-text), one client
  calling sequentially (p50/p99), then ``--clients`` concurrent clients for
  ``--seconds`` (throughput);
- batch: top-10 for all 6,040 users in one call (median of 3).

Goals: in-process p50 ≤ 1 ms, gRPC p50 ≤ 5 ms, all users ≤ 2 s (ML-1M); one user p50 ≤ 10 ms at 10⁶ items.

``--approximate`` also times the IVF approximate top-K (:mod:`client.catalog_index`) and its recall@10
against exact top-K. ``--run DIR`` serves another centralized run instead (e.g. ``fedrec train`` on the scale
benchmark's 10⁶-item catalog); ``--batch-users N`` times the batch for N users (one node's users)
instead of all of them.

    python -m simulations.benchmarks.serving --data-dir ../shared/data --out /tmp/serving.json
        [--run DIR] [--batch-users N] [--approximate]
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

GOALS = {"p50_ms": 1.0, "grpc_p50_ms": 5.0, "all_users_seconds": 2.0}
GOALS_MILLION_ITEMS = {"p50_ms": 10.0}  # catalogs of 10⁶ items: one user, in-process


def _percentiles(ns: list[int]) -> tuple[float, float]:
    ms = np.asarray(ns, dtype=np.float64) / 1e6
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def in_process(rec, users: list[str], k: int = 10, *, approximate: bool = False) -> list[int]:
    """Latency (ns) of one full single-user request per element of ``users``."""
    out = []
    for user in users:
        t0 = time.perf_counter_ns()
        recs = rec.recommend(np.array([rec.user_row(user)]), k, approximate=approximate)
        _ = list(rec.item_ids[recs.items[0][recs.items[0] >= 0]])
        out.append(time.perf_counter_ns() - t0)
    return out


def approximate_point(rec, users: list[str], k: int = 10) -> dict[str, float]:
    """Index build seconds, p50/p99 of approximate single-user requests, and recall@k against exact top-K."""
    t0 = time.perf_counter()
    rec.recommend(np.array([0]), k, approximate=True)  # builds the index
    build = time.perf_counter() - t0
    a50, a99 = _percentiles(in_process(rec, users, k, approximate=True))
    rows = np.array([rec.user_row(u) for u in users[:500]])
    exact, approx = rec.recommend(rows, k).items, rec.recommend(rows, k, approximate=True).items
    hits = [len(set(a[a >= 0]) & set(e[e >= 0])) / max(1, int((e >= 0).sum())) for a, e in zip(approx, exact,
                                                                                                  strict=True)]
    return {"approx_index_seconds": build, "approx_p50_ms": a50, "approx_p99_ms": a99,
            "approx_recall_at_10": float(np.mean(hits))}


@contextlib.contextmanager
def serve_in_child(run: Path, workers: int):
    """``fedrec serve`` on a free 127.0.0.1 port in a child process; yields the target; SIGTERM on exit."""
    cmd = [sys.executable, "-m", "fedrec.cli", "serve", "--run", str(run), "--port", "0", "--workers", str(workers),
           "--threads", "1"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert proc.stderr is not None
        target = None
        for line in proc.stderr:
            if m := re.search(r"on (127\.0\.0\.1:\d+)", line):
                target = m.group(1)
                break
        if target is None:
            raise RuntimeError(f"fedrec serve did not start (exit {proc.wait()})")
        threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep draining its log
        yield target
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def grpc_sequential(target: str, users: list[str], k: int = 10) -> list[int]:
    from client.serving.client import RecommenderClient

    with RecommenderClient(target) as client:
        client.wait_ready()
        out = []
        for user in users:
            t0 = time.perf_counter_ns()
            client.recommend(user, k)
            out.append(time.perf_counter_ns() - t0)
    return out


def grpc_throughput(target: str, users: list[str], clients: int, seconds: float) -> tuple[float, int]:
    """(requests per second, errors) with ``clients`` threads, each on its own channel."""
    from client.serving.client import RecommenderClient

    counts, errors = [0] * clients, [0] * clients
    stop = threading.Event()

    def worker(i: int) -> None:
        with RecommenderClient(target) as client:
            client.wait_ready()
            j = i
            while not stop.is_set():
                try:
                    client.recommend(users[j % len(users)], 10)
                    counts[i] += 1
                except Exception:
                    errors[i] += 1
                j += clients

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # connect and warm up
    start, before = time.perf_counter(), sum(counts)
    time.sleep(seconds)
    done, elapsed = sum(counts) - before, time.perf_counter() - start
    stop.set()
    for t in threads:
        t.join()
    return done / elapsed, sum(errors)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from client.serving.source import ModelSource
    from simulations.benchmarks import ML1M_GMF, benchmark_parser, print_table, trained_run, use_data_dir, write_json

    parser = benchmark_parser(__doc__)
    parser.add_argument("--requests", type=int, default=2000, help="timed single-user requests (each path)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent gRPC clients for throughput")
    parser.add_argument("--seconds", type=float, default=5.0, help="throughput measurement time")
    parser.add_argument("--workers", type=int, default=8, help="server request threads")
    parser.add_argument("--run", default=None, help="serve this run directory instead of the cached ML-1M GMF")
    parser.add_argument("--batch-users", type=int, default=0, help="users in the timed batch (0: all)")
    parser.add_argument("--approximate", action="store_true", help="also time the IVF approximate top-K (GMF)")
    args = parser.parse_args(argv)
    use_data_dir(args.data_dir)
    torch.set_num_threads(1)  # shared machines: one thread is faster than oversubscribed cores
    run = Path(args.run) if args.run else trained_run("ml1m-gmf", ML1M_GMF)
    rec = ModelSource(run=run).load()
    rng = np.random.default_rng(7)
    users = list(rec.user_ids[rng.integers(0, rec.n_users, size=args.requests)])
    in_process(rec, users[:200])  # warm-up
    p50, p99 = _percentiles(in_process(rec, users))
    approx = approximate_point(rec, users) if args.approximate else {}
    batch, batch_users = [], min(args.batch_users or rec.n_users, rec.n_users)
    for _ in range(3):
        t0 = time.perf_counter()
        rec.recommend(np.arange(batch_users), 10)
        batch.append(time.perf_counter() - t0)
    with serve_in_child(run, args.workers) as target:
        grpc_sequential(target, users[:200])  # warm-up
        g50, g99 = _percentiles(grpc_sequential(target, users))
        qps, errors = grpc_throughput(target, users, args.clients, args.seconds)
    all_users = float(np.median(batch))
    measured = {"p50_ms": p50, "grpc_p50_ms": g50, "all_users_seconds": all_users}
    goals = GOALS_MILLION_ITEMS if rec.n_items >= 10**6 else GOALS
    doc = {"p50_ms": p50, "p99_ms": p99, "grpc_p50_ms": g50, "grpc_p99_ms": g99, "qps": qps,
           "all_users_seconds": all_users, "batch_users": batch_users, "grpc_errors": errors, "requests": args.requests,
           "clients": args.clients, "server_workers": args.workers, "users": rec.n_users, "items": rec.n_items,
           "model": str(run) if args.run else ML1M_GMF, "goals": goals,
           "goals_met": {k: measured[k] <= g for k, g in goals.items()},
           "cpu_count": os.cpu_count(), **approx}
    rows = [{"measure": key, "value": doc[key], "goal": goals.get(key, "")}
            for key in ("p50_ms", "p99_ms", "grpc_p50_ms", "grpc_p99_ms", "qps", "all_users_seconds", *approx)]
    print_table(rows, ["measure", "value", "goal"], f"serving top-10 ({rec.n_users} users × {rec.n_items} items, batch "
                f"{batch_users} users; {args.clients} concurrent clients for qps)")
    write_json(args.out, doc)
    return doc


if __name__ == "__main__":
    main()
