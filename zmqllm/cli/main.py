"""The `zmqllm` command line: one click group; each verb lives in its own module and is registered here."""

from __future__ import annotations

import os

import click

from zmqllm import __version__
from zmqllm.cli import bench, daemon, info, keys, mesh, shell, sim, tasks, workflows
from zmqllm.cli.common import EXIT_USAGE, CliError
from zmqllm.net import keys as mesh_keys

@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="zmqllm")
@click.option("--mesh-key", metavar="FILE", envvar=mesh_keys.ENV_VAR, default=None,
              help=f"the mesh's key file (zmqllm keys new): every command and daemon started from here uses it "
                   f"[env: {mesh_keys.ENV_VAR}]")
@click.pass_context
def main(ctx: click.Context, mesh_key: str | None) -> None:
    """zmqllm: a brokerless peer-to-peer mesh of LLM daemons.

    \b
    Start a daemon on each machine, then drive the mesh from any of them:
      zmqllm keys new ~/.config/zmqllm/mesh.key     (once; copy it to each machine)
      export ZMQLLM_MESH_KEY=~/.config/zmqllm/mesh.key
      zmqllm daemon --name a --bind tcp://0.0.0.0:5555
      zmqllm daemon --name b --bind tcp://0.0.0.0:5555 --peer tcp://hostA:5555
      zmqllm peers --connect tcp://hostA:5555
      zmqllm submit "Once upon a time" --max-tokens 32
    Or start a local mesh in one go: zmqllm up --nodes 3
    """
    if not mesh_key:
        return
    if ctx.invoked_subcommand not in ("keys", "daemon"):  # `keys new` creates it; a daemon's config checks it
        try:
            mesh_keys.load(mesh_key)
        except mesh_keys.KeyFileError as exc:
            raise CliError(str(exc), EXIT_USAGE) from None
    os.environ[mesh_keys.ENV_VAR] = mesh_key  # for the client and for daemons `up` starts


for command in (daemon.daemon, daemon.up, mesh.peers, mesh.status, mesh.models, mesh.tasks, mesh.result, mesh.cancel,
                tasks.submit, tasks.chat, workflows.run, workflows.runs, workflows.workflows, keys.keys_group,
                mesh.dash, bench.bench, sim.sim, info.info, shell.install_shell):
    main.add_command(command)
