"""The node install (`pip install fedrec[node]`): pandas, matplotlib and dp-accounting are the `full` extra, and
the node path works without them; a command that needs them says which extra to install."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from client.data_owner import read_result
from client.serving.client import RecommenderClient
from server.app import federated_run
from shared import prepared
from shared.config import RunConfig
from shared.datasets import synthetic_tables
from simulations.client_app import app as client_app
from simulations.inprocess import InProcessGrid
from tests.support import MODEL_AVERAGING, serving

# The interpreter of a node install, here: the three `full` packages are not found (as if not installed).
WITHOUT_FULL = ("import sys\n"
                "class NotInstalled:\n"
                "    def find_spec(self, name, path=None, target=None):\n"
                "        if name.partition('.')[0] in ('pandas', 'matplotlib', 'dp_accounting'):\n"
                "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
                "sys.meta_path.insert(0, NotInstalled())\n"
                "sys.argv = ['fedrec', *sys.argv[1:]]\n"
                "from fedrec.cli import main\n"
                "main()\n")

def node_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT_FULL, *map(str, args)], capture_output=True, text=True)


def test_a_node_without_the_full_extra_configures_itself_and_writes_its_top_k(tmp_path):
    data_dir = prepared.write(synthetic_tables(42, 120, 200), tmp_path / "node-data")
    state = tmp_path / "state"
    done = node_cli("deploy", "node-config", "--data-path", data_dir, "--state-dir", state, "--name", "n1",
                    "--out", tmp_path / "node.toml")
    assert done.returncode == 0, done.stderr
    assert any((state / "data").glob("*.npz"))  # the node's arrays, cached without pandas
    cfg = RunConfig.from_mapping({**MODEL_AVERAGING, "model.name": "gmf", "model.embedding-dim": 8,
                                  "data.path": str(data_dir), "data.partitions": 1, "federation.min-nodes": 1,
                                  "federation.rounds": 1, "federation.run-dir": str(tmp_path / "run")})
    grid = InProcessGrid(client_app, [{"data-path": str(data_dir), "state-dir": str(state)}], cfg.to_flower_config())
    federated_run(cfg, grid, 1).execute()
    for suffix in (".csv", ".json", ".parquet"):
        out = tmp_path / f"top{suffix}"
        done = node_cli("recommend", "--model", tmp_path / "run" / "model.pt", "--data", data_dir,
                        "--state-dir", state, "--k", 5, "--out", out)
        assert done.returncode == 0, done.stderr
        frame = read_result(out)
        assert len(frame) == 120 * 5 and frame["user"].nunique() == 120
        assert np.array_equal(frame["rank"].astype(int).to_numpy()[:5], np.arange(1, 6))
        assert (out.stat().st_mode & 0o777) == 0o600
    # `fedrec serve` answers from the same model, in a process that cannot import the `full` packages
    listed = read_result(tmp_path / "top.csv")
    user = str(listed["user"].iloc[0])
    model = str(tmp_path / "run" / "model.pt")
    with serving([sys.executable, "-c", WITHOUT_FULL, "serve", "--model", model, "--data", str(data_dir),
                  "--state-dir", str(state), "--port", "0"], stdout=subprocess.PIPE,
                 stderr=subprocess.STDOUT) as (_, target), RecommenderClient(target) as client:
        served = [item for item, _ in client.recommend(user, 5).items]
    assert served == listed[listed["user"] == user].sort_values("rank")["item"].astype(str).tolist()


def test_a_command_that_needs_the_full_extra_names_it_and_writes_nothing(tmp_path):
    raw = tmp_path / "raw.csv"
    raw.write_text("user,item,timestamp\nu1,i1,1\nu1,i2,2\n")
    done = node_cli("data", "prepare", raw, "--keys", tmp_path / "keys", "--out", tmp_path / "prepared")
    assert done.returncode == 2
    assert "fedrec[full]" in done.stderr and "pandas" in done.stderr
    assert not (tmp_path / "prepared").exists()
