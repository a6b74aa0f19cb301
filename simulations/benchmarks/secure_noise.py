"""Cost of the secret noise source per DP step (ChaCha20 CSPRNG vs torch's Mersenne Twister).

    python -m simulations.benchmarks.secure_noise --out FILE.json

Noise for one DP step is one Gaussian per released parameter. Three sources, timed on the
global parts of ML-1M-sized models (3,706 items): ``torch`` (``torch.normal`` on a seeded
``torch.Generator``, what Opacus does without ``secure_mode``: fast, but reproducible by whoever
knows the seed), ``torch-x4`` (Opacus's ``secure_mode`` recipe of four draws / 2 on the same
generator) and ``chacha20-x4`` (fedrec: :class:`shared.secret_random.CSPRNGGaussian`, a ChaCha20
keystream from fresh OS entropy, Box-Muller in float64, four draws / 2). Beside them, one whole
DP-SGD step (ghost clipping, 60 users per Poisson batch on a 604-user node) with fedrec's noise,
so the noise's share of a step is visible. One torch thread; medians of ``--repeats`` runs after a
warm-up pass (allocator effects make a process's first large draws up to 2x slower).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import torch

from shared.config import RunConfig
from shared.models import build_model, global_state
from shared.secret_random import SecretRandomness
from simulations.benchmarks import benchmark_parser, print_table, write_json

N_ITEMS, N_USERS = 3706, 604  # ML-1M catalog; one of 10 silos


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def noise_costs(model: str, repeats: int) -> dict:
    cfg = RunConfig.from_mapping({"model.name": model, "model.item-bias": True})
    shapes = [tuple(t.shape) for t in global_state(build_model(cfg, 1, N_ITEMS)).values()]
    gen = torch.Generator().manual_seed(0)
    secret = SecretRandomness.fresh()

    def torch_once():
        return [torch.normal(0.0, 1.0, s, generator=gen) for s in shapes]

    def torch_x4():
        return [sum(torch.normal(0.0, 1.0, s, generator=gen) for _ in range(4)) / 2 for s in shapes]

    def chacha():
        return [secret.gaussian(s, 1.0) for s in shapes]

    return {"model": model, "parameters": int(sum(np.prod(s) for s in shapes)),
            "torch_ms": _median_ms(torch_once, repeats), "torch_x4_ms": _median_ms(torch_x4, repeats),
            "chacha20_x4_ms": _median_ms(chacha, repeats)}


def dp_step_ms(model: str, repeats: int) -> float:
    """Median wall time of one DP-SGD step (user unit) of a 604-user node, fedrec's noise included."""
    from client.privacy import plan_for, train_private
    from client.trainer import TrainSettings
    from shared.datasets import synthetic_tables
    from shared.interactions import InteractionData

    data = InteractionData.from_tables(synthetic_tables(1, N_USERS, N_ITEMS))
    cfg = RunConfig.from_mapping({"model.name": model, "model.item-bias": True, "dp.enabled": True,
                                  "dp.mechanism": "local-sgd", "dp.noise": "local", "dp.sample-rate": 0.1,
                                  "federation.rounds": 1, "train.user-epochs": 0, "dp.target-epsilon": 8.0})
    plan = plan_for(cfg, data)
    model_ = build_model(cfg, data.n_users, data.n_items)
    times = []
    for _ in range(max(repeats // 10, 2)):
        result, steps = train_private(model_, data, TrainSettings.from_config(cfg), plan, cfg,
                                      randomness=SecretRandomness.fresh())
        times.append(result.seconds / steps)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = benchmark_parser(__doc__, data_dir=False)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for model in ("gmf", "neumf"):
        noise_costs(model, args.repeats)  # warm-up pass: the first large allocations of a process page-fault
    for model in ("gmf", "neumf"):
        row = noise_costs(model, args.repeats)
        row["dp_step_ms"] = dp_step_ms(model, args.repeats)
        row["chacha20_share_of_step"] = row["chacha20_x4_ms"] / row["dp_step_ms"]
        rows.append(row)
    print_table(rows, ["model", "parameters", "torch_ms", "torch_x4_ms", "chacha20_x4_ms", "dp_step_ms",
                       "chacha20_share_of_step"], "noise per DP step (ms, median, one thread)")
    write_json(Path(args.out), {"points": rows})


if __name__ == "__main__":
    main()
