"""The ServerApp of simulations: the production one plus coordinator fault injection (``sim.fail-after-round``).

:func:`federated_run` is :func:`server.app.federated_run` with an after-round hook that raises
:class:`InjectedFault` once the configured round is checkpointed, as a crashed coordinator would stop
(reliability runs and tests resume it with ``federation.resume-from``).
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.app import federated_run as production_run
from server.loop import FederatedRun
from shared.config import RunConfig


class InjectedFault(RuntimeError):
    """Raised by ``sim.fail-after-round`` to simulate a coordinator crash."""


def federated_run(cfg: RunConfig, grid: Grid, run_id: int) -> FederatedRun:
    """The configured run, crashing after ``sim.fail-after-round`` (if set)."""
    run = production_run(cfg, grid, run_id)
    if cfg.sim.fail_after_round:
        def crash(rnd: int) -> None:
            if rnd == cfg.sim.fail_after_round:
                raise InjectedFault(f"fault injection: coordinator stops after round {rnd}")

        run.after_round.append(crash)
    return run


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    federated_run(RunConfig.from_mapping(context.run_config), grid, context.run_id).execute()
