"""The OpenAI-compatible HTTP gateway on real daemons over real sockets, driven by the official `openai` client.

Every daemon binds port 0 for the mesh and `--http 127.0.0.1:0` for HTTP and is read from its ready line
(`http`); every wait is bounded."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import pytest

from conftest import LOCAL_HTTP, Daemon, alive_names, http_request, http_url, launch, run_cli, stop_process, wait_until

openai = pytest.importorskip("openai", reason="the test extra installs openai")



def client_for(daemon: Daemon, key: str = "none", prefix: str = "/v1") -> openai.OpenAI:
    return openai.OpenAI(base_url=http_url(daemon) + prefix, api_key=key, max_retries=0, timeout=30)


def test_openai_client_lists_completes_chats_and_streams(http_pair):
    a, _ = http_pair
    for prefix in ("/v1", ""):  # as llama-server, the routes answer without /v1 too
        client = client_for(a, prefix=prefix)
        models = client.models.list().data
        assert [m.id for m in models] == ["echo"] and models[0].model_extra["nodes"] == ["a", "b"]

    client = client_for(a)
    done = client.completions.create(model="echo", prompt="one two three", max_tokens=5, temperature=0)
    assert done.choices[0].text == "one two three one two "
    assert done.choices[0].finish_reason == "length" and done.id.startswith("cmpl-") and done.created > 0
    assert (done.usage.prompt_tokens, done.usage.completion_tokens, done.usage.total_tokens) == (3, 5, 8)
    assert done.system_fingerprint and done.model == "echo"

    chat = client.chat.completions.create(model="echo", max_completion_tokens=4, stop=["never"], seed=7,
                                          messages=[{"role": "system", "content": "be brief"},
                                                    {"role": "user", "content": "hello there"}])
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content == "hello there hello there "
    assert chat.id.startswith("chatcmpl-") and chat.usage.completion_tokens == 4

    chunks = list(client.chat.completions.create(model="echo", max_tokens=6, stream=True,
                                                 stream_options={"include_usage": True},
                                                 messages=[{"role": "user", "content": "a b c"}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "a b c a b c "
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    assert len({c.id for c in chunks}) == 1

    streamed = list(client.completions.create(model="echo", prompt="x y", max_tokens=3, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == "x y x "


def test_http_requests_are_tasks_of_the_node(http_pair, zmqllm_env):
    """A request is journaled and listed like a `zmqllm submit`, and says which task and node it was."""
    a, _ = http_pair
    status, headers, body = http_request(a, "POST", "/v1/completions", {"prompt": "p q", "max_tokens": 2, "stream": False,
                                                                  "frobnicate": True},  # unknown: ignored
                                    headers={"x-request-id": "req-42", "Content-Type": "application/json"})
    assert status == 200 and headers["x-request-id"] == "req-42"
    assert headers["x-zmqllm-executed-by"] in ("a", "b")
    task_id = headers["x-zmqllm-task-id"]
    assert json.loads(body)["id"] == "cmpl-" + task_id
    listed = run_cli(zmqllm_env, "tasks", "--connect", a.endpoint, "--json")
    row = next(t for t in json.loads(listed.stdout) if t["task_id"] == task_id)
    assert row["state"] == "done" and row["tokens"] == 2
    status, headers, _ = http_request(a, "GET", "/health")
    assert status == 200 and len(headers["x-request-id"]) >= 16  # made when the client sent none


def test_unknown_model_is_404_and_bad_parameter_is_400_in_openai_shape(http_pair):
    a, _ = http_pair
    client = client_for(a)
    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(model="gpt-9", prompt="x", max_tokens=1)
    assert missing.value.body["param"] == "model" and "echo" in missing.value.body["message"]
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="echo", temperature=5, messages=[{"role": "user", "content": "x"}])
    assert bad.value.body["param"] == "temperature" and bad.value.body["type"] == "invalid_request_error"
    status, _, body = http_request(a, "POST", "/v1/completions", {"prompt": "x", "stop": [1, 2]})
    assert status == 400 and json.loads(body)["error"]["param"] == "stop"
    status, _, body = http_request(a, "POST", "/v1/chat/completions", {"messages": "hi"})
    assert status == 400 and json.loads(body)["error"]["param"] == "messages"
    status, _, body = http_request(a, "POST", "/v1/chat/completions", b"{not json")
    assert status == 400 and json.loads(body)["error"]["code"] == "invalid_json"
    status, _, body = http_request(a, "GET", "/v1/nowhere")
    assert status == 404 and "error" in json.loads(body)


def test_every_node_busy_is_429_with_retry_after(spawn):
    a = spawn("busy", *LOCAL_HTTP, "--slots", "1", "--queue-limit", "0", "--echo-rate", "20")
    client = client_for(a)
    with client.completions.create(model="echo", prompt="hold", max_tokens=400, stream=True) as hold:
        next(iter(hold))  # the one slot is taken
        status, headers, body = http_request(a, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 1})
    assert status == 429 and headers["retry-after"] == "1"
    assert json.loads(body)["error"]["code"] == "busy"


def test_closing_a_stream_midway_cancels_the_task(spawn, zmqllm_env):
    a = spawn("a", *LOCAL_HTTP, "--echo-rate", "20")
    b = spawn("b", "--peer", a.endpoint, "--echo-rate", "20")
    wait_until(lambda: alive_names(a) == {"a", "b"}, 10, what="a sees b")
    url = urlsplit(http_url(a))
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    conn.request("POST", "/v1/completions", json.dumps({"prompt": "tick", "max_tokens": 2000, "stream": True,
                                                        "x": 1}),
                 {"x-zmqllm-peer": "b"})  # run it on the other node: the cancel crosses the mesh
    response = conn.getresponse()
    task_id = response.getheader("x-zmqllm-task-id")
    assert response.status == 200 and response.readline().startswith(b"data: ")
    with b.client() as executor:
        assert executor.status()["tasks"]["running"] == 1
        conn.close()  # the client goes away mid-stream
        wait_until(lambda: executor.status()["tasks"]["running"] == 0, 10, what="the executor to stop the task")

    def ended() -> dict | None:
        shown = run_cli(zmqllm_env, "result", task_id, "--connect", a.endpoint, "--json")
        found = json.loads(shown.stdout) if shown.returncode == 0 else {}
        return found if found.get("state") == "done" else None

    result = wait_until(ended, 10, what="the task to end")
    assert result["finish_reason"] == "cancelled" and result["tokens"] < 2000


def test_api_key_is_required_when_set(spawn):
    a = spawn("locked", *LOCAL_HTTP, "--api-key", "k-one, k-two")
    with pytest.raises(openai.AuthenticationError):
        client_for(a, key="wrong").models.list()
    status, _, body = http_request(a, "GET", "/v1/models")
    assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
    assert [m.id for m in client_for(a, key="k-two").models.list().data] == ["echo"]
    assert http_request(a, "GET", "/health")[0] == 200  # probes need no key
    assert not any("k-one" in line or "k-two" in line for line in a.log_lines)


def test_http_beyond_loopback_without_a_key_refuses_to_start(zmqllm_env):
    result = run_cli(zmqllm_env, "daemon", "--name", "open", "--bind", "tcp://127.0.0.1:0", "--http", "0.0.0.0:0",
                     timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "flag --http" in lines[0] and "api_key" in lines[0]
    env = {**zmqllm_env, "ZMQLLM_ALLOW_UNAUTHENTICATED_HTTP": "true"}
    daemon = launch(env, "open", "--http", "0.0.0.0:0")
    try:
        assert http_url(daemon).startswith("http://0.0.0.0:")
    finally:
        assert stop_process(daemon.proc) == 0


@pytest.mark.llama
def test_greedy_completion_over_http_equals_zmqllm_submit(spawn, zmqllm_env):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: bin/setup installs it")
    a = spawn("g", *LOCAL_HTTP, "--model", "bundled:gemma3-270m", "--threads", "1", engine="llama")
    prompt = "The capital of France is"
    submitted = run_cli(zmqllm_env, "submit", prompt, "--connect", a.endpoint, "--max-tokens", "16",
                        "--temperature", "0", "--json", timeout=120)
    expected = json.loads(submitted.stdout.strip().splitlines()[-1])
    assert expected["type"] == "done", submitted.stdout
    over_http = client_for(a).completions.create(model="gemma3-270m", prompt=prompt, max_tokens=16, temperature=0)
    assert over_http.choices[0].text == expected["text"]
    assert over_http.usage.completion_tokens == expected["usage"]["completion_tokens"]


def test_a_daemon_stopping_mid_stream_ends_the_stream_and_exits_cleanly(spawn):
    """SIGTERM: the node ends its tasks (here: cancelled, as for any client), the stream closes properly and
    the daemon exits 0 within the stop timeout."""
    a = spawn("a", *LOCAL_HTTP, "--echo-rate", "20")
    stream = client_for(a).completions.create(model="echo", prompt="tick", max_tokens=2000, stream=True)
    chunks = iter(stream)
    next(chunks)
    assert stop_process(a.proc) == 0
    rest = list(chunks)
    assert rest and rest[-1].choices[0].finish_reason == "cancelled"


def test_a_stream_survives_its_executor_being_killed(spawn):
    """SIGKILL the node running an HTTP stream: the mesh fails it over and the client sees one unbroken text."""
    a = spawn("a", *LOCAL_HTTP, "--echo-rate", "20")
    b = spawn("b", "--peer", a.endpoint, "--echo-rate", "20")
    wait_until(lambda: alive_names(a) == {"a", "b"}, 10, what="a sees b")
    stream = client_for(a).with_options(default_headers={"x-zmqllm-peer": "b"}).completions.create(
        model="echo", prompt="w", max_tokens=40, stream=True)
    texts = []
    for chunk in stream:
        texts.append(chunk.choices[0].text)
        if len(texts) == 5:
            b.kill()
    assert "".join(texts) == "w " * 40 and chunk.choices[0].finish_reason == "length"


@pytest.mark.llama
def test_a_greedy_stream_whose_executor_is_killed_equals_an_uninterrupted_run(spawn):
    """The acceptance run on the bundled model (slots = 1): SIGKILL the executor mid-SSE; the stream completes on
    the other node with the text an uninterrupted greedy run gives, nothing duplicated or missing."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: bin/setup installs it")
    llama = ("--model", "bundled:gemma3-270m", "--threads", "1", "--slots", "1")
    a = spawn("la", *LOCAL_HTTP, *llama, engine="llama")
    b = spawn("lb", "--peer", a.endpoint, *llama, engine="llama")
    wait_until(lambda: alive_names(a) == {"la", "lb"}, 20, what="la sees lb")
    request = dict(model="gemma3-270m", prompt="The history of the city of Paris", max_tokens=40, temperature=0)
    expected = client_for(a).with_options(default_headers={"x-zmqllm-peer": "la"}).completions.create(**request)
    stream = client_for(a).with_options(default_headers={"x-zmqllm-peer": "lb"}).completions.create(
        **request, stream=True)
    texts = []
    for chunk in stream:
        texts.append(chunk.choices[0].text)
        if len(texts) == 5:
            b.kill()
    assert len(texts) > 5 and "".join(texts) == expected.choices[0].text
    assert chunk.choices[0].finish_reason == expected.choices[0].finish_reason


def test_n_choices_run_as_separate_tasks_spread_over_the_mesh(http_pair):
    a, _ = http_pair
    whole = client_for(a).completions.create(model="echo", prompt="one two", max_tokens=3, n=2)
    assert [(c.index, c.text) for c in whole.choices] == [(0, "one two one "), (1, "one two one ")]
    assert whole.usage.completion_tokens == 6
    status, headers, _ = http_request(a, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 1, "n": 2})
    assert status == 200 and len(headers["x-zmqllm-task-id"].split(",")) == 2
    assert set(headers["x-zmqllm-executed-by"].split(",")) == {"a", "b"}  # two idle nodes: one choice each
    chunks = list(client_for(a).chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "hi"}], max_tokens=2, n=3, stream=True))
    texts = {index: "".join(c.choices[0].delta.content or "" for c in chunks if c.choices[0].index == index)
             for index in range(3)}
    assert texts == {0: "hi hi ", 1: "hi hi ", 2: "hi hi "}
    assert sum(1 for c in chunks if c.choices[0].finish_reason == "length") == 3


def test_a_deadline_header_ends_a_slow_request_with_504(spawn):
    a = spawn("a", *LOCAL_HTTP, "--echo-rate", "5")
    status, _, body = http_request(a, "POST", "/v1/completions", {"prompt": "slow", "max_tokens": 50},
                                   {"x-zmqllm-deadline": "0.5"})
    assert status == 504 and json.loads(body)["error"]["code"] == "deadline"
    status, _, body = http_request(a, "POST", "/v1/completions", {"prompt": "x"}, {"x-zmqllm-deadline": "soon"})
    assert status == 400 and json.loads(body)["error"]["param"] == "x-zmqllm-deadline"


def test_the_body_limit_is_a_setting(spawn):
    a = spawn("a", *LOCAL_HTTP, "--http-max-body-mb", "0.01")
    status, _, body = http_request(a, "POST", "/v1/completions", {"prompt": "x" * 20_000, "max_tokens": 1})
    assert status == 413 and "10485 bytes" in json.loads(body)["error"]["message"]
    assert http_request(a, "POST", "/v1/completions", {"prompt": "x" * 1000, "max_tokens": 1})[0] == 200
