"""Tests for zmqllm.node.config: layering, parsing, validation messages, examples."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from zmqllm.node import config as cfgmod
from zmqllm.node.config import KEYS, ConfigError, NodeConfig, api_keys, data_dir_for, load_config

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = [REPO / "configs" / "single.toml",
            *(REPO / "configs" / "mesh" / f"node-{n}.toml" for n in "abc")]


def write(tmp_path: Path, text: str, name: str = "x.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(**kwargs) -> str:
    kwargs.setdefault("env", {})
    with pytest.raises(ConfigError) as info:
        load_config(**kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- layering -------------------------------------------------------------

def test_defaults_without_any_layer():
    c = load_config(env={})
    assert c.bind == "tcp://127.0.0.1:5555"
    assert (c.slots, c.engine, c.peers, c.json_logs) == (4, "echo", (), False)
    assert cfgmod.NAME_PATTERN.match(c.name)


def test_precedence_flag_over_env_over_file_over_default(tmp_path):
    path = write(tmp_path, "slots = 2\nqueue_limit = 10\nbatch = 100\n")
    c = load_config(path, env={"ZMQLLM_SLOTS": "3", "ZMQLLM_QUEUE_LIMIT": "11"},
                    overrides={"slots": 5})
    assert c.slots == 5           # flag beats env and file
    assert c.queue_limit == 11    # env beats file
    assert c.batch == 100         # file beats default
    assert c.ctx == 2048          # default


def test_none_override_means_flag_not_given(tmp_path):
    path = write(tmp_path, "slots = 2\n")
    c = load_config(path, env={"ZMQLLM_SLOTS": "3"}, overrides={"slots": None})
    assert c.slots == 3


def test_env_defaults_to_os_environ(monkeypatch):
    monkeypatch.setenv("ZMQLLM_SLOTS", "7")
    assert load_config().slots == 7


def test_env_ignores_non_config_zmqllm_variables():
    c = load_config(env={"ZMQLLM_CONNECT": "tcp://nowhere:1", "ZMQLLM_HOME": "/tmp/h",
                         "ZMQLLM_WHATEVER": "x", "ZMQLLM_NAME": "envnode"})
    assert c.name == "envnode"


def test_default_name_sanitises_hostname(monkeypatch):
    monkeypatch.setattr(cfgmod.socket, "gethostname", lambda: "-my host!.local")
    assert load_config(env={}).name == "my-host-.local"
    monkeypatch.setattr(cfgmod.socket, "gethostname", lambda: "___")
    assert load_config(env={}).name == cfgmod.FALLBACK_NAME


# --- environment parsing --------------------------------------------------

@pytest.mark.parametrize("text,value", [
    ("1", True), ("TRUE", True), ("yes", True), ("On", True),
    ("0", False), ("false", False), ("NO", False), ("off", False)])
def test_env_bools(text, value):
    assert load_config(env={"ZMQLLM_JSON_LOGS": text}).json_logs is value


def test_env_ints_floats_lists_and_optionals():
    c = load_config(env={"ZMQLLM_CTX": " 4096 ", "ZMQLLM_GPU_LAYERS": "-1",
                         "ZMQLLM_HEARTBEAT_INTERVAL": "0.25",
                         "ZMQLLM_PEERS": "tcp://127.0.0.1:5556, ipc:///tmp/x,,",
                         "ZMQLLM_THREADS": "", "ZMQLLM_MODEL_NAME": "m"})
    assert (c.ctx, c.gpu_layers, c.heartbeat_interval) == (4096, -1, 0.25)
    assert c.peers == ("tcp://127.0.0.1:5556", "ipc:///tmp/x")
    assert c.threads is None and c.model_name == "m"


def test_file_values_and_float_accepts_int(tmp_path):
    path = write(tmp_path, 'peers = ["tcp://127.0.0.1:5555"]\nheartbeat_interval = 1\n'
                           'flash_attn = true\nlog_level = "DEBUG"\n')
    c = load_config(path, env={})
    assert c.peers == ("tcp://127.0.0.1:5555",)
    assert c.heartbeat_interval == 1.0 and isinstance(c.heartbeat_interval, float)
    assert c.flash_attn is True and c.log_level == "debug"
    assert c.suspect_after_s == 2.0 and c.dead_after_s == 4.0


def test_a_model_without_an_engine_means_llama():
    assert load_config(env={}, overrides={"model": "bundled:gemma3-270m"}).engine == "llama"
    assert load_config(env={"ZMQLLM_MODEL": "bundled:gemma3-270m", "ZMQLLM_ENGINE": "echo"}).engine == "echo"
    assert load_config(env={}).engine == "echo"


def test_flash_attention_is_on_by_default_only_where_llama_batches():
    llama = {"engine": "llama", "model": "bundled:gemma3-270m"}
    assert load_config(env={}, overrides=llama).flash_attn is False  # slots = 1: as llama-cpp-python
    assert load_config(env={}, overrides={**llama, "slots": 4}).flash_attn is True  # as llama-server's auto
    assert load_config(env={"ZMQLLM_FLASH_ATTN": "false"}, overrides={**llama, "slots": 4}).flash_attn is False
    assert load_config(env={}, overrides={**llama, "flash_attn": True}).flash_attn is True


# --- file errors ------------------------------------------------------------

def test_unknown_key_suggests(tmp_path):
    path = write(tmp_path, "heartbeat_intervl = 0.2\n")
    assert error_of(path=path) == (f"{path}: unknown key 'heartbeat_intervl' "
                                   "(did you mean 'heartbeat_interval'?)")


def test_unknown_key_without_suggestion(tmp_path):
    path = write(tmp_path, "zzzz = 1\n")
    assert error_of(path=path) == f"{path}: unknown key 'zzzz'"


def test_missing_file():
    assert error_of(path="nope.toml") == \
        "cannot read config file 'nope.toml': No such file or directory"


def test_invalid_toml(tmp_path):
    path = write(tmp_path, "slots = \n")
    assert error_of(path=path).startswith(f"{path}: invalid TOML: ")


def test_non_utf8_file(tmp_path):
    path = tmp_path / "x.toml"
    path.write_bytes(b'name = "\xff"\n')
    assert error_of(path=path).startswith(f"{path}: invalid TOML: not UTF-8")


@pytest.mark.parametrize("line,expected", [
    ('slots = "four"', "key 'slots' must be an integer, got string 'four'"),
    ("slots = true", "key 'slots' must be an integer, got boolean true"),
    ("slots = 4.0", "key 'slots' must be an integer, got float 4.0"),
    ("echo_rate = false", "key 'echo_rate' must be a number, got boolean false"),
    ("json_logs = 1", "key 'json_logs' must be a boolean, got integer 1"),
    ("name = 5", "key 'name' must be a string, got integer 5"),
    ('peers = "tcp://a:1"', "key 'peers' must be a list of strings, got string 'tcp://a:1'"),
    ("peers = [1]", "key 'peers' must be a list of strings, got array"),
    ('model = ""', "key 'model' must be a non-empty string, got ''"),
    ("echo_rate = inf", "key 'echo_rate' must be a finite number, got float inf"),
    ("[slots]\nx = 1", "key 'slots' must be an integer, got table"),
])
def test_file_type_errors(tmp_path, line, expected):
    path = write(tmp_path, line + "\n")
    assert error_of(path=path) == f"{path}: {expected}"


# --- environment and flag errors ---------------------------------------------

@pytest.mark.parametrize("var,text,expected", [
    ("ZMQLLM_SLOTS", "x", "key 'slots' must be an integer, got 'x'"),
    ("ZMQLLM_SLOTS", "4.0", "key 'slots' must be an integer, got '4.0'"),
    ("ZMQLLM_ECHO_RATE", "fast", "key 'echo_rate' must be a number, got 'fast'"),
    ("ZMQLLM_ECHO_RATE", "nan", "key 'echo_rate' must be a finite number, got 'nan'"),
    ("ZMQLLM_JSON_LOGS", "maybe",
     "key 'json_logs' must be a boolean (true/false, 1/0, yes/no, on/off), got 'maybe'"),
])
def test_env_type_errors(var, text, expected):
    assert error_of(env={var: text}) == f"environment {var}: {expected}"


def test_env_range_error_names_variable():
    assert error_of(env={"ZMQLLM_SLOTS": "0"}) == \
        "environment ZMQLLM_SLOTS: key 'slots' must be >= 1, got integer 0"


@pytest.mark.parametrize("key,value,expected", [
    ("slots", "4", "flag --slots: key 'slots' must be an integer, got string '4'"),
    ("queue_limit", -1, "flag --queue-limit: key 'queue_limit' must be >= 0, got integer -1"),
    ("send_buffer_mb", 0, "flag --send-buffer-mb: key 'send_buffer_mb' must be > 0 and <= 4096, got float 0.0"),
    ("json_logs", 1, "flag --json-logs: key 'json_logs' must be a boolean, got integer 1"),
    ("slot", 1, "flag --slot: unknown key 'slot' (did you mean 'slots'?)"),
])
def test_flag_errors(key, value, expected):
    assert error_of(overrides={key: value}) == expected


# --- ranges and consistency -------------------------------------------------

@pytest.mark.parametrize("line,expected", [
    ("slots = 0", "key 'slots' must be >= 1, got integer 0"),
    ("queue_limit = -1", "key 'queue_limit' must be >= 0, got integer -1"),
    ("heartbeat_interval = 0", "key 'heartbeat_interval' must be > 0, got float 0.0"),
    ("suspect_after = 0", "key 'suspect_after' must be > 0, got float 0.0"),
    ("suspect_after = 4", "key 'suspect_after' must be less than dead_after (4.0, "
                          "from default), got float 4.0"),
    ("dead_after = 1.5", "key 'dead_after' must be greater than suspect_after (2.0), "
                         "got float 1.5"),
    ("echo_rate = -1", "key 'echo_rate' must be >= 0, got float -1.0"),
    ("ctx = 15", "key 'ctx' must be >= 16, got integer 15"),
    ("batch = 0", "key 'batch' must be >= 1, got integer 0"),
    ("threads = 0", "key 'threads' must be >= 1, got integer 0"),
    ("gpu_layers = -2", "key 'gpu_layers' must be >= -1 (-1 = all), got integer -2"),
    ('engine = "gpt"', "key 'engine' must be one of echo, llama, got string 'gpt'"),
    ('log_level = "loud"',
     "key 'log_level' must be one of debug, info, warning, error, got string 'loud'"),
    ('engine = "llama"', "key 'model' (or 'models_dir') is required when engine is 'llama' "
                         "(a GGUF path or 'bundled:gemma3-270m')"),
    ('name = "-bad"', "key 'name' must be 1-64 letters, digits, '_', '.' or '-', "
                      "starting with a letter or digit, got string '-bad'"),
    (f'name = "{"n" * 65}"', "key 'name' must be 1-64"),
    ('bind = "http://x:1"', "key 'bind' must be an endpoint tcp://HOST:PORT or ipc://PATH, "
                            "got string 'http://x:1'"),
    ('bind = "tcp://127.0.0.1:65536"', "key 'bind' must be an endpoint with PORT 0-65535"),
    ('bind = "tcp://127.0.0.1"', "key 'bind' must be an endpoint"),
    ('advertise = "tcp://*:5555"', "key 'advertise' must be a dialable endpoint"),
    ('peers = ["tcp://127.0.0.1:5556", "tcp://h:*"]', "key 'peers' must be a dialable"),
    ('peers = ["udp://h:1"]', "key 'peers' must be an endpoint"),
])
def test_range_errors_name_key_and_file(tmp_path, line, expected):
    path = write(tmp_path, line + "\n")
    assert error_of(path=path).startswith(f"{path}: {expected}")


def test_cross_key_error_names_source_of_each(tmp_path):
    path = write(tmp_path, "dead_after = 3.0\n")
    assert error_of(path=path, env={"ZMQLLM_SUSPECT_AFTER": "3"}) == (
        "environment ZMQLLM_SUSPECT_AFTER: key 'suspect_after' must be less than "
        f"dead_after (3.0, from {path}), got float 3.0")


def test_llama_error_names_where_engine_was_set():
    assert error_of(overrides={"engine": "llama"}).startswith("flag --engine: key 'model'")
    c = load_config(env={}, overrides={"engine": "llama", "model": "bundled:gemma3-270m"})
    assert c.engine == "llama" and c.model == ("bundled:gemma3-270m",)


@pytest.mark.parametrize("endpoint", [
    "tcp://*:5555", "tcp://0.0.0.0:0", "tcp://[::1]:5555", "tcp://eth0:*",
    "ipc:///tmp/zmqllm.sock", "tcp://host-1.example.org:65535"])
def test_valid_bind_endpoints(endpoint):
    assert load_config(env={}, overrides={"bind": endpoint, "allow_plaintext": True}).bind == endpoint


@pytest.mark.parametrize("endpoint", ["tcp://*:5555", "tcp://0.0.0.0:0", "tcp://eth0:*", "tcp://192.0.2.7:5555"])
def test_a_bind_other_machines_reach_needs_a_mesh_key_or_consent(endpoint, tmp_path):
    message = error_of(overrides={"bind": endpoint})
    assert message.startswith(f"flag --bind: {endpoint} is reachable from other machines, and no mesh_key is set")
    assert "zmqllm keys new" in message and "allow_plaintext = true" in message
    from zmqllm.net import keys

    key = keys.create(tmp_path / "mesh.key")
    assert load_config(env={"ZMQLLM_MESH_KEY": key.path}, overrides={"bind": endpoint}).mesh_key == key.path
    for local in ("tcp://127.0.0.1:5555", "tcp://localhost:0", "tcp://[::1]:5555", "ipc:///tmp/zmqllm.sock"):
        assert load_config(env={}, overrides={"bind": local}).mesh_key is None


# --- KEYS, examples, data dir -------------------------------------------------

def test_keys_table_matches_dataclass():
    assert list(KEYS) == [f.name for f in dataclasses.fields(NodeConfig) if f.name != "per_model"]  # a table, no flag
    assert KEYS["queue_limit"].env_var == "ZMQLLM_QUEUE_LIMIT"
    assert KEYS["queue_limit"].flag == "--queue-limit"
    assert KEYS["queue_limit"].default == 64 and KEYS["name"].default is None


def gguf(tmp_path: Path) -> str:
    """A file that passes the model check (it only reads the GGUF magic)."""
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + bytes(8))
    return str(path)


def test_slots_default_per_engine(tmp_path):
    model = gguf(tmp_path)
    assert load_config(env={}).slots == 4
    assert load_config(env={}, overrides={"engine": "llama", "model": model}).slots == 1
    assert load_config(env={}, overrides={"engine": "llama", "model": model, "slots": 4}).slots == 4
    assert all(k.help and "\n" not in k.help for k in KEYS.values())


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_load(path):
    assert isinstance(load_config(path, env={}), NodeConfig)


def test_mesh_examples_form_loopback_mesh():
    a, b, c = (load_config(p, env={}) for p in EXAMPLES[1:])
    assert [n.bind for n in (a, b, c)] == [f"tcp://127.0.0.1:{p}" for p in (5555, 5556, 5557)]
    assert a.peers == () and b.peers == c.peers == (a.bind,)
    assert {n.engine for n in (a, b, c)} == {"echo"}
    assert len({n.name for n in (a, b, c)}) == 3


def test_single_example_documents_every_key():
    text = EXAMPLES[0].read_text(encoding="utf-8")
    single = load_config(EXAMPLES[0], env={})
    assert single.name == "solo" and single.engine == "echo"
    for key in KEYS:
        assert f"\n{key} = " in text or f"\n# {key} = " in text, key


def test_data_dir_precedence():
    node = NodeConfig(name="n1")
    assert data_dir_for(dataclasses.replace(node, data_dir="/d"), {"ZMQLLM_HOME": "/h"}) \
        == Path("/d")
    assert data_dir_for(node, {"ZMQLLM_HOME": "/h", "XDG_DATA_HOME": "/x"}) \
        == Path("/h/nodes/n1")
    assert data_dir_for(node, {"XDG_DATA_HOME": "/x"}) == Path("/x/zmqllm/nodes/n1")
    assert data_dir_for(node, {"HOME": "/home/u"}) == \
        Path("/home/u/.local/share/zmqllm/nodes/n1")


def test_data_dir_for_does_not_create(tmp_path):
    target = data_dir_for(NodeConfig(name="n2"), {"ZMQLLM_HOME": str(tmp_path)})
    assert target == tmp_path / "nodes" / "n2" and not target.exists()


# --- the model is checked with the rest of the config --------------------------

def test_a_missing_model_file_is_a_config_error_naming_the_key_and_its_source(tmp_path):
    missing = str(tmp_path / "nope.gguf")
    message = error_of(overrides={"model": missing})
    assert message.startswith("flag --model: key 'model': ") and missing in message and "does not exist" in message
    message = error_of(env={"ZMQLLM_MODEL": missing})
    assert message.startswith("environment ZMQLLM_MODEL: key 'model'")
    path = write(tmp_path, f'model = "{missing}"\n')
    assert error_of(path=path).startswith(f"{path}: key 'model'")


def test_a_file_that_is_no_gguf_and_an_unknown_bundled_model_are_config_errors(tmp_path):
    notes = write(tmp_path, "these are not weights\n", "notes.gguf")
    assert "not a GGUF file" in error_of(overrides={"model": str(notes)})
    assert "unknown bundled model" in error_of(overrides={"model": "bundled:nope"})
    assert load_config(env={}, overrides={"model": gguf(tmp_path)}).engine == "llama"


def test_resolve_config_says_where_every_value_came_from(tmp_path):
    path = write(tmp_path, "ctx = 1024\nqueue_limit = 3\n")
    config, sources = cfgmod.resolve_config(path, env={"ZMQLLM_QUEUE_LIMIT": "5"}, overrides={"batch": 64})
    assert (config.ctx, config.queue_limit, config.batch) == (1024, 5, 64)
    assert sources["ctx"] == str(path)
    assert sources["queue_limit"] == "environment ZMQLLM_QUEUE_LIMIT"
    assert sources["batch"] == "flag --batch"
    assert sources["heartbeat_interval"] == "default" and set(sources) == set(KEYS)


def test_api_keys_come_from_api_key_and_the_keys_file(tmp_path):
    keys = tmp_path / "http.keys"
    keys.write_text("# team keys\nk-one\n\n  k-two   # laptop\nk-one\n")
    c = load_config(env={"ZMQLLM_API_KEY": "k-env"}, overrides={"api_keys_file": str(keys),
                                                                "http": ("0.0.0.0:8080",)})
    assert api_keys(c) == ("k-env", "k-one", "k-two")


def test_an_unreadable_keys_file_and_a_bad_body_limit_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the API keys file .*missing"):
        load_config(env={}, overrides={"api_keys_file": str(tmp_path / "missing")})
    with pytest.raises(ConfigError, match="http_max_body_mb"):
        load_config(env={"ZMQLLM_HTTP_MAX_BODY_MB": "0"})


def test_a_metrics_address_beyond_loopback_needs_a_key_as_http_does():
    with pytest.raises(ConfigError, match="METRICS: HTTP address 0.0.0.0:9464 is reachable from other machines"):
        load_config(env={"ZMQLLM_METRICS": "0.0.0.0:9464"})
    assert load_config(env={"ZMQLLM_METRICS": "0.0.0.0:9464", "ZMQLLM_API_KEY": "k"}).metrics == ("0.0.0.0:9464",)


def test_per_model_tables_set_slots_ctx_and_template_for_one_model(tmp_path):
    from zmqllm.node.models import for_model

    path = write(tmp_path, 'model = ["bundled:gemma3-270m"]\nslots = 1\n'
                           '[models.gemma3-270m]\nslots = 4\nctx = 1024\nchat_format = "plain"\n'
                           '[models.other]\nprefix_cache = "off"\n')
    config = load_config(path, env={})
    own = for_model(config, "gemma3-270m")
    assert (own.slots, own.ctx, own.chat_format, own.flash_attn) == (4, 1024, "plain", True)
    assert for_model(config, "other").prefix_cache == "off" and for_model(config, "x") == config
    assert config.slots == 1 and config.ctx == 2048  # the node's own settings are untouched


@pytest.mark.parametrize(("table", "expected"), [
    ("[models.m]\nbind = \"tcp://x:1\"\n", "[models.m]: key 'bind' cannot be set per model"),
    ("[models.m]\nslots = 0\n", "[models.m]: key 'slots' must be a valid value"),
    ("[models.m]\nctx = \"big\"\n", "[models.m]: key 'ctx' must be an integer"),
    ("models = 3\n", "key 'models' must be"),
])
def test_per_model_tables_refuse_what_they_cannot_set(tmp_path, table, expected):
    assert expected in error_of(path=write(tmp_path, table))
