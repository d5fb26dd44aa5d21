"""Starting one daemon from its config: engine, node, ready line, signals."""

from __future__ import annotations

import logging

from zmqllm import keys, paths
from zmqllm.config import NodeConfig, data_dir_for
from zmqllm.engines import build_engine
from zmqllm.engines.base import EngineError
from zmqllm.membership import Liveness
from zmqllm.node import FatalNodeError, Node, NodeSettings

log = logging.getLogger("zmqllm.daemon")


class DaemonError(Exception):
    """The daemon could not start or had to stop; `exit_code` per docs/cli.md."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def settings_from(config: NodeConfig) -> NodeSettings:
    return NodeSettings(
        name=config.name,
        bind=config.bind,
        peers=config.peers,
        advertise=config.advertise,
        liveness=Liveness(config.heartbeat_interval, config.suspect_after, config.dead_after),
        queue_limit=config.queue_limit,
        send_buffer_bytes=int(config.send_buffer_mb * 2**20),
        data_dir=data_dir_for(config),
        mesh_key=keys.load(config.mesh_key) if config.mesh_key else None,
    )


def announce_ready(node: Node) -> None:
    """The one line scripts and `zmqllm up` wait for (CONTRACT: ready line)."""
    models = ",".join(node.engine.models)
    log.info("ready name=%s endpoint=%s models=%s", node.settings.name, node.endpoint, models,
             extra={"fields": {"event": "ready", "name": node.settings.name, "endpoint": node.endpoint,
                               "models": list(node.engine.models), "node_id": node.node_id}})


async def serve(config: NodeConfig) -> None:
    """Load the engine, then run the node until SIGTERM/SIGINT."""
    try:
        engine = build_engine(config, paths.cache_dir() / "models")
        if config.engine == "llama":
            log.info("loading model %s ...", config.model)
        await engine.load()
    except EngineError as exc:
        raise DaemonError(exc.message) from None
    if config.mesh_key and keys.too_open(config.mesh_key):
        log.warning("mesh key %s is readable by other users: chmod 600 it", config.mesh_key)
    node = Node(settings_from(config), engine)
    node.install_signal_handlers()
    try:
        await node.run(on_ready=announce_ready)
    except FatalNodeError as exc:
        raise DaemonError(str(exc)) from None
    except OSError as exc:
        raise DaemonError(str(exc)) from None
    finally:
        await engine.close()
    log.info("stopped")
