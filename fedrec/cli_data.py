"""`fedrec data ...`: the data owner's commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from shared.keys import generate_keys
from shared.schema import DuplicatePolicy

app = typer.Typer(no_args_is_help=True)
console = Console()


@app.command()
def keygen(
    out: Annotated[Path, typer.Option(help="Key directory to create (user.key, item.key, owner.key; 0600).")],
    item_key_from: Annotated[
        Path | None, typer.Option(help="Reuse the federation's shared item key file instead of a new one.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite existing keys (old pseudonyms become unlinkable).")] = False,
) -> None:
    """Create a data owner's secret keys."""
    generate_keys(out, overwrite=force, item_key_from=item_key_from)
    console.print(f"keys written to {out} (mode 0600); keep user.key and owner.key secret")


@app.command("generate")
def generate_cmd(
    out: Annotated[Path, typer.Option(help="CSV file to write (user,item,value,timestamp).")],
    users: int = 943,
    items: int = 1682,
    seed: int = 42,
) -> None:
    """Write the embedded synthetic behaviour log as a raw CSV (for demos and tests)."""
    from shared.atomic import atomic_write_text
    from shared.synthetic import SyntheticSpec, generate  # the data owners' tools (pandas): imported when used

    data = generate(SyntheticSpec(n_users=users, n_items=items, seed=seed))
    frame = data.interactions.drop(columns=["line"])
    atomic_write_text(out, frame.to_csv(index=False))
    console.print(f"{len(frame)} interactions of {users} users over {items} items -> {out}")


@app.command("prepare")
def prepare_cmd(
    raw: Annotated[Path, typer.Argument(help="Raw log: u.data, ratings.dat[.gz], CSV or Parquet.")],
    keys: Annotated[Path, typer.Option(help="Key directory from `fedrec data keygen`.")],
    out: Annotated[Path, typer.Option(help="Prepared dataset directory to create.")],
    fmt: Annotated[str, typer.Option("--format", help="auto | ml-100k | ml-1m | csv | parquet")] = "auto",
    columns: Annotated[
        str | None, typer.Option(help="Column mapping, e.g. 'user=userId,item=movieId,value=rating,timestamp=ts'.")
    ] = None,
    duplicates: Annotated[DuplicatePolicy, typer.Option(help="Several rows for one (user, item).")] = (
        DuplicatePolicy.ERROR
    ),
    string_ids: Annotated[bool, typer.Option(help="Accept non-integer ids.")] = False,
    delimiter: Annotated[str | None, typer.Option(help="CSV delimiter (sniffed by default).")] = None,
    ncf_split: Annotated[
        Path | None, typer.Option(help="Directory with NCF's test.rating.tsv / test.negative.tsv (ML-1M).")
    ] = None,
    item_metadata: Annotated[
        Path | None, typer.Option(help="Public item metadata (u.item or movies.dat): genres and release periods.")
    ] = None,
    catalog_items: Annotated[
        Path | None, typer.Option(help="The federation's item list (u.item, movies.dat or one id per line): "
                                       "every data owner then builds the same catalog.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split and the sampled negatives.")] = 42,
    reid_map: Annotated[Path | None, typer.Option(help="Where to write the encrypted re-identification map.")] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing output directory.")] = False,
) -> None:
    """Validate raw logs, pseudonymize ids, split per user, write a prepared dataset."""
    with console.status("preparing…"):
        from client.data_owner import PrepareOptions, prepare_dataset

        manifest = prepare_dataset(
            raw,
            PrepareOptions(keys=keys, out=out, fmt=fmt, columns=columns, duplicates=duplicates,
                           string_ids=string_ids, delimiter=delimiter, ncf_split=ncf_split,
                           item_metadata=item_metadata, catalog_items=catalog_items, seed=seed, reid_map=reid_map,
                           overwrite=force),
        )
    console.print(
        f"{manifest['n_interactions']} interactions, {manifest['n_users']} users, {manifest['n_items']} items "
        f"-> {out}\ncatalog {manifest['catalog_hash'][:16]}…  split {manifest['split']['counts']}\n"
        f"re-identification map (owner key only): {manifest['reid_map']}"
    )


@app.command()
def catalog(
    items: Annotated[Path, typer.Argument(help="The federation's item list (u.item, movies.dat or one id per line).")],
    keys: Annotated[Path, typer.Option(help="Key directory holding the federation's shared item.key.")],
    out: Annotated[Path, typer.Option(help="Catalog file to write (.parquet), for the coordinator's catalog-path.")],
) -> None:
    """Build the federation's item catalog (pseudonymized item list) for the coordinator."""
    from client.data_owner import write_catalog

    digest = write_catalog(items, keys, out)
    console.print(f"catalog -> {out} (hash {digest[:16]}…); give it to the coordinator as catalog-path")


@app.command()
def info(dataset: Annotated[Path, typer.Argument(help="Prepared dataset directory.")]) -> None:
    """Show a prepared dataset's manifest (after checking its file hashes)."""
    from shared import prepared

    tables = prepared.read(dataset)
    console.print_json(json.dumps(tables.manifest))


@app.command("reveal")
def reveal_cmd(
    result: Annotated[Path, typer.Argument(help="Result file with user/item pseudonym columns.")],
    dataset: Annotated[Path, typer.Option(help="The prepared dataset the result was computed on.")],
    keys: Annotated[Path, typer.Option(help="The owner's key directory (owner.key).")],
    out: Annotated[Path, typer.Option(help="Output file (.csv, .json or .parquet).")],
    reid_map: Annotated[Path | None, typer.Option(help="Encrypted map, if not in the default place.")] = None,
    titles: Annotated[Path | None, typer.Option(help="u.item or movies.dat to add titles.")] = None,
) -> None:
    """Map pseudonyms in a result file back to raw ids (data owner only)."""
    from client.data_owner import reveal

    rows = reveal(result, dataset=dataset, keys_dir=keys, out=out, reid_map=reid_map, titles=titles)
    console.print(f"{rows} rows revealed -> {out} (mode 0600)")
