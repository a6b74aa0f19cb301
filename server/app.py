"""The fedrec ServerApp (Flower message API). Thin: validate config, run the round loop."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.loop import FederatedRun
from shared.config import RunConfig

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = RunConfig.from_mapping(context.run_config)
    if cfg.secure_aggregation:  # SecAgg+ lives in Flower's legacy stack: isolated in server.secagg
        from server.secagg import SecAggRun

        SecAggRun(cfg, grid, context.run_id).execute()
        return
    FederatedRun(cfg, grid, context.run_id).execute()
