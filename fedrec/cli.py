"""`fedrec`: one command, subcommands grouped by user job.

Every user-caused error is a :class:`shared.errors.FedrecError`: it is printed
as one clear line on stderr and the process exits with status 2, no traceback.
"""

from __future__ import annotations

import os
import sys

import typer
from rich.console import Console

from fedrec import cli_audit, cli_certs, cli_data, cli_deploy, cli_recommend, cli_train
from shared.errors import FedrecError

app = typer.Typer(
    name="fedrec",
    help="Privacy-preserving federated recommender: prepare data, train, simulate, recommend, audit.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(cli_data.app, name="data", help="Data owner: keys, prepare raw logs, reveal results.")
app.add_typer(cli_certs.app, name="certs", help="Deployment: TLS CA, SuperLink certificate, SuperNode auth keys.")
app.add_typer(cli_deploy.app, name="deploy", help="Deployment: node_config files, demo data.")
cli_train.register(app)
cli_audit.register(app)
cli_recommend.register(app)

_err = Console(stderr=True)
# Packages of the `full` extra: the node install (`pip install fedrec[node]`) leaves them out, and the node
# path (ClientApp, `deploy node-config`, `recommend`, `serve`) never imports them.
FULL_ONLY = {"pandas": "data preparation and reveal", "matplotlib": "plots",
             "dp_accounting": "the auditor's independent epsilon recomputation"}


def main() -> None:
    """Console entry point."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    try:
        app()
    except FedrecError as exc:
        _err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except ModuleNotFoundError as exc:
        if exc.name not in FULL_ONLY:
            raise
        _err.print(f"[bold red]error:[/] this command needs {exc.name} ({FULL_ONLY[exc.name]}), which the node "
                   "install leaves out: pip install 'fedrec\\[full]'", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        _err.print("[bold red]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
