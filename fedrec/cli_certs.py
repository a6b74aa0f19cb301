"""`fedrec certs ...`: the federation's TLS CA, the SuperLink certificate, SuperNode auth keys."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from deploy.certs import CertPaths, create_ca_and_server, create_node_keys, describe, issue_client_cert

app = typer.Typer(no_args_is_help=True)
console = Console(soft_wrap=True)  # paths stay on one line (copy-paste)

OutOption = Annotated[Path, typer.Option("--out", help="Certificate directory (created 0700; files 0600).")]
NodeOption = Annotated[list[str] | None, typer.Option("--node", help="SuperNode name (repeatable): an EC P-384 "
                                                                     "OpenSSH key pair for SuperNode auth.")]


@app.command()
def create(
    out: OutOption,
    host: Annotated[list[str] | None, typer.Option(help="SuperLink address for the certificate's SANs "
                                                        "(IP or DNS name, repeatable).")] = None,
    node: NodeOption = None,
    days: Annotated[int, typer.Option(help="Validity of the SuperLink certificate (the CA: 10x).")] = 365,
    force: Annotated[bool, typer.Option(help="Replace existing files.")] = False,
) -> None:
    """Create a CA, a SuperLink certificate and (optionally) SuperNode keys."""
    paths = CertPaths(out)
    hosts = host or ["127.0.0.1", "localhost"]
    nodes = node or []
    create_ca_and_server(paths, hosts, days=days, force=force)
    pubs = create_node_keys(paths, nodes, force=force) if nodes else []
    info = describe(paths)
    console.print(f"CA          {paths.ca_cert}  (keep {paths.ca_key.name} offline)\n"
                  f"SuperLink   {paths.server_cert}, {paths.server_key}  SANs: {info['sans']}; "
                  f"expires {info['expires']}")
    for pub in pubs:
        console.print(f"SuperNode   {pub.with_suffix('')} (+ .pub to register)")


@app.command("node")
def node_cmd(
    names: Annotated[list[str], typer.Argument(help="SuperNode name(s).")],
    out: OutOption,
    force: Annotated[bool, typer.Option(help="Replace existing keys.")] = False,
) -> None:
    """Add SuperNode authentication key pairs to a certificate directory."""
    for pub in create_node_keys(CertPaths(out), names, force=force):
        console.print(f"SuperNode   {pub.with_suffix('')} (register {pub} with `flwr supernode register`)")


@app.command("client")
def client_cmd(
    names: Annotated[list[str], typer.Argument(help="Client name(s) (the certificate's CN).")],
    out: OutOption,
    days: Annotated[int, typer.Option(help="Validity of the client certificate.")] = 365,
    force: Annotated[bool, typer.Option(help="Replace existing files.")] = False,
) -> None:
    """Issue client certificates (clientAuth) for `fedrec serve --client-ca`, signed by the federation CA."""
    for name in names:
        cert, key = issue_client_cert(CertPaths(out), name, days=days, force=force)
        console.print(f"client      {cert}, {key}")
