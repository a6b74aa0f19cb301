"""A deployed node's data path: Parquet read without pandas, the same arrays as the data owner's loader, cached
in the node state (0600, keyed by the manifest), bad files named, and a node process that imports no pandas."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from client.data_cache import cache_path, load_node_dataset
from shared import prepared
from shared.datasets import synthetic_tables
from shared.errors import DataError
from shared.interactions import InteractionData
from shared.node_dataset import read_node_dataset
from shared.prepared_files import sha256


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return prepared.write(synthetic_tables(5, 80, 150), tmp_path_factory.mktemp("node") / "data")


def _same(a: InteractionData, b: InteractionData) -> None:
    for name in a.__dataclass_fields__:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and np.array_equal(x, y), name
        else:
            assert x == y, name


def test_the_node_reads_the_arrays_the_data_owner_loader_builds(dataset):
    tables = prepared.read(dataset)
    own = read_node_dataset(dataset)
    _same(InteractionData.from_tables(tables), own.data)
    assert own.catalog_hash == tables.catalog.content_hash
    assert own.value_range == tuple(tables.manifest["value_range"])


def test_the_cache_is_private_keyed_by_the_manifest_and_gives_the_same_arrays(dataset, tmp_path):
    first = load_node_dataset(dataset, tmp_path / "cache")
    path = cache_path(dataset, tmp_path / "cache")
    assert path.exists() and path.stat().st_mode & 0o777 == 0o600
    _same(first.data, read_node_dataset(dataset).data)
    again = load_node_dataset(dataset, tmp_path / "cache")
    _same(first.data, again.data)
    assert again.catalog_hash == first.catalog_hash and again.value_range == first.value_range


def _rewrite(dataset, tmp_path, name: str, table: pa.Table):
    """A copy of ``dataset`` whose file ``name`` is ``table``, with a manifest that lists its new hash."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    pq.write_table(table, copy / name)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"][name] = sha256(copy / name)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_a_bad_pseudonym_is_named_by_file_line_and_field(dataset, tmp_path):
    table = pq.read_table(dataset / "interactions.parquet")
    users = table.column("user").to_pylist()
    users[6] = "not-a-pseudonym"
    bad = _rewrite(dataset, tmp_path, "interactions.parquet",
                   table.set_column(0, "user", pa.array(users, type=table.schema.field("user").type)))
    with pytest.raises(DataError, match=r"interactions\.parquet, line 7, field 'user': not a pseudonym"):
        read_node_dataset(bad)
    with pytest.raises(DataError, match="line 7, field 'user'"):  # through the cache's child process too
        load_node_dataset(bad, tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*.npz"))  # nothing half-written


def test_a_modified_file_is_refused_before_the_cache_is_used(dataset, tmp_path):
    load_node_dataset(dataset, tmp_path / "cache")
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    shutil.copytree(tmp_path / "cache", tmp_path / "cache2")
    with open(copy / "negatives.parquet", "ab") as fh:
        fh.write(b"x")
    with pytest.raises(DataError, match="does not match the manifest hash"):
        load_node_dataset(copy, tmp_path / "cache2")


def test_a_node_process_imports_neither_pandas_nor_pyarrow_once_its_data_is_cached(dataset, tmp_path):
    load_node_dataset(dataset, tmp_path / "cache")
    code = ("import sys; import client.app; from pathlib import Path; "
            "from client.data_cache import load_node_dataset; "
            f"d = load_node_dataset(Path({str(dataset)!r}), Path({str(tmp_path / 'cache')!r})); "
            "print(sorted(m for m in ('pandas', 'pyarrow', 'matplotlib', 'dp_accounting', 'opacus') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
