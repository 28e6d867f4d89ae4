"""``stune cluster ...``: start, join, inspect and stop Ray on this machine.

Mounted by the main CLI with ``app.add_typer(cluster.cli.app, name="cluster")``;
also runs alone as ``python -m cluster.cli``.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Optional

import typer

from . import local
from .auth import client_auth_env
from .errors import ClusterError

app = typer.Typer(
    help=(
        "Run sweeps on more than one machine: start a Ray head (`up`), add nodes (`join`), "
        "look (`status`), stop what was started here (`down`). For GPU clusters on AWS, "
        "Kubernetes or SLURM see the configs in cluster/configs/."
    ),
    no_args_is_help=True,
    add_completion=False,
)


def _fail(e: Exception) -> None:
    typer.echo(f"error: {e}", err=True)
    raise typer.Exit(2)


@app.command()
def up(
    multi_node: bool = typer.Option(
        False, "--multi-node", help="Listen on all interfaces so other machines can join (token auth required)."
    ),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", metavar="N", min=0, help="CPUs this node offers (default: all)."),
    num_gpus: Optional[int] = typer.Option(None, "--num-gpus", metavar="N", min=0, help="GPUs this node offers (default: all)."),
    port: int = typer.Option(local.DEFAULT_PORT, "--port", metavar="PORT", min=0, max=65535, help="GCS port of the head (0: any free)."),
) -> None:
    """Start a Ray head on this machine (single-node and loopback-only unless --multi-node)."""
    try:
        info = local.start_head(multi_node=multi_node, num_cpus=num_cpus, num_gpus=num_gpus, port=port)
    except ClusterError as e:
        _fail(e)
    addr = info.address
    if multi_node:
        typer.echo(
            f"Ray head started at {addr}, listening on all interfaces; token authentication is required."
        )
    else:
        typer.echo(f"Ray head started at {addr}, listening on 127.0.0.1 only (single node).")
    if info.token_path is not None:
        made = " (created now)" if info.token_created else ""
        typer.echo(f"Token: {info.token_path}{made}" + (" - copy it to every machine that joins." if multi_node else ""))
    else:
        typer.echo("Token authentication is off (RAY_AUTH_MODE is set to disable it).")
    typer.echo("Next:")
    typer.echo(f"  stune sweep CONFIG --address {addr}")
    if multi_node:
        typer.echo(f"  stune cluster join {addr}        # on each worker machine")
    else:
        typer.echo("  (other machines cannot join; for that: stune cluster down && stune cluster up --multi-node)")
    typer.echo("  stune cluster status")
    typer.echo("  stune cluster down")


@app.command()
def join(
    address: str = typer.Argument(..., metavar="ADDRESS", help="The head's address HOST:PORT, as printed by `stune cluster up`."),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", metavar="N", min=0, help="CPUs this node offers (default: all)."),
    num_gpus: Optional[int] = typer.Option(None, "--num-gpus", metavar="N", min=0, help="GPUs this node offers (default: all)."),
    token_file: Optional[str] = typer.Option(
        None,
        "--token-file", metavar="FILE",
        help="File with the head's token (default: $RAY_AUTH_TOKEN, else ~/.ray/auth_token).",
    ),
) -> None:
    """Start a worker node on this machine that joins the cluster at ADDRESS (works on the head's machine too)."""
    try:
        rec = local.join(address, num_cpus=num_cpus, num_gpus=num_gpus, token_file=token_file)
        nodes = local.check_cluster(address, "ADDRESS", client_auth_env(token_file=token_file))
    except ClusterError as e:
        _fail(e)
    where = f" as {rec.node_ip}" if rec.node_ip else ""
    alive = [n for n in nodes if n.alive]
    typer.echo(
        f"Joined {address}{where}: {len(alive)} node(s) alive, "
        f"{sum(n.cpus for n in alive):g} CPU, {sum(n.gpus for n in alive):g} GPU."
    )
    typer.echo("Stop this node with: stune cluster down")


@app.command()
def status(
    address: Optional[str] = typer.Option(
        None, "--address", metavar="ADDR", help="HOST:PORT of the cluster (default: the one started here, else RAY_ADDRESS)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show the cluster's nodes and their CPUs/GPUs."""
    try:
        st = local.status(address)
    except ClusterError as e:
        _fail(e)
    mine = local.live_nodes()
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "address": st.address,
                    "nodes": [asdict(n) for n in st.nodes],
                    "started_here": [asdict(r) for r in mine],
                },
                indent=2,
            )
        )
        return
    alive = st.alive
    typer.echo(f"Ray cluster at {st.address}")
    typer.echo(f"  {'NODE IP':<16} {'ROLE':<7} {'CPU':>5} {'GPU':>5}")
    for n in sorted(alive, key=lambda n: (not n.is_head, n.ip)):
        typer.echo(f"  {n.ip:<16} {'head' if n.is_head else 'worker':<7} {n.cpus:>5g} {n.gpus:>5g}")
    dead = len(st.nodes) - len(alive)
    typer.echo(
        f"  {len(alive)} node(s) alive, {sum(n.cpus for n in alive):g} CPU, {sum(n.gpus for n in alive):g} GPU"
        + (f" ({dead} dead node(s) not shown)" if dead else "")
    )
    if mine:
        typer.echo(f"  started here by stune: {', '.join(f'{r.role} (session {r.sid})' for r in mine)}")
    typer.echo("Resource usage per task: RAY_AUTH_MODE=token ray status --address " + st.address)


@app.command()
def down(
    grace: float = typer.Option(5.0, "--grace", metavar="SECONDS", min=0, help="Seconds to wait after SIGTERM before SIGKILL."),
) -> None:
    """Stop the Ray nodes that `up`/`join` started on this machine (and no other Ray processes)."""
    recs = local.load_nodes()
    if not recs:
        typer.echo("Nothing to stop: no Ray node started by stune on this machine.")
        return
    for rep in local.stop_nodes(recs, grace=grace):
        r = rep.record
        if rep.processes:
            typer.echo(f"Stopped {r.role} {r.node_ip or r.address} ({rep.processes} processes).")
        else:
            typer.echo(f"{r.role.capitalize()} {r.node_ip or r.address} had already stopped.")


if __name__ == "__main__":
    app()
