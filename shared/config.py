"""The typed run configuration: grouped keys, one validation, documented fields.

The run configuration is ``[tool.flwr.app.config]`` in ``pyproject.toml``, overridable with
``flwr run --run-config`` or ``fedrec ... --set key=value``. Keys are grouped with dots in
Flower's convention (``data.*``, ``model.*``, ``train.*``, ``dp.*``, ``federation.*``,
``eval.*``, ``transport.*``, and ``sim.*`` for what only simulations read) and validated once,
by :meth:`RunConfig.from_mapping`, into nested frozen dataclasses: key ``dp.target-epsilon`` is
``cfg.dp.target_epsilon``. Every field documents its meaning and unit in its metadata, from
which ``docs/reference/configuration.md`` is generated (``python -m fedrec.docs``), so the
reference cannot drift from the code. One sentinel convention: ``0`` or ``""`` means "not set"
and the documented default applies. Cross-key rules live in one function, :func:`check_rules`.

The flat keys of earlier versions (``target-epsilon``, ``num-server-rounds``, ...) still load,
each mapped to its new name with a one-time deprecation warning (:data:`OLD_KEYS`).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from shared.errors import ConfigError

Scalar = bool | int | float | str


def opt(default: Scalar, help: str, *, unit: str = "", choices: tuple[str, ...] = (), lo: float | None = None,
        hi: float | None = None, lo_open: bool = False) -> Any:
    """A documented, validated config field."""
    return field(default=default, metadata={"help": help, "unit": unit, "choices": choices,
                                            "range": (lo, hi, lo_open)})


def _key(name: str) -> str:
    return name.replace("_", "-")


@dataclass(frozen=True)
class DataConfig:
    """``data.*``: which interactions, and how a simulation splits them over nodes."""

    path: str = opt("synthetic", "A prepared dataset directory, `movielens:ml-100k` / `movielens:ml-1m` (under "
                    "$FEDREC_DATA_DIR), or `synthetic` for the embedded generator.")
    synthetic_users: int = opt(943, "Users of the synthetic data.", unit="users", lo=10)
    synthetic_items: int = opt(1682, "Items of the synthetic data.", unit="items", lo=20)
    partitioner: str = opt("silos", "How a simulation splits users over nodes: equal random silos, one user per "
                           "node (cross-device), or non-IID taste clusters.",
                           choices=("silos", "user-per-node", "dirichlet"))
    partitions: int = opt(2, "Simulated nodes (user-per-node: set to the number of users by `fedrec simulate`).",
                          unit="nodes", lo=1)
    dirichlet_alpha: float = opt(0.5, "Dirichlet concentration of the non-IID split (small = skewed).",
                                 lo=0, lo_open=True)
    catalog_path: str = opt("", "Coordinator in a deployment: the federation's catalog.parquet. Not set: the "
                            "catalog of `data.path`.")


@dataclass(frozen=True)
class ModelConfig:
    """``model.*``: the recommender."""

    name: str = opt("neumf", "NeuMF (GMF + MLP towers), GMF, or the sigmoid MLP.", choices=("neumf", "gmf", "mlp"))
    task: str = opt("implicit", "Implicit feedback (BCE on sampled negatives) or explicit ratings (MSE).",
                    choices=("implicit", "explicit"))
    embedding_dim: int = opt(32, "Size of every user and item vector.", unit="dimensions", lo=1, hi=1024)
    mlp_layers: str = opt("64,32,16", "Hidden layer widths of the MLP tower, comma-separated.", unit="units")
    mlp_activation: str = opt("sigmoid", "Activation of `model.name = mlp`.", choices=("sigmoid", "relu", "tanh"))
    item_bias: bool = opt(True, "A global per-item logit offset (under DP it starts at the DP log-popularity).")
    personalization: str = opt(
        "none", "`dual` (PFedRec): each node also keeps its own offset of the shared model from its last local "
        "training (item rows it touched, dense layers) and evaluates and serves with global + offset; never sent.",
        choices=("none", "dual"))
    item_init: str = opt("auto", "Item vectors from public item tags (MovieLens: genres and release period), "
                         "random, or `auto` (the tags when the data has them).", choices=("auto", "random", "genres"))


@dataclass(frozen=True)
class TrainConfig:
    """``train.*``: local training on a node (and the centralized reference)."""

    optimizer: str = opt("adam", "Local optimizer (SGD has momentum 0.9).", choices=("adam", "sgd"))
    lr: float = opt(0.001, "Learning rate of local training.", lo=0, lo_open=True)
    item_lr: float = opt(0.0, "Learning rate of the item tables. Not set (0): `train.lr`.", lo=0)
    freeze_items: bool = opt(False, "Keep the item tables fixed (neither trained nor, under DP, noised).")
    bias_lr: float = opt(0.0, "Learning rate of the item-bias table. Not set (0): `train.lr`.", lo=0)
    weight_decay: float = opt(0.0, "L2 weight decay.", lo=0)
    lr_decay: float = opt(1.0, "Round-wise decay: round r trains at `lr_decay^(r-1)` times every local learning "
                          "rate (not the user passes).", lo=0, lo_open=True, hi=1.0)
    batch_size: int = opt(256, "Training interactions per step (non-private training).", unit="interactions",
                          lo=1)
    local_epochs: int = opt(1, "Passes over the node's interactions per round.", unit="epochs", lo=1)
    negatives: int = opt(4, "Uniform negatives sampled per positive.", unit="items", lo=1, hi=1000)
    negative_pool: str = opt(
        "train", "Where non-private training draws negatives: items outside the user's training set, or "
        "`unseen`: also never the user's validation/test items, the protocol of PFedRec's and GPFedRec's "
        "code. `unseen` tells training the held-out items; use it only to compare with those papers.",
        choices=("train", "unseen"))
    negative_candidates: int = opt(
        0, "Non-private training: draw each round's negatives from this many distinct items, drawn once per "
        "round per node (per epoch in `fedrec train`). Not set (0): the whole catalog. Bounds the item rows a "
        "round touches, and so a sparse update, to the node's positives plus these candidates.",
        unit="items", lo=0)
    user_epochs: int = opt(1, "Noise-free local passes over the user rows before each round's training.",
                           unit="epochs", lo=0)
    user_lr: float = opt(0.01, "Learning rate of those user passes.", lo=0, lo_open=True)
    epochs: int = opt(20, "`fedrec train` (centralized reference): epochs.", unit="epochs", lo=1)
    pretrain_epochs: int = opt(0, "`fedrec train`, NeuMF: NCF pretraining epochs of the GMF and MLP towers.",
                               unit="epochs", lo=0)


@dataclass(frozen=True)
class FederationConfig:
    """``federation.*``: the coordinator's rounds, sampling, aggregation and run directory."""

    rounds: int = opt(10, "Training rounds (under DP, at most: the DP recipe may choose fewer).", unit="rounds",
                      lo=1)
    fraction_train: float = opt(1.0, "Fraction of the available nodes sampled to train each round.",
                                lo=0, hi=1, lo_open=True)
    fraction_evaluate: float = opt(1.0, "Fraction of the nodes that evaluate each evaluation round.", lo=0, hi=1)
    min_nodes: int = opt(2, "Nodes that must be connected before a round starts.", unit="nodes", lo=1)
    strategy: str = opt("fedavg", "FedAvg, FedProx or FedAdam.", choices=("fedavg", "fedprox", "fedadam"))
    proximal_mu: float = opt(0.01, "FedProx's proximal weight.", lo=0)
    server_lr: float = opt(0.01, "FedAdam's server learning rate.", lo=0, lo_open=True)
    aggregation: str = opt("mean", "Mean, robust coordinate-wise median / trimmed mean, or row-mean (each item "
                           "row over the nodes that changed it).",
                           choices=("mean", "median", "trimmed-mean", "row-mean"))
    trim_fraction: float = opt(0.2, "Trimmed mean: fraction cut from each tail.", lo=0, hi=0.49)
    norm_bound: float = opt(0.0, "Scale every accepted update down to this L2 norm. Not set (0): off.",
                            unit="L2 norm of a node's update", lo=0)
    max_update_norm: float = opt(100.0, "Reject a reply whose update is longer.", unit="L2 norm of a node's "
                                 "update", lo=0, lo_open=True)
    round_timeout: float = opt(3600.0, "How long the coordinator waits for a round's replies.", unit="seconds",
                               lo=0, lo_open=True)
    run_dir: str = opt("", "Coordinator: where the run directory goes. Not set: ./runs/run-<id>.")
    resume_from: str = opt("", "Coordinator: a run directory whose checkpoint the run continues from.")


@dataclass(frozen=True)
class TransportConfig:
    """``transport.*``: what travels between node and coordinator."""

    secure_aggregation: bool = opt(False, "SecAgg+: the coordinator learns only the sum of the updates.")
    secagg_threshold: float = opt(0.6, "SecAgg+: fraction of the sampled nodes needed to reveal a sum (and, under "
                                  "distributed noise, to carry the planned noise).", lo=0, hi=1, lo_open=True)
    secagg_max_weight: float = opt(1e6, "SecAgg+ model averaging: at least any node's number of examples.",
                                   unit="examples", lo=1)
    secagg_max_users: int = opt(10_000, "SecAgg+ releases: at least any node's number of privacy units.",
                                unit="units", lo=1)
    compression: str = opt("none", "float16 replies halve the bytes up.", choices=("none", "fp16"))
    item_updates: str = opt("dense", "sparse: a node sends only the rows of each table its training changed (row "
                            "indices + values; the coordinator rebuilds the exact update). Not with DP or SecAgg+.",
                            choices=("dense", "sparse"))


@dataclass(frozen=True)
class DPConfig:
    """``dp.*``: differential privacy of every node, for the whole run."""

    enabled: bool = opt(True, "Train with DP (the main job is private; false for the non-private reference).")
    unit: str = opt("user", "Who is protected: a user of a node, one interaction, or a whole node (DP-FedAvg).",
                    choices=("user", "interaction", "node"))
    target_epsilon: float = opt(8.0, "Budget per node for the whole run.", unit="epsilon", lo=0, lo_open=True)
    delta: float = opt(0.0, "Not set (0): min(1e-5, 1/(10 n)) for the node's n units; never above 1/n.",
                       unit="delta", lo=0, hi=1)
    accountant: str = opt("prv", "PRV (Opacus; tight) or Renyi DP.", choices=("prv", "rdp"))
    mechanism: str = opt("sgd", "sgd: one noisy clipped-gradient sum per round, stepped by the coordinator; "
                         "local-sgd: DP-SGD steps on each node, models averaged; als: DP alternating least "
                         "squares.", choices=("sgd", "local-sgd", "als"))
    noise: str = opt("distributed", "Where the noise goes: every node adds it all (local), the coordinator adds "
                     "it (central; trusted), or shares under SecAgg+ (distributed; trusts SecAgg+ and honest "
                     "nodes).", choices=("local", "central", "distributed"))
    clip_norm: float = opt(0.1, "Per-unit clipping of the gradient (node unit: of the node's update).",
                           unit="L2 norm", lo=0, lo_open=True)
    sample_rate: float = opt(1.0, "Poisson probability of each unit per step; rounded to 1/ceil(n / "
                             "round(q n)) so that Opacus's loader uses it exactly (the ledger records the "
                             "rate used).", unit="probability", lo=0, hi=1, lo_open=True)
    max_interactions: int = opt(64, "A user unit's interactions per step (drawn at random; ALS: items per user "
                                "in a pass).", unit="interactions", lo=1)
    frequency_share: float = opt(0.1, "Share of the budget on the DP item counts (sgd, als).", lo=0, hi=0.9)
    frequency_cap: int = opt(50, "Items counted per user in the DP item counts.", unit="items", lo=1)
    train_min_count: float = opt(0.0, "Train only items with at least this DP count (others keep their public "
                                 "vectors). Not set (0): all.", unit="users", lo=0)
    floor_below: float = opt(20_000.0, "sgd, als: with rho = epsilon x q x (DP user count) below this, no model is "
                             "trained and the floor model (public tag vectors, DP item biases) is released; above "
                             "it, round(rho / 1000) training rounds (at most `federation.rounds`). Public: costs no "
                             "budget.", unit="rho", lo=0)
    floor_vote_share: float = opt(0.1, "sgd, als: when the floor model is released, share of the budget on a DP "
                                  "validation vote that picks how far its locally fitted user rows count "
                                  "(shared.floor_vote; 0 picks nothing: the rows count fully).", lo=0, hi=0.5)
    floor_vote_margin: float = opt(3.0, "sgd, als: the floor vote serves a user weight only if its noisy lead over DP "
                                   "popularity exceeds this many of the vote's noise stds (else popularity: the "
                                   "biases alone). Public, post-processing: costs no budget.", unit="noise std", lo=0)
    row_threshold: float = opt(0.0, "sgd: DP row selection (DP-AdaFEST): each round only item rows whose noisy "
                               "count of sampled users exceeds this many count-noise stds get the gradient and its "
                               "noise; others are left as they are. Not set (0): every row (dense noise).",
                               unit="noise std", lo=0)
    row_selection_share: float = opt(0.1, "sgd with dp.row-threshold: share of each round's privacy (1/z^2) spent "
                                     "on the row counts.", lo=0, hi=0.9, lo_open=True)
    server_lr: float = opt(20.0, "sgd: the coordinator's momentum SGD rate on the mean clipped gradient.",
                           lo=0, lo_open=True)
    server_momentum: float = opt(0.9, "sgd: its momentum.", lo=0, hi=0.999)
    als_l2: float = opt(1.0, "als: ridge of the user and item solves.", lo=0, lo_open=True)
    als_unobserved_weight: float = opt(0.5, "als: iALS weight of unobserved items.", lo=0)
    als_floor_below: float = opt(100_000.0, "als: `dp.floor-below` for DP-ALS, with rho = epsilon x (DP user "
                                 "count) (a pass uses every user): below it the floor model is released instead of "
                                 "the passes. Measured on ML-1M (6,040 users): the passes stay below the floor model "
                                 "up to epsilon 8 (rho 48,000). Public: costs no budget.", unit="rho", lo=0)


@dataclass(frozen=True)
class EvalConfig:
    """``eval.*``: federated evaluation and model selection."""

    top_k: int = opt(10, "List length of HR@k and NDCG@k (and of recommendations).", unit="items", lo=1, hi=1000)
    every: int = opt(1, "Evaluate every this many rounds (and after the last).", unit="rounds", lo=1)
    patience: int = opt(5, "Stop after this many evaluations without a better validation HR (never under DP). "
                        "Not set (0): no early stopping.", unit="evaluations", lo=0)
    full_rank: bool = opt(True, "Rank against every unseen item each evaluation (else only at the end).")
    user_epochs: int = opt(0, "Refit a copy of the user rows to the received global part before evaluating and "
                           "serving (FedRecon). Not set (0): off.", unit="epochs", lo=0)


@dataclass(frozen=True)
class SimConfig:
    """``sim.*``: read by the simulation layer only (production nodes and coordinator never act on it)."""

    node_state_dir: str = opt("", "Base directory of the simulated nodes' state. Not set: the cache directory.")
    client_threads: int = opt(1, "PyTorch threads of each simulated node.", unit="threads", lo=1, hi=64)
    chunk_pairs: int = opt(8192, "Memory bound of a DP step: scored pairs per physical chunk (the result is "
                           "exactly the same).", unit="pairs", lo=1)
    fault_dropout: float = opt(0.0, "Fault injection: fraction of the nodes that fail each round.", lo=0, hi=1)
    fault_mode: str = opt("crash", "Fault injection: fail before training, or reply after the deadline.",
                          choices=("crash", "late"))
    fail_after_round: int = opt(0, "Fault injection: the coordinator crashes after this round. Not set (0): never.",
                                unit="round", lo=0)


GROUPS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "federation": FederationConfig,
          "transport": TransportConfig, "dp": DPConfig, "eval": EvalConfig, "sim": SimConfig}

# The flat keys of earlier versions -> their grouped names (loaded with a one-time deprecation warning): per
# group, the old keys; "old=new" where the name in the group differs from the old key.
_OLD_KEYS_BY_GROUP = {
    "data": "data-path=path synthetic-users synthetic-items partitioner num-partitions=partitions dirichlet-alpha "
            "catalog-path",
    "model": "model=name task embedding-dim mlp-layers mlp-activation item-bias item-init",
    "train": "optimizer lr item-lr bias-lr weight-decay batch-size local-epochs num-negatives=negatives user-epochs "
             "user-lr epochs pretrain-epochs",
    "federation": "num-server-rounds=rounds fraction-train fraction-evaluate min-nodes strategy proximal-mu server-lr "
                  "max-update-norm round-timeout run-dir resume-from aggregation trim-fraction norm-bound",
    "transport": "update-compression=compression secure-aggregation secagg-threshold secagg-max-weight "
                 "secagg-max-users",
    "dp": "dp=enabled privacy-unit=unit target-epsilon delta accountant clip-norm dp-sample-rate=sample-rate "
          "dp-max-interactions=max-interactions dp-mechanism=mechanism dp-noise=noise "
          "dp-frequency-share=frequency-share dp-frequency-cap=frequency-cap dp-train-min-count=train-min-count "
          "dp-server-lr=server-lr dp-server-momentum=server-momentum als-l2 als-unobserved-weight",
    "eval": "top-k eval-every=every patience full-rank eval-user-epochs=user-epochs",
    "sim": "node-state-dir client-threads dp-chunk-pairs=chunk-pairs fault-dropout fault-mode fail-after-round",
}
OLD_KEYS = {old: f"{group}.{new or old}" for group, keys in _OLD_KEYS_BY_GROUP.items()
            for old, _, new in (key.partition("=") for key in keys.split())}


def _old_value(old: str, raw: Any) -> list[tuple[str, Any]]:
    """An old flat key's value in the new keys (the old -1 / 0 learning-rate sentinels)."""
    new = OLD_KEYS[old]
    if old in ("item-lr", "bias-lr"):
        value = float(_coerce(old, raw, float))
        if old == "item-lr" and value == 0:  # old: 0 froze the item tables
            return [("train.freeze-items", True)]
        return [(new, max(value, 0.0))]  # old: -1 meant "= lr", the new "not set" is 0
    return [(new, raw)]


_VALIDATED: dict[tuple, RunConfig] = {}  # validated run configs by their exact raw mapping


@dataclass(frozen=True)
class RunConfig:
    """Every knob of a fedrec run, grouped: ``cfg.dp.target_epsilon`` is key ``dp.target-epsilon``."""

    seed: int = opt(42, "Seed of everything that is not privacy randomness (init, partitions, non-DP batches).")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)
    dp: DPConfig = field(default_factory=DPConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sim: SimConfig = field(default_factory=SimConfig)

    def __post_init__(self) -> None:
        for name, group in GROUPS.items():
            for f in fields(group):
                _check_field(f"{name}.{_key(f.name)}", f, getattr(getattr(self, name), f.name))
        check_rules(self)

    # --- keys ------------------------------------------------------------------------------------------
    @classmethod
    def keys(cls) -> dict[str, tuple[str | None, dataclasses.Field]]:
        """Every run-config key -> (group, dataclass field)."""
        out: dict[str, tuple[str | None, dataclasses.Field]] = {"seed": (None, next(f for f in fields(cls)
                                                                                   if f.name == "seed"))}
        for name, group in GROUPS.items():
            out |= {f"{name}.{_key(f.name)}": (name, f) for f in fields(group)}
        return out

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], *, strict: bool = True) -> RunConfig:
        """Validate a run-config mapping (e.g. Flower's ``context.run_config``); errors name the key.

        Unknown keys raise :class:`ConfigError` when ``strict`` (Flower adds none of its own); old flat keys map
        to their new names with a deprecation warning; missing keys take the defaults.
        """
        try:  # a node validates the same run config on every message: reuse the typed result
            memo = (strict, frozenset((k, type(v), v) for k, v in mapping.items()))
            if memo in _VALIDATED:
                return _VALIDATED[memo]
        except TypeError:  # an unhashable value: validate (and report) it as usual
            memo = None
        known = cls.keys()
        values: dict[str, Any] = {}
        for key, raw in mapping.items():
            if key in OLD_KEYS:
                # every time (Python's filters show it once per call site; under pytest every use is an error)
                warnings.warn(f"run-config key {key!r} is now {OLD_KEYS[key]!r}", FutureWarning, stacklevel=2)
                values.update(_old_value(key, raw))
            elif key in known:
                values[key] = raw
            elif strict:
                raise ConfigError(key, f"unknown key (known: {', '.join(sorted(known))})")
        groups: dict[str, dict[str, Any]] = {name: {} for name in GROUPS}
        kwargs: dict[str, Any] = {}
        for key, raw in values.items():
            group, f = known[key]
            value = _coerce(key, raw, type(f.default))
            if group is None:
                kwargs[f.name] = value
            else:
                groups[group][f.name] = value
        try:
            parts = {name: GROUPS[name](**groups[name]) for name in GROUPS}
        except TypeError as exc:  # cannot happen for keys from known; keep the error readable anyway
            raise ConfigError("config", str(exc)) from None
        out = cls(**kwargs, **parts)
        if memo is not None and not any(key in OLD_KEYS for key in mapping):  # old keys warn on every use
            if len(_VALIDATED) >= 64:
                _VALIDATED.clear()
            _VALIDATED[memo] = out
        return out

    def with_overrides(self, overrides: Mapping[str, Any]) -> RunConfig:
        """A copy with ``overrides`` (grouped or old keys) applied and validated."""
        merged: dict[str, Any] = self.to_flower_config()
        for key, value in overrides.items():
            for new, converted in (_old_value(key, value) if key in OLD_KEYS else [(key, value)]):
                merged[new] = converted
        return RunConfig.from_mapping(merged)

    def to_flower_config(self) -> dict[str, Scalar]:
        """The grouped mapping (what ``[tool.flwr.app.config]`` holds)."""
        out: dict[str, Scalar] = {"seed": self.seed}
        for name in GROUPS:
            group = getattr(self, name)
            out |= {f"{name}.{_key(f.name)}": getattr(group, f.name) for f in fields(group)}
        return out

    @property
    def hidden_layers(self) -> tuple[int, ...]:
        return self.model.hidden_layers


def _hidden_layers(self: ModelConfig) -> tuple[int, ...]:
    """``model.mlp-layers`` parsed: comma-separated positive ints, e.g. ``"64,32,16"``."""
    try:
        layers = tuple(int(x) for x in self.mlp_layers.split(",") if x.strip())
    except ValueError:
        raise ConfigError("model.mlp-layers", f"{self.mlp_layers!r} is not a comma-separated list of ints") from None
    if not layers or any(n <= 0 for n in layers):
        raise ConfigError("model.mlp-layers", f"{self.mlp_layers!r} needs one or more positive layer sizes")
    return layers


ModelConfig.hidden_layers = property(_hidden_layers)  # type: ignore[attr-defined]


def _check_field(key: str, f: dataclasses.Field, value: Any) -> None:
    meta = f.metadata
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(key, f"{value!r} is not one of {', '.join(meta['choices'])}")
    if isinstance(value, float) and not math.isfinite(value):  # every float knob, ranged or not
        raise ConfigError(key, f"{value!r} is not a finite number")
    lo, hi, lo_open = meta.get("range", (None, None, False))
    if lo is not None and (value < lo or (lo_open and value == lo)):
        raise ConfigError(key, f"{value!r} must be {'>' if lo_open else '>='} {lo}")
    if hi is not None and value > hi:
        raise ConfigError(key, f"{value!r} must be <= {hi}")


def check_rules(cfg: RunConfig) -> None:
    """Every rule that relates two or more keys, in one place (ConfigError naming the key to change)."""
    _ = cfg.model.hidden_layers  # validates model.mlp-layers
    f, dp, t = cfg.federation, cfg.dp, cfg.transport
    robust = f.aggregation != "mean" or f.norm_bound > 0
    if robust and t.secure_aggregation:
        raise ConfigError("federation.aggregation", "robust aggregation and norm-bound need individual updates; "
                                                    "secure aggregation reveals only their sum")
    if f.aggregation != "mean" and (f.strategy != "fedavg" or (dp.enabled and dp.unit == "node")):
        raise ConfigError("federation.aggregation", f"{f.aggregation!r} replaces FedAvg's mean: needs strategy = "
                                                    "fedavg and no node-level DP")
    if f.aggregation == "row-mean" and (dp.enabled or t.compression != "none"):
        raise ConfigError("federation.aggregation", "row-mean needs the rows a node left unchanged to come back "
                                                    "exactly: no DP noise and no update compression")
    if t.item_updates == "sparse" and t.secure_aggregation:
        raise ConfigError("transport.item-updates", "sparse updates send the rows a node changed: SecAgg+ needs "
                                                    "equal-length dense vectors")
    if t.item_updates == "sparse" and dp.enabled and not (
            dp.mechanism == "sgd" and (dp.row_threshold > 0 or dp.noise == "central")):
        raise ConfigError("transport.item-updates", "under DP, noise moves every row: sparse updates need "
                                                    "dp.mechanism = sgd with DP row selection (dp.row-threshold > 0) "
                                                    "or the coordinator's noise (dp.noise = central)")
    if not dp.enabled:
        return
    tr = cfg.train
    if tr.negative_candidates > 0 or tr.negative_pool != "train":
        key = "train.negative-candidates" if tr.negative_candidates > 0 else "train.negative-pool"
        raise ConfigError(key, "a knob of non-private training: DP samples each user's negatives uniformly from "
                               "the whole catalog (client/privacy/samples.py); unset it or set dp.enabled = false")
    if dp.row_threshold > 0 and (dp.mechanism != "sgd" or dp.noise == "distributed"):
        raise ConfigError("dp.row-threshold", "DP row selection is a step of dp.mechanism = sgd with dp.noise = "
                                              "local or central (SecAgg+ under distributed noise needs dense sums)")
    if dp.mechanism == "local-sgd" and dp.noise != "local":
        raise ConfigError("dp.noise", "dp.mechanism = local-sgd adds the noise inside each node's local steps; "
                                      "central or distributed noise needs dp.mechanism = sgd or als")
    if dp.mechanism == "als" and cfg.model.name != "gmf":
        raise ConfigError("dp.mechanism", "als trains the factors of gmf (model.name = gmf)")
    if dp.mechanism in ("sgd", "als") and dp.frequency_share <= 0:
        raise ConfigError("dp.frequency-share", f"dp.mechanism = {dp.mechanism} starts from the DP item counts and "
                                                "user count of the frequency release: set a share > 0 (e.g. 0.1)")
    if dp.mechanism in ("sgd", "als") and dp.unit == "node":
        raise ConfigError("dp.mechanism", "dp.unit = node is DP-FedAvg (dp.mechanism = local-sgd); sgd and als are "
                                          "per user or interaction")


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
    """Read a preset TOML file: ``key = value`` pairs, grouped keys as dotted names or ``[group]`` tables."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(path), "config file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from None
    out: dict[str, Any] = {}

    def walk(prefix: str, table: dict[str, Any]) -> None:
        for key, value in table.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(f"{name}.", value)
            elif isinstance(value, list):
                raise ConfigError(name, f"in {path}: arrays are not run-config values")
            else:
                out[name] = value

    walk("", data)
    return out
