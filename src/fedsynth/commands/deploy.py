"""``fedsynth deploy``: certificates and keys, Flower's commands in fedsynth's environment, a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.markup import escape

from ..config import UserError, check_output_path
from .common import console, fail, typer_group

deploy_app = typer_group("Helpers for a Flower deployment.")


@deploy_app.command("certs")
def deploy_certs(
    out: Path = typer.Option(..., "--out", "-o", help="Folder for ca.crt, server.pem/.key and keys/node<k>[.pub]."),
    nodes: int = typer.Option(..., "--nodes", help="Number of hospitals to make key pairs for (0: each "
                              "hospital makes its own with `fedsynth deploy keygen`)."),
    name: List[str] = typer.Option([], "--name", help="Extra DNS name or IP of the SuperLink (repeatable)."),
) -> None:
    """Create a CA, the SuperLink's TLS certificate and one SuperNode key pair per hospital (--nodes 0: none).

    Examples:
      fedsynth deploy certs -o certs --nodes 2
      fedsynth deploy certs -o certs --nodes 0 --name superlink.example.org"""
    from ..fed.flower.deploy import make_certs
    try:
        if nodes < 0:
            raise UserError("--nodes must be 0 or more (0: hospitals make their own keys with `fedsynth deploy keygen`)")
        check_output_path(out, "--out")
        files = make_certs(out, nodes, tuple(name))
    except UserError as e:
        fail(str(e))
    pub = f"{out}/keys/node<k>.pub" if nodes else "NAME.pub"
    made = "" if nodes else " (it makes its key pair with `fedsynth deploy keygen` and sends NAME.pub)"
    console.print(f"wrote {len(files)} files to {out}; register each hospital{made} with "
                  f"`fedsynth deploy register {pub} [CONNECTION]`; send ca.crt to the hospitals; keep ca.key offline",
                  highlight=False, markup=False, soft_wrap=True)


@deploy_app.command("keygen")
def deploy_keygen(
    out: Path = typer.Option(..., "--out", "-o", help="Folder for NAME (private key, 0600) and NAME.pub."),
    name: str = typer.Option(..., "--name", help="This hospital's key name, e.g. hospital-a."),
) -> None:
    """Make this hospital's SuperNode key pair on site (ECDSA P-384, OpenSSH format).

    The private key stays here (flower-supernode --auth-supernode-private-key); send only
    NAME.pub to the operator, who runs `fedsynth deploy register NAME.pub`. Never overwrites.

    Examples:
      fedsynth deploy keygen -o keys --name hospital-a"""
    from ..fed.flower.deploy import make_node_key
    try:
        check_output_path(out, "--out")
        priv, pub = make_node_key(out, name)
    except UserError as e:
        fail(str(e))
    console.print(f"wrote {priv} (private key, mode 0600: keep it on this site) and {pub}; send only {pub} "
                  f"to the operator (`fedsynth deploy register {pub.name}`)",
                  highlight=False, markup=False, soft_wrap=True)


_PASS = {"allow_extra_args": True, "ignore_unknown_options": True}


def _exec_flower(name: str, args: list[str], extra_env: dict[str, str] | None = None) -> None:
    """Replace this process with a Flower command (same PID), in fedsynth's Flower environment."""
    from ..fed.flower.deploy import exec_flower
    try:
        exec_flower(name, args, extra_env)
    except UserError as e:
        fail(str(e))


def _flower_help(*command: str) -> Any:
    """``--flower-help``: Flower's own option list for ``command`` (all of it passes through)."""
    def show(value: bool) -> None:
        if value:
            _exec_flower(command[0], [*command[1:], "--help"])
            raise typer.Exit()  # only reached when _exec_flower did not replace this process
    return typer.Option(False, "--flower-help", callback=show, is_eager=True,
                        help=f"Show Flower's own options ({' '.join(command)} --help) and exit.")


@deploy_app.command("superlink", context_settings=_PASS)
def deploy_superlink(
    ctx: typer.Context,
    flower_help: bool = _flower_help("flower-superlink"),
) -> None:
    """flower-superlink in fedsynth's Flower environment (telemetry, update check, per-run installs off).

    Every flower-superlink option passes through (--flower-help lists them: TLS files, --database,
    --enable-supernode-auth, addresses and ports, ...); the SuperExec polls for tasks every 50 ms.

    Examples:
      fedsynth deploy superlink --flower-help
      fedsynth deploy superlink --ssl-ca-certfile certs/ca.crt \\
          --ssl-certfile certs/server.pem --ssl-keyfile certs/server.key \\
          --enable-supernode-auth --database state.db
      fedsynth deploy superlink --insecure     # a local test without TLS"""
    _exec_flower("flower-superlink", ctx.args)


@deploy_app.command("supernode", context_settings=_PASS)
def deploy_supernode(
    ctx: typer.Context,
    no_warm_worker: bool = typer.Option(False, "--no-warm-worker", help="Leave the warm worker out: each of "
                                        "Flower's ClientApp processes imports torch itself."),
    flower_help: bool = _flower_help("flower-supernode"),
) -> None:
    """flower-supernode in fedsynth's Flower environment, with a warm worker; options pass through.

    Give the node its data: --node-config 'data-path="/data/site" client-id="0"'. The warm worker
    (fedsynth.fed.flower.worker) keeps torch loaded so that Flower's per-message ClientApp process need
    not import it; it lives as long as the SuperNode. Every flower-supernode option passes through
    (--flower-help lists them: --superlink, --root-certificates, --auth-supernode-private-key, ...).

    Examples:
      fedsynth deploy supernode --flower-help
      fedsynth deploy supernode --superlink 127.0.0.1:18000 \\
          --root-certificates certs/ca.crt \\
          --auth-supernode-private-key certs/keys/node0 \\
          --node-config 'data-path="sites/client-0" client-id="0"'"""
    from ..fed.flower.deploy import start_worker
    from ..fed.flower.worker import ENV
    args = list(ctx.args)
    if no_warm_worker:
        _exec_flower("flower-supernode", args, {ENV: ""})
        return
    _exec_flower("flower-supernode", args, {ENV: start_worker()})  # inherited by its ClientApp processes


@deploy_app.command("register", context_settings=_PASS)
def deploy_register(
    ctx: typer.Context,
    public_key: Path = typer.Argument(..., help="The hospital's SuperNode public key: keys/node<k>.pub from "
                                      "`deploy certs`, or the NAME.pub it made with `deploy keygen`."),
    connection: Optional[str] = typer.Argument(None, help=escape(
        "A [superlink.CONNECTION] table of $FLWR_HOME/config.toml (default: the one it names as default).")),
    name: Optional[str] = typer.Option(None, "--name", help="Name of the SuperNode (flwr's --name)."),
    location: Optional[str] = typer.Option(None, "--location", help='Where the SuperNode is, as '
                                           '"<latitude>,<longitude>" (flwr\'s --location).'),
    format_: Optional[str] = typer.Option(None, "--format", help="Output: default or json (flwr's --format)."),
    flower_help: bool = _flower_help("flwr", "supernode", "register"),
) -> None:
    r"""flwr supernode register PUBLIC_KEY [CONNECTION], in fedsynth's Flower environment.

    CONNECTION names a \[superlink.CONNECTION] table of $FLWR_HOME/config.toml (default: its default).
    Other flwr supernode register options pass through after the arguments (--flower-help lists them).

    Examples:
      fedsynth deploy register certs/keys/node0.pub
      fedsynth deploy register hospital-a.pub production --name hospital-a"""
    opts = [a for flag, v in (("--name", name), ("--location", location), ("--format", format_))
            if v is not None for a in (flag, v)]
    _exec_flower("flwr", ["supernode", "register", str(public_key), *([connection] if connection else []),
                          *opts, *ctx.args])


@deploy_app.command("run")
def deploy_run(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="fedsynth TOML config (sent with the run)."),
    set_: List[str] = typer.Option([], "--set", "-s", help="Override a config key, e.g. --set fed.rounds=5."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory the server writes "
                                       "(default: runs/flower-<time>)."),
    clients: int = typer.Option(2, "--clients", "-k", help="SuperNodes to wait for."),
    superlink: str = typer.Option("", "--superlink", help="SuperLink connection name in $FLWR_HOME/config.toml "
                                  "(default: the one it names as default)."),
    round_timeout: float = typer.Option(3600, "--round-timeout", help="Seconds a round waits for replies."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue this Flower run directory from its "
                                          "last checkpoint (its own config.toml; the nodes' saved state)."),
    audit_dir: Optional[Path] = typer.Option(None, "--audit-dir", help="Also write every reply the server "
                                             "receives to this folder (tensors .npz, the rest .json), to check "
                                             "what left the sites."),
    print_app: bool = typer.Option(False, "--print-app", help="Print the Flower app folder and exit."),
) -> None:
    """Start a federated run on a running SuperLink and follow it (flwr run --stream underneath).

    Exits non-zero if the server reports an error (Flower's own exit code does not).

    Examples:
      fedsynth deploy run -k 2 -s fed.rounds=3 -o runs/flower-demo
      fedsynth deploy run --resume runs/flower-demo
      fedsynth deploy run -k 3 -c secure.toml --audit-dir runs/audit
      fedsynth deploy run --print-app"""
    from ..fed.flower.deploy import APP_DIR, prepare_run, run_flower
    if print_app:
        print(APP_DIR)
        return
    try:
        cfg, target = prepare_run(config, set_, out, clients, resume)  # a bad config fails here, before anything is sent
        if audit_dir is not None:
            check_output_path(audit_dir, "--audit-dir")
    except UserError as e:
        fail(str(e))
    code = run_flower(cfg, target, clients, superlink, round_timeout, resume is not None,
                      echo=lambda line: print(line, flush=True),
                      audit_dir=str(audit_dir.resolve()) if audit_dir is not None else "")
    if code == 0:
        console.print(f"run directory: {target} (report.html, metrics.jsonl, samples/, checkpoints/)")
    raise typer.Exit(code)
