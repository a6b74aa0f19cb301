"""The typed run configuration.

One flat set of kebab-case keys, the same as ``[tool.flwr.app.config]`` in
``pyproject.toml`` (a test keeps the two equal), overridable with
``flwr run --run-config`` or ``fedrec ... --set key=value``. Everything reads the
:class:`RunConfig` built by :func:`RunConfig.from_mapping`, which validates every
key once and names the key on error.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from shared.errors import ConfigError

Scalar = bool | int | float | str


def _key(name: str) -> str:
    return name.replace("_", "-")


def _choice(*options: str) -> dict[str, Any]:
    return {"choices": options}


def _range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> dict[str, Any]:
    return {"range": (lo, hi, lo_open)}


@dataclass(frozen=True)
class RunConfig:
    """Every knob of a fedrec run. Field ``foo_bar`` is run-config key ``foo-bar``."""

    seed: int = 42
    # --- data --------------------------------------------------------------
    data_path: str = "synthetic"  # a prepared dataset dir, or "synthetic" for the embedded generator
    synthetic_users: int = field(default=943, metadata=_range(10))
    synthetic_items: int = field(default=1682, metadata=_range(20))
    partitioner: str = field(default="silos", metadata=_choice("silos", "user-per-node", "dirichlet"))
    num_partitions: int = field(default=2, metadata=_range(1))
    dirichlet_alpha: float = field(default=0.5, metadata=_range(0, lo_open=True))
    # --- model -------------------------------------------------------------
    model: str = field(default="neumf", metadata=_choice("neumf", "gmf", "mlp"))
    task: str = field(default="implicit", metadata=_choice("implicit", "explicit"))
    embedding_dim: int = field(default=32, metadata=_range(1, 1024))
    mlp_layers: str = "64,32,16"
    mlp_activation: str = field(default="sigmoid", metadata=_choice("sigmoid", "relu", "tanh"))  # model=mlp only
    num_negatives: int = field(default=4, metadata=_range(1, 1000))
    item_bias: bool = True  # a global per-item logit offset (under DP it starts at the DP log-popularity)
    # public-metadata init of the item vectors: genres, or auto = genres when the data has them
    item_init: str = field(default="auto", metadata=_choice("auto", "random", "genres"))
    # --- local training ----------------------------------------------------
    optimizer: str = field(default="adam", metadata=_choice("adam", "sgd"))
    lr: float = field(default=0.001, metadata=_range(0, lo_open=True))
    item_lr: float = -1.0  # learning rate of item embedding tables: -1 = lr, 0 = frozen
    bias_lr: float = -1.0  # learning rate of the item-bias table: -1 = lr
    weight_decay: float = field(default=0.0, metadata=_range(0))
    batch_size: int = field(default=256, metadata=_range(1))
    local_epochs: int = field(default=1, metadata=_range(1))
    # --- centralized reference ---------------------------------------------
    epochs: int = field(default=20, metadata=_range(1))
    pretrain_epochs: int = field(default=0, metadata=_range(0))  # neumf: pretrain GMF and MLP towers (NCF)
    # --- federation (coordinator) ------------------------------------------
    num_server_rounds: int = field(default=10, metadata=_range(1))
    fraction_train: float = field(default=1.0, metadata=_range(0, 1, lo_open=True))
    fraction_evaluate: float = field(default=1.0, metadata=_range(0, 1))
    min_nodes: int = field(default=2, metadata=_range(1))
    strategy: str = field(default="fedavg", metadata=_choice("fedavg", "fedprox", "fedadam"))
    proximal_mu: float = field(default=0.01, metadata=_range(0))
    server_lr: float = field(default=0.01, metadata=_range(0, lo_open=True))
    max_update_norm: float = field(default=100.0, metadata=_range(0, lo_open=True))
    round_timeout: float = field(default=3600.0, metadata=_range(0, lo_open=True))
    catalog_path: str = ""  # coordinator in deployment: the federation's catalog.parquet ("" -> data-path's)
    run_dir: str = ""  # "" -> ./runs/<run id> of the ServerApp process
    resume_from: str = ""  # a run directory holding checkpoint.pt
    fail_after_round: int = field(default=0, metadata=_range(0))  # fault injection: crash after this round
    fault_dropout: float = field(default=0.0, metadata=_range(0, 1))  # fault injection: fraction of nodes failing
    fault_mode: str = field(default="crash", metadata=_choice("crash", "late"))  # raise / reply after the deadline
    # robust options, and row-mean for sparse (one-user) updates
    aggregation: str = field(default="mean", metadata=_choice("mean", "median", "trimmed-mean", "row-mean"))
    trim_fraction: float = field(default=0.2, metadata=_range(0, 0.49))  # trimmed-mean: cut from each tail
    norm_bound: float = field(default=0.0, metadata=_range(0))  # clip each node's update to this L2 norm (0: off)
    update_compression: str = field(default="none", metadata=_choice("none", "fp16"))  # node -> coordinator arrays
    secure_aggregation: bool = False  # SecAgg+ (legacy Flower workflow): the coordinator sees only the sum
    secagg_threshold: float = field(default=0.6, metadata=_range(0, 1, lo_open=True))  # share fraction to unmask
    secagg_max_weight: float = field(default=1e6, metadata=_range(1))  # >= any node's num-examples (quantization)
    secagg_max_users: int = field(default=10_000, metadata=_range(1))  # >= any node's units (dp-noise = distributed)
    # --- differential privacy (per node, whole run) ----------------------------
    dp: bool = True  # the main job is private; dp = false for the non-private reference
    privacy_unit: str = field(default="user", metadata=_choice("user", "interaction", "node"))
    target_epsilon: float = field(default=8.0, metadata=_range(0, lo_open=True))
    delta: float = field(default=0.0, metadata=_range(0, 1))  # 0: min(1e-5, 1/(10 n)) for the node's n units
    accountant: str = field(default="prv", metadata=_choice("prv", "rdp"))  # prv: Opacus PRV (tight); rdp: Renyi
    clip_norm: float = field(default=0.1, metadata=_range(0, lo_open=True))  # L2, per unit's gradient (node: update)
    dp_sample_rate: float = field(default=1.0, metadata=_range(0, 1, lo_open=True))  # Poisson rate of units per step
    dp_max_interactions: int = field(default=64, metadata=_range(1))
    dp_chunk_pairs: int = field(default=8192, metadata=_range(1))  # memory bound: scored pairs per physical chunk
    # local-sgd: DP-SGD steps on each node, models averaged; sgd: one noisy clipped-gradient sum per round,
    # the coordinator steps the global part (dp-server-lr, dp-server-momentum)
    # als: DP alternating least squares, user factors solved locally, items from noisy per-item statistics
    dp_mechanism: str = field(default="sgd", metadata=_choice("local-sgd", "sgd", "als"))
    als_l2: float = field(default=1.0, metadata=_range(0, lo_open=True))  # ridge of the user and item solves
    als_unobserved_weight: float = field(default=0.5, metadata=_range(0))  # iALS weight of unobserved items
    # where the noise of sgd releases goes: every node adds it all / the coordinator / shares under SecAgg+
    # (distributed runs its releases over SecAgg+ whatever secure-aggregation says)
    dp_noise: str = field(default="distributed", metadata=_choice("local", "central", "distributed"))
    dp_frequency_share: float = field(default=0.1, metadata=_range(0, 0.9))  # share of the budget: DP item counts
    dp_frequency_cap: int = field(default=50, metadata=_range(1))  # items counted per user in that release
    dp_train_min_count: float = field(default=0.0, metadata=_range(0))  # sgd: train only items with DP count >= this
    # dp-mechanism = sgd: the coordinator's momentum SGD on the mean clipped gradient (sum / (q * DP user count))
    dp_server_lr: float = field(default=20.0, metadata=_range(0, lo_open=True))
    dp_server_momentum: float = field(default=0.9, metadata=_range(0, 0.999))
    user_epochs: int = field(default=1, metadata=_range(0))  # local user-embedding-only passes before each round
    user_lr: float = field(default=0.01, metadata=_range(0, lo_open=True))
    # evaluation first refits a copy of the node's user rows to the received global part (FedRecon's evaluation)
    eval_user_epochs: int = field(default=0, metadata=_range(0))
    # --- node ----------------------------------------------------------------
    node_state_dir: str = ""  # base dir for per-node state ("" = node_config state-dir, else the cache dir)
    client_threads: int = field(default=1, metadata=_range(1, 64))
    # --- evaluation ----------------------------------------------------------
    top_k: int = field(default=10, metadata=_range(1, 1000))
    eval_every: int = field(default=1, metadata=_range(1))
    patience: int = field(default=5, metadata=_range(0))
    full_rank: bool = True

    # ------------------------------------------------------------------------
    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if "choices" in f.metadata and value not in f.metadata["choices"]:
                raise ConfigError(_key(f.name), f"{value!r} is not one of {', '.join(f.metadata['choices'])}")
            if isinstance(value, float) and not math.isfinite(value):  # every float knob, ranged or not
                raise ConfigError(_key(f.name), f"{value!r} is not a finite number")
            if "range" in f.metadata:
                lo, hi, lo_open = f.metadata["range"]
                if lo is not None and (value < lo or (lo_open and value == lo)):
                    raise ConfigError(_key(f.name), f"{value!r} must be {'>' if lo_open else '>='} {lo}")
                if hi is not None and value > hi:
                    raise ConfigError(_key(f.name), f"{value!r} must be <= {hi}")
        _ = self.hidden_layers  # validates mlp-layers
        robust = self.aggregation != "mean" or self.norm_bound > 0
        if robust and self.secure_aggregation:
            raise ConfigError("aggregation", "robust aggregation and norm-bound need individual updates; "
                                             "secure aggregation reveals only their sum")
        if self.aggregation != "mean" and (self.strategy != "fedavg" or (self.dp and self.privacy_unit == "node")):
            raise ConfigError("aggregation", f"{self.aggregation!r} replaces FedAvg's mean: needs strategy = fedavg "
                                             "and no node-level DP")
        if self.dp and self.dp_mechanism == "local-sgd" and self.dp_noise != "local":
            raise ConfigError("dp-noise", "dp-mechanism = local-sgd adds the noise inside each node's local steps; "
                                          "central or distributed noise needs dp-mechanism = sgd")
        if self.dp and self.dp_mechanism == "als" and (self.model != "gmf" or self.item_bias):
            raise ConfigError("dp-mechanism", "als trains the factors of gmf without item bias (model = gmf, "
                                              "item-bias = false)")
        if self.dp and self.dp_mechanism in ("sgd", "als") and self.dp_frequency_share <= 0:
            raise ConfigError("dp-frequency-share", f"dp-mechanism = {self.dp_mechanism} starts from the DP item "
                                                    "counts and user count of the frequency release: set a share "
                                                    "> 0 (e.g. 0.1)")
        if self.dp and self.dp_mechanism in ("sgd", "als") and self.privacy_unit == "node":
            raise ConfigError("dp-mechanism", "privacy-unit = node is DP-FedAvg; dp-mechanism = sgd is per user "
                                              "or interaction")
        if self.aggregation == "row-mean" and (self.dp or self.update_compression != "none"):
            raise ConfigError("aggregation", "row-mean needs the rows a node left unchanged to come back exactly: "
                                             "no DP noise and no update compression")

    @property
    def hidden_layers(self) -> tuple[int, ...]:
        """``mlp-layers`` parsed: comma-separated positive ints, e.g. ``"64,32,16"``."""
        try:
            layers = tuple(int(x) for x in self.mlp_layers.split(",") if x.strip())
        except ValueError:
            raise ConfigError("mlp-layers", f"{self.mlp_layers!r} is not a comma-separated list of ints") from None
        if not layers or any(n <= 0 for n in layers):
            raise ConfigError("mlp-layers", f"{self.mlp_layers!r} needs one or more positive layer sizes")
        return layers

    # ------------------------------------------------------------------------
    @classmethod
    def keys(cls) -> dict[str, dataclasses.Field]:
        """Run-config key -> dataclass field."""
        return {_key(f.name): f for f in fields(cls)}

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], *, strict: bool = True) -> RunConfig:
        """Validate a kebab-case mapping (e.g. Flower's ``context.run_config``).

        Unknown keys raise :class:`ConfigError` when ``strict`` (Flower adds none
        of its own to run_config, so a stray key is a typo). Missing keys take
        the defaults.
        """
        known = cls.keys()
        kwargs: dict[str, Any] = {}
        for key, raw in mapping.items():
            if key not in known:
                if strict:
                    raise ConfigError(key, f"unknown key (known: {', '.join(sorted(known))})")
                continue
            f = known[key]
            kwargs[f.name] = _coerce(key, raw, type(f.default))
        return cls(**kwargs)

    def with_overrides(self, overrides: Mapping[str, Any]) -> RunConfig:
        """A copy with kebab-case ``overrides`` applied and validated."""
        merged = self.to_flower_config()
        merged.update(overrides)
        return RunConfig.from_mapping(merged)

    def to_flower_config(self) -> dict[str, Scalar]:
        """The kebab-case mapping (what ``[tool.flwr.app.config]`` holds)."""
        return {_key(f.name): getattr(self, f.name) for f in fields(self)}


def _coerce(key: str, raw: Any, kind: type) -> Scalar:
    """Convert a TOML/CLI value to the field's type, strictly."""
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "false"):
            return raw.lower() == "true"
        raise ConfigError(key, f"{raw!r} is not a boolean (true/false)")
    if kind is int:
        if isinstance(raw, bool):
            raise ConfigError(key, f"{raw!r} is not an integer")
        if isinstance(raw, int):
            return raw
        if isinstance(raw, float) and raw.is_integer():
            return int(raw)
        if isinstance(raw, str):
            try:
                return int(raw.strip())
            except ValueError:
                pass
        raise ConfigError(key, f"{raw!r} is not an integer")
    if kind is float:
        if isinstance(raw, bool):
            raise ConfigError(key, f"{raw!r} is not a number")
        if isinstance(raw, int | float):
            return float(raw)
        if isinstance(raw, str):
            try:
                return float(raw.strip())
            except ValueError:
                pass
        raise ConfigError(key, f"{raw!r} is not a number")
    if not isinstance(raw, str):
        raise ConfigError(key, f"{raw!r} is not a string")
    return raw


def parse_assignments(assignments: list[str]) -> dict[str, str]:
    """Parse ``["key=value", ...]`` (CLI ``--set``); values stay strings for coercion."""
    out: dict[str, str] = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(item, "expected key=value")
        out[key.strip()] = value.strip().strip('"')
    return out


def load_toml_config(path: str | Path) -> dict[str, Any]:
    """Read a preset TOML file: flat ``key = value`` pairs (as for ``flwr run --run-config``)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(path), "config file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from None
    for key, value in data.items():
        if isinstance(value, dict | list):
            raise ConfigError(key, f"in {path}: nested tables and arrays are not run-config values")
    return data
