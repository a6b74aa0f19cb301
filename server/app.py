"""The fedrec ServerApp (Flower message API). Thin: validate config, run the round loop."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.loop import FederatedRun
from shared.config import RunConfig

app = ServerApp()


def federated_run(cfg: RunConfig, grid: Grid, run_id: int) -> FederatedRun:
    """The run the configuration asks for: model averaging or noisy-sum releases, in the clear or with SecAgg+."""
    releases = cfg.dp.enabled and cfg.dp.mechanism in ("sgd", "als")  # noisy-sum releases instead of model averaging
    secure = cfg.transport.secure_aggregation or (releases and cfg.dp.noise == "distributed")
    if releases and cfg.dp.mechanism == "als":
        from server.als import als_run

        return als_run(secure)(cfg, grid, run_id)
    if secure:  # SecAgg+ lives in Flower's legacy stack: isolated in server.secagg
        from server.secagg import SecAggReleases, SecAggRun

        return (SecAggReleases if releases else SecAggRun)(cfg, grid, run_id)
    if releases:
        from server.releases import ReleaseRun

        return ReleaseRun(cfg, grid, run_id)
    return FederatedRun(cfg, grid, run_id)


@app.main()
def main(grid: Grid, context: Context) -> None:
    federated_run(RunConfig.from_mapping(context.run_config), grid, context.run_id).execute()
