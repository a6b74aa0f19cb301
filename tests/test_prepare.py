"""`fedrec data prepare / reveal` end to end through the CLI (in-process)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from fedrec.cli import app
from shared import prepared
from shared.interactions import InteractionData

runner = CliRunner()


def run(*args: str):
    """Invoke the CLI like `fedrec` does (FedrecError -> exit 2)."""
    from shared.errors import FedrecError

    try:
        result = runner.invoke(app, list(args), catch_exceptions=False)
    except FedrecError as exc:
        return 2, str(exc)
    return result.exit_code, result.output


@pytest.fixture()
def raw_csv(tmp_path: Path) -> Path:
    """A small log with distinctive string ids, so any leak is easy to spot."""
    rows = []
    for u in range(30):
        for j in range(12):
            item = f"film-{(u * 7 + j * 3) % 60:03d}"
            rows.append((f"alice-{u:03d}", item, 1 + (u + j) % 5, 1_000_000 + 100 * j + u))
    path = tmp_path / "log.csv"
    pd.DataFrame(rows, columns=["uid", "iid", "stars", "ts"]).to_csv(path, index=False)
    return path


def prepare(tmp_path: Path, raw: Path, *extra: str):
    keys = tmp_path / "keys"
    if not keys.exists():
        assert run("data", "keygen", "--out", str(keys))[0] == 0
    return run("data", "prepare", str(raw), "--keys", str(keys), "--out", str(tmp_path / "ds"),
               "--columns", "user=uid,item=iid,value=stars,timestamp=ts", "--string-ids", *extra)


def all_strings(directory: Path) -> set[str]:
    """Every string value in every Parquet/JSON file of a directory (decoded, not raw bytes)."""
    out: set[str] = set()
    for f in directory.iterdir():
        if f.suffix == ".parquet":
            for col in pq.read_table(f).to_pylist():
                for value in col.values():
                    out.update(value if isinstance(value, list) else [value] if isinstance(value, str) else [])
        else:
            out.add(f.read_text())
    return out


def test_prepare_writes_pseudonymized_dataset_without_raw_ids(tmp_path, raw_csv):
    code, output = prepare(tmp_path, raw_csv)
    assert code == 0, output
    ds = tmp_path / "ds"
    assert sorted(p.name for p in ds.iterdir()) == ["catalog.parquet", "interactions.parquet", "manifest.json",
                                                   "negatives.parquet"]
    strings = all_strings(ds)
    text = "\n".join(strings)
    assert "alice-" not in text and "film-" not in text
    raw = pd.read_csv(raw_csv, dtype=str)
    assert not strings & (set(raw.uid) | set(raw.iid))
    tables = prepared.read(ds)
    assert tables.manifest["n_users"] == 30 and tables.manifest["n_interactions"] == len(raw)
    data = InteractionData.from_tables(tables)
    assert data.n_train + 2 * 30 == len(raw)


def test_reveal_round_trips_and_wrong_key_fails_cleanly(tmp_path, raw_csv):
    assert prepare(tmp_path, raw_csv)[0] == 0
    tables = prepared.read(tmp_path / "ds")
    result = tables.interactions[["user", "item"]].head(25)
    result.to_csv(tmp_path / "result.csv", index=False)
    code, out = run("data", "reveal", str(tmp_path / "result.csv"), "--dataset", str(tmp_path / "ds"),
                    "--keys", str(tmp_path / "keys"), "--out", str(tmp_path / "revealed.csv"))
    assert code == 0, out
    assert stat.S_IMODE(os.stat(tmp_path / "revealed.csv").st_mode) == 0o600
    revealed = pd.read_csv(tmp_path / "revealed.csv", dtype=str)
    raw = pd.read_csv(raw_csv, dtype=str)
    pairs = set(zip(raw.uid, raw.iid, strict=True))
    assert all((u, i) in pairs for u, i in zip(revealed.raw_user, revealed.raw_item, strict=True))
    # another owner's keys: clean failure, nothing written
    assert run("data", "keygen", "--out", str(tmp_path / "other"))[0] == 0
    reid = next((tmp_path / "keys" / "reid").iterdir())
    code, out = run("data", "reveal", str(tmp_path / "result.csv"), "--dataset", str(tmp_path / "ds"),
                    "--keys", str(tmp_path / "other"), "--reid-map", str(reid), "--out", str(tmp_path / "x.csv"))
    assert code == 2 and "wrong owner key" in out
    assert not (tmp_path / "x.csv").exists()


def test_bad_input_exits_nonzero_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("uid,iid,stars,ts\nu1,i1,5,100\nu2,i2,five,200\n")
    code, out = prepare(tmp_path, bad)
    assert code == 2 and "line 3" in out and "stars" in out
    assert not (tmp_path / "ds").exists()
    assert not any(p.name.startswith(".ds") for p in tmp_path.iterdir())  # no temp leftovers
    assert not (tmp_path / "keys" / "reid").exists()


def test_existing_output_is_not_overwritten_without_force(tmp_path, raw_csv):
    assert prepare(tmp_path, raw_csv)[0] == 0
    before = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    code, out = prepare(tmp_path, raw_csv)
    assert code == 2 and "already exists" in out
    assert json.loads((tmp_path / "ds" / "manifest.json").read_text()) == before
    assert prepare(tmp_path, raw_csv, "--force")[0] == 0


def test_tampered_dataset_is_detected(tmp_path, raw_csv):
    assert prepare(tmp_path, raw_csv)[0] == 0
    path = tmp_path / "ds" / "interactions.parquet"
    table = pq.read_table(path).to_pandas()
    table.loc[0, "value"] = 99.0
    table.to_parquet(path)
    with pytest.raises(Exception, match="does not match the manifest"):
        prepared.read(tmp_path / "ds")


def test_missing_keys_are_a_clear_error(tmp_path, raw_csv):
    code, out = run("data", "prepare", str(raw_csv), "--keys", str(tmp_path / "nokeys"), "--out",
                    str(tmp_path / "ds"))
    assert code == 2 and "key file not found" in out


@pytest.mark.data
def test_ml100k_prepares_with_genres(tmp_path, ml100k):
    assert run("data", "keygen", "--out", str(tmp_path / "keys"))[0] == 0
    code, out = run("data", "prepare", str(ml100k / "u.data"), "--keys", str(tmp_path / "keys"), "--out",
                    str(tmp_path / "ds"), "--item-metadata", str(ml100k / "u.item"))
    assert code == 0, out
    tables = prepared.read(tmp_path / "ds")
    assert tables.manifest["n_users"] == 943 and tables.manifest["n_items"] == 1682
    assert tables.manifest["split"]["counts"] == {"train": 98114, "val": 943, "test": 943}
    assert len(tables.item_genres) == 1682


@pytest.mark.data
def test_ml1m_uses_the_exact_ncf_test_split(tmp_path, ml1m):
    assert run("data", "keygen", "--out", str(tmp_path / "keys"))[0] == 0
    code, out = run("data", "prepare", str(ml1m / "derived" / "ratings_no_timestamp.dat.gz"), "--keys",
                    str(tmp_path / "keys"), "--out", str(tmp_path / "ds"), "--ncf-split", str(ml1m / "ncf"))
    assert code == 0, out
    tables = prepared.read(tmp_path / "ds")
    assert tables.manifest["split"]["protocol"] == "fixed-test"
    assert tables.manifest["split"]["counts"]["test"] == 6040
    data = InteractionData.from_tables(tables)
    # reveal the test items and compare with NCF's file, in original ids
    from shared.keys import load_keys
    from shared.reidentify import ReidentificationMap

    reid = ReidentificationMap.load(next((tmp_path / "keys" / "reid").iterdir()), load_keys(tmp_path / "keys").owner,
                                    bound_to=tables.manifest["reid_binding"])
    users, items, negs = data.held_out("test")
    got = {(reid.users[data.user_ids[u]], reid.items[tables.catalog.items[i]]) for u, i in zip(users, items,
                                                                                              strict=True)}
    ncf = pd.read_csv(ml1m / "ncf" / "test.rating.tsv", sep="\t", header=None, dtype=str)
    assert got == set(zip(ncf[0], ncf[1], strict=True))
    # 156 users have their own test item among NCF's negatives: it is dropped, leaving 98
    per_user = (negs >= 0).sum(axis=1)
    assert set(per_user) == {98, 99} and (per_user == 98).sum() == 156


def test_shared_catalog_makes_owners_agree(tmp_path, raw_csv):
    """Two owners with different items but the federation's item list and item key build one catalog."""
    items = tmp_path / "items.txt"
    items.write_text("\n".join(f"film-{i:03d}" for i in range(80)) + "\n")
    assert run("data", "keygen", "--out", str(tmp_path / "a"))[0] == 0
    shared_key = str(tmp_path / "a" / "item.key")
    assert run("data", "keygen", "--out", str(tmp_path / "b"), "--item-key-from", shared_key)[0] == 0
    raw = pd.read_csv(raw_csv, dtype=str)
    hashes = []
    for owner, part in (("a", raw[raw.uid < "alice-015"]), ("b", raw[raw.uid >= "alice-015"])):
        part.to_csv(tmp_path / f"{owner}.csv", index=False)
        code, out = run("data", "prepare", str(tmp_path / f"{owner}.csv"), "--keys", str(tmp_path / owner), "--out",
                        str(tmp_path / f"ds-{owner}"), "--columns", "user=uid,item=iid,value=stars,timestamp=ts",
                        "--string-ids", "--catalog-items", str(items))
        assert code == 0, out
        hashes.append(prepared.read(tmp_path / f"ds-{owner}").manifest["catalog_hash"])
    code, out = run("data", "catalog", str(items), "--keys", str(tmp_path / "a"), "--out",
                    str(tmp_path / "cat.parquet"))
    assert code == 0, out
    from shared.catalog import ItemCatalog

    assert hashes[0] == hashes[1] == ItemCatalog.load(tmp_path / "cat.parquet").content_hash
    # an item outside the federation's list is refused, naming the line
    items.write_text("film-000\n")
    code, out = run("data", "prepare", str(tmp_path / "a.csv"), "--keys", str(tmp_path / "a"), "--out",
                    str(tmp_path / "ds-x"), "--columns", "user=uid,item=iid,value=stars,timestamp=ts",
                    "--string-ids", "--catalog-items", str(items))
    assert code == 2 and "not in the catalog" in out and not (tmp_path / "ds-x").exists()
