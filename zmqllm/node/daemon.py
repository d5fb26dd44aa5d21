"""Starting one daemon from its config: engine, node, ready line, signals."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zmqllm.net import keys
from zmqllm.node import paths
from zmqllm.node.config import NodeConfig, api_keys, data_dir_for, http_address
from zmqllm.node.datadir import DataDirInUse
from zmqllm.engines.base import Engine, EngineError
from zmqllm.core.membership import Liveness
from zmqllm.node.journal import Retention
from zmqllm.node.models import llama_engine, model_host, rescan_forever, serves_several
from zmqllm.engines.host import ModelHost
from zmqllm.core.swim_config import SwimConfig
from zmqllm.node.node import FatalNodeError, Node, NodeSettings
from zmqllm.core.tasks import TaskSpec
from zmqllm.http.host import TaskListener

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
        journal_retention=Retention(config.journal_keep_days, config.journal_max_mb),
        routing=config.routing,
        membership=config.membership,
        swim=SwimConfig(probe_interval=config.heartbeat_interval, probe_timeout=0.4 * config.heartbeat_interval,
                        view_threshold=config.view_threshold, view_rings=config.view_rings),
    )


def announce_ready(node: Node, http: Sequence[str] = (), metrics: Sequence[str] = ()) -> None:
    """The one line scripts and `zmqllm up` wait for (CONTRACT: ready line); `http` the gateway's real URLs,
    `metrics` those of the metrics-only servers."""
    models = ",".join(node.engine.models)
    fields: dict[str, Any] = {"event": "ready", "name": node.settings.name, "endpoint": node.endpoint,
                              "models": list(node.engine.models), "node_id": node.node_id}
    if http:
        fields["http"] = list(http)
    if metrics:
        fields["metrics"] = list(metrics)
    log.info("ready name=%s endpoint=%s models=%s%s%s", node.settings.name, node.endpoint, models,
             "".join(f" http={url}" for url in http), "".join(f" metrics={url}/metrics" for url in metrics),
             extra={"fields": fields})


class NodeMesh:
    """The HTTP gateway's view of this node (`zmqllm.http.host.Mesh`): a request is a task originated here,
    exactly like a client's SUBMIT (routing, failover, journal, dashboard traces)."""

    def __init__(self, node: Node) -> None:
        self.node = node

    @property
    def name(self) -> str:
        return self.node.settings.name

    def models(self) -> dict[str, list[str]]:
        table = self.node.table
        served: dict[str, list[str]] = {}
        for row in table.rows(self.node.clock(), self.node.load()) if table is not None else []:
            if row["state"] in ("alive", "suspect"):
                for model in row["models"]:
                    served.setdefault(model, []).append(row["name"])
        return served

    def submit(self, spec: TaskSpec, listener: TaskListener) -> str | None:
        return self.node.origin.submit_local(spec, listener)

    def cancel(self, task_id: str) -> None:
        self.node.origin.cancel(task_id)

    def executor_of(self, task_id: str) -> str | None:
        task = self.node.origin.tasks.get(task_id)
        return task.executor_name if task is not None and task.executor_name else None


async def _run_node(node: Node, config: NodeConfig) -> None:
    """Run the node; once it has bound, start its HTTP servers (if asked) and say ready. They stop after the
    node, whose shutdown has ended every task an HTTP client was waiting on."""
    if not config.http and not config.metrics:
        await node.run(on_ready=announce_ready)
        return
    servers = _http_servers(node, config)  # aiohttp loads only for a daemon that serves HTTP
    bound = asyncio.Event()
    running = asyncio.create_task(node.run(on_ready=lambda _node: bound.set()))
    waiting = asyncio.create_task(bound.wait())
    try:
        await asyncio.wait({running, waiting}, return_when=asyncio.FIRST_COMPLETED)
        if bound.is_set():
            urls: dict[str, list[str]] = {}
            for key, server in servers:
                try:
                    urls[key] = await server.start()
                except OSError as exc:
                    node.stop()
                    await running
                    addresses = ", ".join(getattr(config, key))
                    raise DaemonError(f"key '{key}': cannot serve HTTP on {addresses}: {exc.strerror or exc}",
                                      exit_code=2) from None
            announce_ready(node, urls.get("http", ()), urls.get("metrics", ()))
        await running
    finally:
        waiting.cancel()
        for _, server in servers:
            await server.stop()


def _http_servers(node: Node, config: NodeConfig) -> list[tuple[str, Any]]:
    """The gateway (`http`: every API, /health, /metrics) and the metrics-only servers (`metrics`), sharing
    one metrics registry and one count of HTTP requests."""
    from zmqllm.http.metrics import HttpStats
    from zmqllm.http.server import Gateway
    from zmqllm.node.metrics import registry_for

    stats = HttpStats()
    registry = registry_for(node, stats)
    mesh, keys = NodeMesh(node), api_keys(config)
    servers = []
    if config.http:
        servers.append(("http", Gateway(mesh, [http_address(a) for a in config.http], keys, registry=registry,
                                        stats=stats, max_body_bytes=int(config.http_max_body_mb * 2**20))))
    if config.metrics:
        servers.append(("metrics", Gateway(mesh, [http_address(a) for a in config.metrics], keys,
                                           registry=registry, stats=stats, apis=False)))
    return servers


async def serve(config: NodeConfig) -> None:
    """Load the engine, then run the node until SIGTERM/SIGINT."""
    try:
        engine = build_engine(config, paths.cache_dir() / "models")
        if config.engine == "llama" and not serves_several(config):
            log.info("loading model %s ...", config.model[0])
        await engine.load()
    except EngineError as exc:
        raise DaemonError(exc.message) from None
    if config.mesh_key and keys.too_open(config.mesh_key):
        log.warning("mesh key %s is readable by other users: chmod 600 it", config.mesh_key)
    node = Node(settings_from(config), engine)
    node.install_signal_handlers()
    rescans = None
    if isinstance(engine, ModelHost):
        engine.on_change = node.models_changed
        log.info("serving %s (each loaded on first use, at most %s at once)", ", ".join(engine.models),
                 engine.max_loaded or "all")
        if config.models_dir is not None:
            rescans = asyncio.create_task(rescan_forever(engine, config, paths.cache_dir() / "models"))
    try:
        await _run_node(node, config)
    except DataDirInUse as exc:
        raise DaemonError(str(exc), exit_code=2) from None  # 2: a setting to change (README: exit codes)
    except FatalNodeError as exc:
        raise DaemonError(str(exc)) from None
    except OSError as exc:
        raise DaemonError(str(exc)) from None
    finally:
        if rescans is not None:
            rescans.cancel()
        await engine.close()
    log.info("stopped")


def build_engine(config: NodeConfig, cache_dir: Path) -> Engine:
    """Make (not yet load) the engine a daemon's config names."""
    if config.engine == "echo":
        from zmqllm.engines.echo import EchoEngine

        return EchoEngine(rate=config.echo_rate, slots=config.slots or 1)
    if config.engine == "llama":
        if serves_several(config):
            return model_host(config, cache_dir)
        if not config.model:  # load_config refuses this; a NodeConfig built by hand may not
            raise ValueError("engine 'llama' needs a model")
        return llama_engine(config, config.model[0], cache_dir, config.model_name)
    raise ValueError(f"unknown engine {config.engine!r}")
