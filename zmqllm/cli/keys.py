"""`zmqllm keys`: make and check the mesh key file (`zmqllm.net.keys`).

Registered on `main` by `cli.py`; same exit codes (2 for a bad or missing file).
"""

from __future__ import annotations

import json

import click

from zmqllm.net import keys
from zmqllm.cli.common import EXIT_USAGE, CliError


@click.group("keys")
def keys_group() -> None:
    """The mesh key: one file, copied to every machine, that encrypts the mesh's
    traffic and admits only processes holding it.

    \b
      zmqllm keys new ~/.config/zmqllm/mesh.key
      scp ~/.config/zmqllm/mesh.key hostB:.config/zmqllm/
      export ZMQLLM_MESH_KEY=~/.config/zmqllm/mesh.key    (on each machine)
      zmqllm daemon --bind tcp://0.0.0.0:5555             (or mesh_key = "..." in its config)
    """


@keys_group.command("new")
@click.argument("file", type=click.Path(dir_okay=False))
def keys_new(file: str) -> None:
    """Write a new mesh key to FILE (readable by you only; never overwrites)."""
    try:
        key = keys.create(file)
    except keys.KeyFileError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    click.echo(f"wrote {key.path} (public key {key.public.decode()})")
    click.echo("It is a secret: copy it only to your own machines, then on each one\n"
               f"  export {keys.ENV_VAR}={key.path}\n"
               "or set mesh_key in each daemon's config. Nodes and clients without it are refused.")


@keys_group.command("show")
@click.argument("file", required=False, type=click.Path(dir_okay=False), envvar=keys.ENV_VAR)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def keysshow(file: str | None, as_json: bool) -> None:
    """Check a mesh key file (default: $ZMQLLM_MESH_KEY) and print its public key,
    to compare between machines."""
    if not file:
        raise CliError(f"no key file given and {keys.ENV_VAR} is not set", EXIT_USAGE)
    try:
        key = keys.load(file)
        too_open = keys.too_open(file)
    except (keys.KeyFileError, OSError) as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    if as_json:
        click.echo(json.dumps({"path": key.path, "public_key": key.public.decode(), "too_open": too_open}))
        return
    click.echo(f"{key.path}: public key {key.public.decode()}")
    if too_open:
        click.echo(f"warning: {key.path} is readable by other users (chmod 600 it)", err=True)
