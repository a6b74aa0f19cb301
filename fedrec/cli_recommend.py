"""`fedrec recommend` and `fedrec serve`: final recommendations at the node (files or gRPC)."""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console

from client.result_file import FORMATS
from shared.errors import FedrecError

console = Console(stderr=True)

RunOpt = Annotated[Path | None, typer.Option(help="Run directory of `fedrec train` or `fedrec simulate`.")]
PartitionOpt = Annotated[int | None, typer.Option(help="Simulated node of a federated run (default: all nodes).")]
ModelOpt = Annotated[Path | None, typer.Option(help="Deployment: the coordinator's model file (model.pt).")]
DataOpt = Annotated[Path | None, typer.Option(help="Deployment: this node's prepared dataset directory.")]
StateOpt = Annotated[Path | None, typer.Option(help="Deployment: this node's state directory (user embeddings).")]
RunKeyOpt = Annotated[str | None, typer.Option(help="Run key of the node state (default: summary.json or a scan).")]


def _source(run, partition, model, data, state_dir, run_key):
    from client.serving.source import ModelSource

    hand_over = None
    if run is not None:  # a simulation's run directory: its nodes' data is partitioned as the simulation did
        from simulations.client_app import hand_over_partition as hand_over
    return ModelSource(run=run, partition=partition, model=model, data=data, state_dir=state_dir, run_key=run_key,
                       hand_over=hand_over)


def _check_options(k: int, diversity: float, popularity_penalty: float) -> None:
    from client.recommender import MAX_K

    if not 1 <= k <= MAX_K:
        raise FedrecError(f"--k must lie in 1..{MAX_K}, got {k}")
    if not 0.0 <= diversity <= 1.0:
        raise FedrecError(f"--diversity must lie in [0, 1], got {diversity}")
    if not (np.isfinite(popularity_penalty) and popularity_penalty >= 0):
        raise FedrecError(f"--popularity-penalty must be a finite number >= 0, got {popularity_penalty}")


def read_user_list(path: Path) -> list[str]:
    """User pseudonyms from a text file (one per line) or a CSV with a ``user`` column; checked for format."""
    from client.serving.server import PSEUDONYM

    try:
        lines = [s.strip() for s in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise FedrecError(f"{path}: cannot read the user list ({exc})") from None
    if lines and "," in lines[0]:
        header = lines[0].split(",")
        if "user" not in header:
            raise FedrecError(f"{path}: CSV user list needs a 'user' column")
        col = header.index("user")
        rows = [(n, s.split(",")[col].strip() if len(s.split(",")) > col else "") for n, s in enumerate(lines[1:], 2)]
    else:
        rows = list(enumerate(lines, 1))
        if rows and rows[0][1] == "user":
            rows = rows[1:]
    users = []
    for line, value in rows:
        if not value:
            continue
        if not PSEUDONYM.fullmatch(value):
            raise FedrecError(f"{path}: line {line}: {value[:40]!r} is not a user pseudonym (32 lowercase hex)")
        users.append(value)
    if not users:
        raise FedrecError(f"{path}: the user list is empty")
    return list(dict.fromkeys(users))


def register(app: typer.Typer) -> None:
    @app.command()
    def recommend(
        out: Annotated[Path, typer.Option(help="Result file: .csv, .json or .parquet (user, rank, item, score).")],
        run: RunOpt = None,
        partition: PartitionOpt = None,
        model: ModelOpt = None,
        data: DataOpt = None,
        state_dir: StateOpt = None,
        run_key: RunKeyOpt = None,
        k: Annotated[int, typer.Option("--k", help="List length per user (1..1000).")] = 10,
        users: Annotated[Path | None, typer.Option(help="Only these users: one pseudonym per line.")] = None,
        diversity: Annotated[float, typer.Option(help="MMR trade-off λ in [0, 1] (0 = plain top-K).")] = 0.0,
        popularity_penalty: Annotated[float, typer.Option(help="Novelty: penalty β >= 0 on popularity.")] = 0.0,
        include_seen: Annotated[bool, typer.Option(help="Allow items the user already has.")] = False,
        approximate: Annotated[bool, typer.Option(
            help="IVF approximate top-K for large catalogs (GMF, no --diversity/--popularity-penalty): exact "
                 "scores, candidates from the best k-means lists of items.")] = False,
    ) -> None:
        """Top-K per local user, in pseudonyms (reveal them with `fedrec data reveal`)."""
        if out.suffix.lower() not in FORMATS:
            raise FedrecError(f"--out must end in {', '.join(FORMATS)}, got {out.name!r}")
        _check_options(k, diversity, popularity_penalty)
        if approximate and (diversity or popularity_penalty):
            raise FedrecError("--approximate ranks plain top-K: drop --diversity and --popularity-penalty")
        wanted = read_user_list(users) if users is not None else None
        source = _source(run, partition, model, data, state_dir, run_key)
        t0 = time.perf_counter()
        frames, found = [], set()
        parts = source.partitions() if source.run is not None and source.partition is None else [source.partition]
        for pid in parts:
            rec = dataclasses.replace(source, partition=pid).load()
            if wanted is None:
                rows = np.arange(rec.n_users)
            else:
                rows = np.array([r for u in wanted if (r := rec.user_row(u)) is not None], dtype=np.int64)
                found.update(rec.user_ids[rows])
            try:
                recs = rec.recommend(rows, k, exclude_seen=not include_seen, diversity=diversity,
                                     popularity_penalty=popularity_penalty, approximate=approximate)
            except ValueError as exc:  # options checked above; what is left is the model (--approximate: GMF)
                raise FedrecError(f"{exc} (this run's model: {rec.cfg.model.name})") from exc
            frames.append(rec.to_columns(rows, recs))
        if wanted is not None and len(found) < len(wanted):
            missing = [u for u in wanted if u not in found]
            raise FedrecError(f"{len(missing)} listed user(s) unknown to this node, e.g. {missing[0]}; nothing written")
        from client.result_file import concat, write_result

        columns = concat(frames)
        write_result(columns, out)
        n_users, n_rows = len(np.unique(columns["user"])), len(columns["user"])
        console.print(f"{n_users} users × top-{k} ({n_rows} rows) in {time.perf_counter() - t0:.1f} s -> {out}")

    @app.command()
    def serve(
        run: RunOpt = None,
        partition: Annotated[int | None, typer.Option(help="Simulated node of a federated run.")] = None,
        model: ModelOpt = None,
        data: DataOpt = None,
        state_dir: StateOpt = None,
        run_key: RunKeyOpt = None,
        host: Annotated[str, typer.Option(help="Address to bind; anything but loopback (127.0.0.0/8, ::1, "
                                                "localhost) needs --tls-cert/--tls-key.")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="Port to bind (0 = any free port).")] = 50061,
        tls_cert: Annotated[Path | None, typer.Option(help="Server certificate (PEM) for TLS.")] = None,
        tls_key: Annotated[Path | None, typer.Option(help="Server private key (PEM) for TLS.")] = None,
        client_ca: Annotated[Path | None, typer.Option(
            help="mTLS: admit only clients whose certificate this CA signed. A PEM CA bundle, or a `fedrec certs` "
                 "directory for its ca.crt (the federation CA). Needs --tls-cert/--tls-key.")] = None,
        workers: Annotated[int, typer.Option(help="Concurrent request threads.")] = 8,
        threads: Annotated[int, typer.Option(help="PyTorch intra-op threads.")] = 1,
        approximate: Annotated[bool, typer.Option(
            help="Recommend answers plain top-K from an IVF index (GMF models; for 10^5-10^6-item catalogs; "
                 "built before serving and on every reload). Requests with diversity or a popularity penalty "
                 "are ranked exactly.")] = False,
    ) -> None:
        """Serve Recommend / RecommendCold / ReloadModel and gRPC health; SIGHUP reloads the model."""
        from client.serving.server import check_access, start_server

        check_access(host, tls_cert=tls_cert, tls_key=tls_key, client_ca=client_ca)  # before any loading
        if not 0 <= port <= 65535 or workers < 1 or threads < 1:
            raise FedrecError("--port must lie in 0..65535, --workers and --threads must be >= 1")
        import torch

        torch.set_num_threads(threads)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        source = _source(run, partition, model, data, state_dir, run_key)
        running = start_server(source.load, host=host, port=port, tls_cert=tls_cert, tls_key=tls_key,
                               client_ca=client_ca, max_workers=workers, approximate=approximate)
        rec = running.service.current
        mode = "mTLS" if client_ca else "TLS" if tls_cert else "plain-text"
        console.print(f"serving {rec.n_users} users × {rec.n_items} items (model {rec.version}) on "
                      f"{host}:{running.port} ({mode}); SIGHUP reloads, Ctrl-C stops")
        stop = threading.Event()

        def reload_in_background(*_: object) -> None:
            def work() -> None:
                try:
                    running.service.reload()
                except FedrecError as exc:
                    logging.getLogger("fedrec.serving").error("reload failed, old model kept: %s", exc)

            threading.Thread(target=work, daemon=True).start()

        signal.signal(signal.SIGHUP, reload_in_background)
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            while not stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            running.stop()
            console.print("stopped")
