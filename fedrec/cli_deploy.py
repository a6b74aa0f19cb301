"""`fedrec deploy ...`: helpers for running fedrec on real SuperLink/SuperNode processes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from deploy.federation import NodeSpec, write_node_config
from shared.errors import FedrecError

app = typer.Typer(no_args_is_help=True)
console = Console(soft_wrap=True)


@app.command("node-config")
def node_config(
    data_path: Annotated[Path, typer.Option(help="This node's prepared dataset (`fedrec data prepare`).")],
    state_dir: Annotated[Path, typer.Option(help="Node state: user embeddings, privacy history, ledger, "
                                                  "signing key (created 0700; back it up).")],
    name: Annotated[str, typer.Option(help="Stable node name (seeds, logs).")],
    out: Annotated[Path, typer.Option(help="node_config TOML to write (`flower-supernode --node-config FILE`).")],
    force: Annotated[bool, typer.Option(help="Replace an existing file.")] = False,
    chunk_pairs: Annotated[int, typer.Option(help="Memory bound of a DP step: scored pairs per chunk (same "
                                                  "result; 2048 keeps an ML-1M silo's DP node under 500 MB). "
                                                  "0: 8192.", min=0)] = 0,
) -> None:
    """Write a SuperNode's node_config file after checking its dataset (and cache its arrays in the state)."""
    from client.data_cache import load_node_dataset
    from shared.prepared_files import read_manifest

    if out.exists() and not force:
        raise FedrecError(f"refusing to overwrite {out} (use --force)")
    state_dir.mkdir(parents=True, exist_ok=True)
    state_dir.chmod(0o700)
    load_node_dataset(data_path, state_dir / "data")  # verifies every file hash; ClientApps then never parse Parquet
    manifest = read_manifest(data_path, verify=False)
    write_node_config(NodeSpec(name, data_path, state_dir, chunk_pairs=chunk_pairs), out)
    console.print(f"{out}: {manifest['n_users']} users, catalog {manifest['catalog_hash'][:16]}…, state {state_dir}")


@app.command("demo-data")
def demo_data(
    out: Annotated[Path, typer.Option(help="Directory for node-N/{data,keys} and coordinator/catalog.parquet.")],
    nodes: int = 2,
    users: int = 400,
    items: int = 500,
    seed: int = 42,
    force: Annotated[bool, typer.Option(help="Replace a non-empty directory.")] = False,
) -> None:
    """Synthetic logs split over data owners, each prepared against one shared item catalog (demos, tests)."""
    from deploy.demo_data import make_demo_data  # the data owners' side (pandas)

    data = make_demo_data(out, nodes=nodes, users=users, items=items, seed=seed, force=force)
    for path in data.nodes:
        console.print(f"node dataset  {path}")
    console.print(f"coordinator   {data.catalog} (catalog {data.catalog_hash[:16]}…)")
