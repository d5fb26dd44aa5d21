"""Daemon settings: one typed, validated NodeConfig from four layers.

Precedence is flag > environment (``ZMQLLM_<KEY>``) > TOML file > default.
Every key is described once in ``KEYS`` so flags, environment variables and
the file cannot drift apart, and every failure is a ConfigError whose single
line names the key and where the bad value came from, so a user can fix it
without reading code.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zmqllm.core.scheduler import CACHE_AWARE, ROUTING_POLICIES
from zmqllm.core.show import MAX_SHOWN_CHARS, show_value
from zmqllm.node import paths
from zmqllm.node.journal import DEFAULT_KEEP_DAYS, DEFAULT_MAX_MB

__all__ = [
    "ConfigError", "NodeConfig", "Key", "KEYS", "ENV_PREFIX",
    "load_config", "resolve_config", "parse_text", "data_dir_for", "default_name", "check_model",
    "http_address", "api_keys",
]

ENV_PREFIX = "ZMQLLM_"
ENGINES = ("echo", "llama")
LOG_LEVELS = ("debug", "info", "warning", "error")
BUNDLED_MODEL = "bundled:gemma3-270m"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
NAME_MAX_CHARS = 64
FALLBACK_NAME = "node"
PORT_MAX = 65535
MAX_HTTP_BODY_MB = 1024.0
"""The largest request body a node may be set to read (aiohttp holds a body in memory whole)."""
MIN_CTX_TOKENS = 16
DEFAULT_SLOTS = {"echo": 4, "llama": 1}
DEFAULT_MAX_LOADED = 3
"""Models a node keeps loaded at once, as Ollama's default on a CPU: a few small models fit in RAM together."""
"""llama: 1 keeps greedy output equal to llama-cpp-python's own and failover exact (docs/design.md)."""
MAX_SEND_BUFFER_MB = 4096

_TCP = re.compile(r"^tcp://(?P<host>\[[0-9A-Fa-f:.%]+\]|[A-Za-z0-9*][A-Za-z0-9.*_%-]*)"
                  r":(?P<port>\*|[0-9]{1,5})$")
_IPC = re.compile(r"^ipc://\S+$")
_HTTP = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.%]+\]|[A-Za-z0-9][A-Za-z0-9._-]*):(?P<port>[0-9]{1,5})$")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_TYPE_WORDS = {str: "a string", int: "an integer", float: "a number",
               bool: "a boolean", tuple: "a list of strings"}


MEMBERSHIPS = ("heartbeat", "swim")


class ConfigError(Exception):
    """A bad setting; the message is one line naming the key and its source."""


@dataclass(frozen=True)
class NodeConfig:
    """Everything a daemon needs to start; immutable so it can be shared freely."""

    name: str
    bind: str = "tcp://127.0.0.1:5555"
    advertise: str | None = None
    peers: tuple[str, ...] = ()
    engine: str = "echo"
    model: tuple[str, ...] = ()
    """Models to serve: GGUF paths or the bundled name (`model = "a.gguf"` in TOML is one)."""
    model_name: str | None = None
    models_dir: str | None = None
    max_loaded: int = DEFAULT_MAX_LOADED
    echo_rate: float = 50.0
    slots: int | None = None
    """None until `load_config` resolves it per engine (`DEFAULT_SLOTS`)."""
    queue_limit: int = 64
    routing: str = CACHE_AWARE
    send_buffer_mb: float = 16.0
    heartbeat_interval: float = 0.5
    membership: str = "heartbeat"
    view_threshold: int = 64
    view_rings: int = 6
    suspect_after: float = 2.0
    dead_after: float = 4.0
    data_dir: str | None = None
    journal_keep_days: float = DEFAULT_KEEP_DAYS
    journal_max_mb: float = DEFAULT_MAX_MB
    mesh_key: str | None = None
    allow_plaintext: bool = False
    log_level: str = "info"
    json_logs: bool = False
    gpu_layers: int = 0
    ctx: int = 2048
    threads: int | None = None
    batch: int = 512
    chat_format: str | None = None
    flash_attn: bool | None = None
    """None until `load_config` resolves it: on when llama batches (slots > 1)."""
    prefix_cache: str = "exact"
    prefix_cache_mb: float = 256.0
    per_model: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    """`[models.NAME]` tables of the file: settings for one model of a node serving several (see
    `PER_MODEL_KEYS`), as (name, ((key, value), ...)) pairs."""
    http: tuple[str, ...] = ()
    api_key: str | None = None
    """Comma-separated when there are several; never logged or shown."""
    api_keys_file: str | None = None
    allow_unauthenticated_http: bool = False
    http_max_body_mb: float = 4.0
    metrics: tuple[str, ...] = ()

    @property
    def suspect_after_s(self) -> float:
        """Silence, in seconds, after which a peer is suspected."""
        return self.suspect_after * self.heartbeat_interval

    @property
    def dead_after_s(self) -> float:
        """Silence, in seconds, after which a peer is declared dead."""
        return self.dead_after * self.heartbeat_interval


@dataclass(frozen=True)
class Key:
    """One setting: its value type, whether it may be unset, and one line of help."""

    name: str
    type: type  # str, int, float, bool, or tuple (a list of strings)
    help: str
    optional: bool = False
    choices: tuple[str, ...] | None = None
    metavar: str = "HOST:PORT"
    """What a repeatable (tuple) key's flag takes."""
    one_or_list: bool = False
    """A tuple key that may also be given as one string (`model = "a.gguf"`, as before it took several)."""

    @property
    def env_var(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def default(self) -> Any:
        """NodeConfig's default; None for name, which is derived from the hostname."""
        field = _FIELDS[self.name]
        return None if field.default is dataclasses.MISSING else field.default


_FIELDS = {f.name: f for f in dataclasses.fields(NodeConfig) if f.name != "per_model"}
PER_MODEL_KEYS = ("slots", "ctx", "chat_format", "prefix_cache")
"""What a `[models.NAME]` table may set for that model alone (the rest is the node's)."""


def _key(name: str, typ: type, help: str, **kw: Any) -> tuple[str, Key]:
    return name, Key(name, typ, help, **kw)


KEYS: dict[str, Key] = dict([
    _key("name", str, "node name shown to peers (default: sanitised hostname)"),
    _key("bind", str, "endpoint to listen on, tcp://HOST:PORT or ipc://PATH"),
    _key("advertise", str, "endpoint peers should dial, when bind is a wildcard", optional=True),
    _key("peers", tuple, "seed endpoints to dial at start-up"),
    _key("engine", str, "inference engine (default: llama when a model is given, else echo)", choices=ENGINES),
    _key("model", tuple, f"llama model: a GGUF path or '{BUNDLED_MODEL}'; several serve several models from "
                         "one node, each loaded on first use", metavar="GGUF", one_or_list=True),
    _key("model_name", str, "model name to advertise instead of the file stem (one model only)", optional=True),
    _key("models_dir", str, "folder whose *.gguf files this node serves, each under its file stem, loaded on "
                            "first use (rescanned every few seconds)", optional=True),
    _key("max_loaded", int, "models loaded at once; loading another unloads the least recently used idle one "
                            "(0 = no limit)"),
    _key("echo_rate", float, "echo engine tokens per second; 0 = as fast as possible"),
    _key("slots", int, "requests run at once (default: echo 4, llama 1; llama > 1 batches them in one "
                       "context: continuous batching)", optional=True),
    _key("queue_limit", int, "requests waiting beyond the slots before rejecting as busy"),
    _key("routing", str, "where this node places the tasks it accepts: cache-aware (least outstanding work per "
                         "slot, less the share of the prompt a node's cache holds), least-loaded (least outstanding "
                         "work per slot), power-of-two (the less loaded of two nodes drawn at random), round-robin, random",
         choices=ROUTING_POLICIES),
    _key("send_buffer_mb", float, "MiB held for one receiver that stopped reading before its tasks are cut off"),
    _key("heartbeat_interval", float, "seconds between heartbeats"),
    _key("membership", str, "who judges liveness: heartbeat (every node beats to every other and links to all) "
                            "or swim (probes and gossip; above view_threshold live nodes each links to its ring "
                            "neighbours only, dialling others on demand); the same on every node of a mesh",
         choices=MEMBERSHIPS),
    _key("view_threshold", int, "membership = swim: live nodes up to which every node links to every other"),
    _key("view_rings", int, "membership = swim, above view_threshold: rings of the partial view (at most 2 links "
                            "each)"),
    _key("suspect_after", float, "heartbeat intervals of silence before a peer is suspect"),
    _key("dead_after", float, "heartbeat intervals of silence before a peer is dead"),
    _key("data_dir", str, "state directory (default: $ZMQLLM_HOME/nodes/NAME)", optional=True),
    _key("journal_keep_days", float, "days finished tasks and runs stay in the journal; 0 = no age limit"),
    _key("journal_max_mb", float, "MiB of journal beyond which the oldest finished tasks and runs are pruned; "
                                  "0 = no size limit"),
    _key("mesh_key", str, "CURVE key file the mesh shares (zmqllm keys new): encrypts traffic and admits only "
                          "its holders", optional=True),
    _key("allow_plaintext", bool, "let a bind other machines can reach run without mesh_key: unencrypted, and "
                                  "anyone who reaches it can use it"),
    _key("log_level", str, "log verbosity", choices=LOG_LEVELS),
    _key("json_logs", bool, "write logs as JSON lines"),
    _key("gpu_layers", int, "llama layers offloaded to the GPU; -1 = all"),
    _key("ctx", int, "llama context tokens per request (per slot)"),
    _key("threads", int, "llama CPU threads (default: engine picks)", optional=True),
    _key("batch", int, "llama prompt batch size in tokens"),
    _key("chat_format", str, "llama chat template name (default: from the model)", optional=True),
    _key("flash_attn", bool, "llama flash attention (default: on when slots > 1, as llama-server's 'auto' "
                             "picks on CPU and GPU; off for slots = 1, as llama-cpp-python)", optional=True),
    _key("prefix_cache", str, "llama: what a prompt reuses of a cached prefix it shares: exact (whole batch-size "
                              "chunks, greedy output unchanged), longest (every shared token; greedy text may "
                              "differ from a fresh run's), off; with slots > 1, exact and longest both reuse the "
                              "longest (batching never promised a fresh run's output)",
         choices=("exact", "longest", "off")),
    _key("prefix_cache_mb", float, "llama, slots = 1: MiB of recent prompts' contexts kept besides the live one, so "
                                   "several conversations keep their history cached (0 = the live context only)"),
    _key("http", tuple, "HTTP gateway address HOST:PORT (OpenAI-compatible API; port 0 picks a free one)"),
    _key("api_key", str, "key(s) HTTP clients must send as 'Authorization: Bearer KEY'; comma-separated for "
                         "several", optional=True),
    _key("api_keys_file", str, "file of HTTP API keys, one per line ('#' starts a comment); adds to api_key",
         optional=True),
    _key("allow_unauthenticated_http", bool, "let an HTTP address other machines can reach run without api_key"),
    _key("http_max_body_mb", float, "largest HTTP request body in MiB (larger: 413)"),
    _key("metrics", tuple, "address HOST:PORT serving only /metrics (Prometheus) and /health; the http "
                           "address serves /metrics too"),
])
if set(KEYS) != set(_FIELDS):
    raise RuntimeError(f"KEYS and NodeConfig must list the same keys: {sorted(set(KEYS) ^ set(_FIELDS))}")


def _fail(source: str, key: str, what: str, got: str) -> ConfigError:
    return ConfigError(f"{source}: key '{key}' must be {what}, got {got}")


def _typed(key: Key, value: Any, source: str) -> Any:
    """Check a natively typed value (TOML or flag) against the key's type."""
    want = _TYPE_WORDS[key.type]
    if key.type is bool:
        ok = isinstance(value, bool)
    elif key.type is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif key.type is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            value = float(value)
            if not math.isfinite(value):
                raise _fail(source, key.name, "a finite number", show_value(value))
    elif key.type is tuple:
        if isinstance(value, str) and key.one_or_list:
            value = (value,)
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
        if ok:
            value = tuple(value)
            if key.one_or_list and not all(value):
                raise _fail(source, key.name, "a non-empty string", "''")
    else:
        ok = isinstance(value, str)
        if ok and key.optional and not value:
            raise _fail(source, key.name, "a non-empty string", "''")
    if not ok:
        raise _fail(source, key.name, want, show_value(value))
    return value


def parse_text(key: str, text: str, source: str) -> Any:
    """Parse a setting given as text (environment variable); empty unsets an optional key."""
    spec = KEYS[key]
    raw = text.strip()
    if spec.optional and not raw:
        return None
    got = repr(raw if len(raw) <= MAX_SHOWN_CHARS else raw[:MAX_SHOWN_CHARS] + "...")
    if spec.type is bool:
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise _fail(source, key, "a boolean (true/false, 1/0, yes/no, on/off)", got)
    if spec.type is int:
        if not re.fullmatch(r"[+-]?[0-9]+", raw):
            raise _fail(source, key, "an integer", got)
        return int(raw)
    if spec.type is float:
        try:
            number = float(raw)
        except ValueError:
            raise _fail(source, key, "a number", got) from None
        if not math.isfinite(number):
            raise _fail(source, key, "a finite number", got)
        return number
    if spec.type is tuple:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    return raw


def _read_file(path: str | os.PathLike) -> dict[str, Any]:
    shown = os.fspath(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"cannot read config file '{shown}': {reason}") from None
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{shown}: invalid TOML: not UTF-8 ({exc.reason} "
                          f"at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        message = " ".join(str(exc).split())
        raise ConfigError(f"{shown}: invalid TOML: {message}") from None
    values: dict[str, Any] = {}
    for name, value in doc.items():
        if name == "models":
            if not isinstance(value, dict):
                raise _fail(shown, name, "tables of per-model settings ([models.NAME])", show_value(value))
            values["per_model"] = _per_model(value, shown)
            continue
        if name not in KEYS:
            raise ConfigError(f"{shown}: unknown key '{name}'{_suggest(name)}")
        values[name] = _typed(KEYS[name], value, shown)
    return values


def _per_model(tables: dict[str, Any], source: str) -> tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]:
    """`[models.NAME]` tables, each key checked as the node-wide key is."""
    out = []
    for model, table in tables.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: 'models.{model}' must be a table ([models.{model}]), got {show_value(table)}")
        settings = []
        for key, value in table.items():
            if key not in PER_MODEL_KEYS:
                raise ConfigError(f"{source}: [models.{model}]: key '{key}' cannot be set per model (only "
                                  f"{', '.join(PER_MODEL_KEYS)})")
            typed = _typed(KEYS[key], value, f"{source}: [models.{model}]")
            if key == "slots" and typed < 1 or key == "ctx" and typed < MIN_CTX_TOKENS or (
                    key == "prefix_cache" and typed not in KEYS[key].choices):
                raise _fail(f"{source}: [models.{model}]", key, "a valid value (as the node-wide key)",
                            show_value(typed))
            settings.append((key, typed))
        out.append((model, tuple(settings)))
    return tuple(out)


def _suggest(name: str) -> str:
    close = difflib.get_close_matches(name, list(KEYS), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def default_name() -> str:
    """The hostname made into a valid node name, so a node needs no config to start."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())
    cleaned = re.sub(r"^[^A-Za-z0-9]+", "", cleaned)[:NAME_MAX_CHARS]
    return cleaned or FALLBACK_NAME


def load_config(path: str | os.PathLike | None = None,
                env: Mapping[str, str] | None = None,
                overrides: Mapping[str, Any] | None = None) -> NodeConfig:
    """Merge defaults < file < environment < flags, then validate the result (see `resolve_config`)."""
    return resolve_config(path, env, overrides)[0]


def resolve_config(path: str | os.PathLike | None = None,
                   env: Mapping[str, str] | None = None,
                   overrides: Mapping[str, Any] | None = None) -> tuple[NodeConfig, dict[str, str]]:
    """Merge defaults < file < environment < flags, then validate the result; also say where each key's
    value came from (`flag --ctx`, `environment ZMQLLM_CTX`, the file's path, or `default`), for
    `zmqllm info`.

    env defaults to os.environ; only ZMQLLM_* variables naming a key are read,
    so ZMQLLM_HOME, ZMQLLM_CONNECT and the like are left to their users.
    overrides are typed flag values keyed by config key; None means not given.
    """
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    def put(layer: Mapping[str, Any], source_of) -> None:
        for name, value in layer.items():
            values[name] = value
            sources[name] = source_of(name)

    if path is not None:
        shown = os.fspath(path)
        put(_read_file(path), lambda _name: shown)

    environ = os.environ if env is None else env
    from_env = {name: parse_text(name, environ[k.env_var], f"environment {k.env_var}")
                for name, k in KEYS.items() if k.env_var in environ}
    put(from_env, lambda name: f"environment {KEYS[name].env_var}")

    from_flags = {}
    for name, value in (overrides or {}).items():
        if value is None:
            continue
        if name not in KEYS:
            raise ConfigError(f"flag --{name.replace('_', '-')}: unknown key '{name}'"
                              f"{_suggest(name)}")
        from_flags[name] = _typed(KEYS[name], value, f"flag {KEYS[name].flag}")
    put(from_flags, lambda name: f"flag {KEYS[name].flag}")

    if "name" not in values:
        values["name"] = default_name()
    if isinstance(values.get("log_level"), str):
        values["log_level"] = values["log_level"].lower()
    if "engine" not in values:  # a model given means it is to be served
        values["engine"] = "llama" if values.get("model") or values.get("models_dir") else "echo"
    if values.get("slots") is None:
        values["slots"] = DEFAULT_SLOTS.get(values["engine"], 1)
    if values.get("flash_attn") is None:
        values["flash_attn"] = values["slots"] > 1
    config = NodeConfig(**values)
    _validate(config, lambda name: sources.get(name, "default"))
    return config, {name: sources.get(name, "default") for name in KEYS}


def _check_endpoint(key: str, endpoint: str, source: str, dial: bool) -> None:
    what = "an endpoint tcp://HOST:PORT or ipc://PATH"
    tcp = _TCP.match(endpoint)
    if tcp is None and not _IPC.match(endpoint):
        raise _fail(source, key, what, show_value(endpoint))
    if tcp is None:
        return
    port = tcp["port"]
    if port != "*" and int(port) > PORT_MAX:
        raise _fail(source, key, f"an endpoint with PORT 0-{PORT_MAX} or *", show_value(endpoint))
    if dial and ("*" in tcp["host"] or port in ("*", "0")):
        raise _fail(source, key, "a dialable endpoint (no wildcard host or port)",
                    show_value(endpoint))


def _validate(c: NodeConfig, source) -> None:
    """Range and consistency checks, each naming the key and where it was set."""
    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise _fail(source(key), key, what, show_value(getattr(c, key)))

    need(bool(NAME_PATTERN.match(c.name)), "name",
         "1-64 letters, digits, '_', '.' or '-', starting with a letter or digit")
    _check_endpoint("bind", c.bind, source("bind"), dial=False)
    if c.advertise is not None:
        _check_endpoint("advertise", c.advertise, source("advertise"), dial=True)
    for peer in c.peers:
        _check_endpoint("peers", peer, source("peers"), dial=True)
    need(c.engine in ENGINES, "engine", "one of " + ", ".join(ENGINES))
    need(c.log_level in LOG_LEVELS, "log_level", "one of " + ", ".join(LOG_LEVELS))
    need(c.echo_rate >= 0, "echo_rate", ">= 0")
    need(c.slots is not None and c.slots >= 1, "slots", ">= 1")
    need(c.queue_limit >= 0, "queue_limit", ">= 0")
    need(c.routing in ROUTING_POLICIES, "routing", "one of " + ", ".join(ROUTING_POLICIES))
    need(c.journal_keep_days >= 0, "journal_keep_days", ">= 0 (0 = no age limit)")
    need(c.journal_max_mb >= 0, "journal_max_mb", ">= 0 (0 = no size limit)")
    need(0 < c.send_buffer_mb <= MAX_SEND_BUFFER_MB, "send_buffer_mb", f"> 0 and <= {MAX_SEND_BUFFER_MB}")
    need(c.heartbeat_interval > 0, "heartbeat_interval", "> 0")
    need(c.membership in MEMBERSHIPS, "membership", "one of " + ", ".join(MEMBERSHIPS))
    need(c.view_threshold >= 1, "view_threshold", ">= 1")
    need(c.view_rings >= 1, "view_rings", ">= 1")
    need(c.suspect_after > 0, "suspect_after", "> 0")
    if c.suspect_after >= c.dead_after:
        if source("suspect_after") == "default":
            need(False, "dead_after", f"greater than suspect_after ({c.suspect_after})")
        need(False, "suspect_after", f"less than dead_after ({c.dead_after}, "
                                     f"from {source('dead_after')})")
    need(c.gpu_layers >= -1, "gpu_layers", ">= -1 (-1 = all)")
    need(c.ctx >= MIN_CTX_TOKENS, "ctx", f">= {MIN_CTX_TOKENS}")
    need(c.batch >= 1, "batch", ">= 1")
    need(c.threads is None or c.threads >= 1, "threads", ">= 1")
    if c.mesh_key is not None:
        from zmqllm.net import keys

        try:
            keys.load(c.mesh_key)
        except keys.KeyFileError as exc:
            raise ConfigError(f"{source('mesh_key')}: {exc}") from None
    elif not c.allow_plaintext:
        from zmqllm.net.transport import is_loopback

        if not is_loopback(c.bind):  # secure by default off this machine
            raise ConfigError(f"{source('bind')}: {c.bind} is reachable from other machines, and no mesh_key is "
                              "set: make one (zmqllm keys new FILE), give every machine of the mesh the same file "
                              "(mesh_key, --mesh-key or ZMQLLM_MESH_KEY), or set allow_plaintext = true "
                              "(--allow-plaintext) to run the mesh unencrypted and open to anyone who can reach it")
    _check_http(c, source)
    need(c.max_loaded >= 0, "max_loaded", ">= 0 (0 = no limit)")
    need(c.prefix_cache_mb >= 0, "prefix_cache_mb", ">= 0")
    if c.engine == "llama" and not c.model and c.models_dir is None:
        raise ConfigError(f"{source('engine')}: key 'model' (or 'models_dir') is required when engine is "
                          f"'llama' (a GGUF path or '{BUNDLED_MODEL}')")
    if c.engine == "llama":
        for model in c.model:
            check_model(model, source("model"))
    if c.model_name is not None and len(c.model) + (c.models_dir is not None) > 1:
        raise ConfigError(f"{source('model_name')}: key 'model_name' names one model, and this node serves several "
                          "(each is advertised under its file stem)")
    if c.models_dir is not None and not Path(c.models_dir).expanduser().is_dir():
        raise _fail(source("models_dir"), "models_dir", "an existing folder", show_value(c.models_dir))


def http_address(text: str) -> tuple[str, int] | None:
    """`HOST:PORT` (`[v6]:PORT` for IPv6) as (host, port), or None when it is not one."""
    match = _HTTP.match(text)
    if match is None or int(match["port"]) > PORT_MAX:
        return None
    return match["host"].strip("[]"), int(match["port"])


def api_keys(config: NodeConfig) -> tuple[str, ...]:
    """The HTTP API keys `api_key` holds (comma-separated) and `api_keys_file` lists, blanks dropped.
    Raises OSError when the file cannot be read (`_check_http` turns that into a config error first)."""
    keys = [part.strip() for part in (config.api_key or "").split(",")]
    if config.api_keys_file is not None:
        text = Path(config.api_keys_file).expanduser().read_text(encoding="utf-8")
        keys += [line.split("#", 1)[0].strip() for line in text.splitlines()]
    return tuple(dict.fromkeys(key for key in keys if key))


def _check_http(c: NodeConfig, source) -> None:
    """Every `http` address parses; one beyond loopback needs an API key (as a bind beyond loopback needs the
    mesh key), unless allow_unauthenticated_http says the operator means it. The same holds for `metrics`."""
    if c.api_keys_file is not None:
        try:
            api_keys(c)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{source('api_keys_file')}: cannot read the API keys file {c.api_keys_file}: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
    if not 0 < c.http_max_body_mb <= MAX_HTTP_BODY_MB:
        raise _fail(source("http_max_body_mb"), "http_max_body_mb", f"> 0 and <= {MAX_HTTP_BODY_MB}",
                    show_value(c.http_max_body_mb))
    for key, address in [("http", a) for a in c.http] + [("metrics", a) for a in c.metrics]:
        parsed = http_address(address)
        if parsed is None:
            raise _fail(source(key), key, f"HOST:PORT with PORT 0-{PORT_MAX}", show_value(address))
        open_to_others = not (parsed[0] == "localhost" or parsed[0] == "::1" or parsed[0].startswith("127."))
        if open_to_others and not api_keys(c) and not c.allow_unauthenticated_http:
            raise ConfigError(f"{source(key)}: HTTP address {address} is reachable from other machines, and no "
                              "api_key is set: set one (api_key, --api-key or ZMQLLM_API_KEY; clients send "
                              "'Authorization: Bearer KEY'), or set allow_unauthenticated_http = true "
                              "(--allow-unauthenticated-http) to serve it open to anyone who can reach it")


def check_model(model: str, source: str) -> None:
    """A model path that is no readable GGUF file (or an unknown bundled name) fails here, naming the key and
    its source, before a daemon loads anything or `zmqllm up` starts one: it is a config error (exit 2)."""
    from zmqllm.engines.base import EngineError
    from zmqllm.engines.bundled import advertised_name, is_bundled
    from zmqllm.engines.llama import check_gguf

    try:
        if is_bundled(model):
            advertised_name(model)
        else:
            check_gguf(Path(model).expanduser())
    except EngineError as exc:
        raise ConfigError(f"{source}: key 'model': {exc.message}") from None


def data_dir_for(config: NodeConfig, env: Mapping[str, str] | None = None) -> Path:
    """Where this node keeps state; pure, so callers decide when to create it."""
    if config.data_dir is not None:
        return Path(config.data_dir).expanduser()
    return paths.data_root(os.environ if env is None else env) / "nodes" / config.name
