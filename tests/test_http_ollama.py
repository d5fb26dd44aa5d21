"""Ollama's API (`zmqllm.http.ollama`): its pure half in milliseconds, then real daemons over real sockets driven
by the official `ollama` client (and by plain HTTP for what the client hides). Every wait is bounded."""

from __future__ import annotations

import json

import pytest

from conftest import LOCAL_HTTP, Daemon, alive_names, http_request, http_url, run_cli, wait_until
from zmqllm import __version__
from zmqllm.core.validation import MAX_TOKENS_LIMIT
from zmqllm.http import ollama as api
from zmqllm.http.errors import ApiError
from zmqllm.http.openai import DEFAULT_MAX_TOKENS

ollama = pytest.importorskip("ollama", reason="the test extra installs ollama")

CLIENT_TIMEOUT_S = 30.0
T0 = 1_700_000_000.25
DONE = {"finish_reason": "length", "usage": {"prompt_tokens": 3, "completion_tokens": 5},
        "timings": {"ttft_ms": 2.5, "total_ms": 10.0, "decode_tok_s": 400.0}, "executed_by": "b"}


# -- pure: requests ----------------------------------------------------------------------------------------


def test_a_generate_runs_through_the_template_unless_raw():
    parsed = api.parse("generate", {"model": "m", "prompt": "hi", "system": "be brief", "keep_alive": "5m",
                                    "options": {"temperature": 0, "top_k": 40, "top_p": 0.9, "min_p": 0.05,
                                                "repeat_penalty": 1.1, "seed": 7, "num_predict": 9,
                                                "stop": ["\n"], "num_ctx": 4096, "mirostat": 0}})
    spec = parsed.spec("t1", peer="b")
    assert (spec.task_id, spec.prompt, spec.max_tokens, spec.model, spec.peer, spec.stop) == \
        ("t1", "", 9, "m", "b", ("\n",))
    assert spec.messages == ({"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"})
    assert spec.params == {"temperature": 0.0, "top_k": 40, "top_p": 0.9, "min_p": 0.05, "repeat_penalty": 1.1,
                           "seed": 7}  # num_ctx, mirostat: ignored, as Ollama's runner does
    assert parsed.stream and parsed.choices == 1 and not parsed.loads_only  # Ollama streams unless told not to
    raw = api.parse("generate", {"prompt": "The sky is", "system": "ignored when raw", "raw": True,
                                 "stream": False}).spec("t2")
    assert (raw.prompt, raw.messages, raw.max_tokens, raw.params, raw.model) == \
        ("The sky is", (), DEFAULT_MAX_TOKENS, {}, None)


def test_a_chat_keeps_its_messages():
    parsed = api.parse("chat", {"model": "m", "stream": False, "tools": [], "think": False, "format": "",
                                "messages": [{"role": "system", "content": "terse"},
                                             {"role": "user", "content": "a", "images": []},
                                             {"role": "assistant", "content": "b", "thinking": "hm"},
                                             {"role": "user", "content": "c"}]})
    assert parsed.spec("t").messages == ({"role": "system", "content": "terse"}, {"role": "user", "content": "a"},
                                         {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"})
    assert not parsed.stream and parsed.spec("t").prompt == ""


def test_special_values_of_seed_and_num_predict():
    """A negative seed is a random one (no seed); a negative num_predict runs until the model stops."""
    parsed = api.parse("generate", {"prompt": "x", "options": {"seed": -1, "num_predict": -1}})
    assert "seed" not in parsed.params and parsed.max_tokens == MAX_TOKENS_LIMIT
    assert api.parse("generate", {"prompt": "x", "options": {"stop": "END"}}).stop == ("END",)


def test_nothing_to_generate_only_loads():
    assert api.parse("generate", {"model": "m"}).loads_only
    assert api.parse("chat", {"model": "m", "messages": []}).loads_only
    unload = api.parse("generate", {"model": "m", "keep_alive": 0})
    assert unload.loads_only and unload.unload
    reply = api.loaded("chat", "m", unload=False, clock=lambda: T0)
    assert reply == {"model": "m", "created_at": "2023-11-14T22:13:20.250000Z",
                     "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "load"}
    assert api.loaded("generate", "m", unload=True, clock=lambda: T0)["done_reason"] == "unload"


@pytest.mark.parametrize("kind,body,param", [
    ("generate", {"prompt": 3}, "prompt"),
    ("generate", {"prompt": "x", "model": 7}, "model"),
    ("generate", {"prompt": "x", "stream": "yes"}, "stream"),
    ("generate", {"prompt": "x", "raw": 1}, "raw"),
    ("generate", {"prompt": "x", "system": ["s"]}, "system"),
    ("generate", {"prompt": "x", "options": [1]}, "options"),
    ("generate", {"prompt": "x", "options": {"temperature": "warm"}}, "options.temperature"),
    ("generate", {"prompt": "x", "options": {"temperature": -0.5}}, "options.temperature"),
    ("generate", {"prompt": "x", "options": {"top_p": 1.5}}, "options.top_p"),
    ("generate", {"prompt": "x", "options": {"top_k": 2.5}}, "options.top_k"),
    ("generate", {"prompt": "x", "options": {"repeat_penalty": 0}}, "options.repeat_penalty"),
    ("generate", {"prompt": "x", "options": {"seed": True}}, "options.seed"),
    ("generate", {"prompt": "x", "options": {"seed": 2**64}}, "options.seed"),
    ("generate", {"prompt": "x", "options": {"num_predict": 0}}, "options.num_predict"),
    ("generate", {"prompt": "x", "options": {"stop": [1]}}, "options.stop"),
    ("generate", {"prompt": "x", "options": {"stop": ["s"] * 17}}, "options.stop"),
    ("generate", {"prompt": "x", "images": ["aGk="]}, "images"),
    ("generate", {"prompt": "x", "format": "json"}, "format"),
    ("generate", {"prompt": "x", "format": {"type": "object"}}, "format"),
    ("generate", {"prompt": "x", "suffix": "end"}, "suffix"),
    ("generate", {"prompt": "x", "template": "{{ .Prompt }}"}, "template"),
    ("generate", {"prompt": "x", "context": [1, 2]}, "context"),
    ("generate", {"prompt": "x", "think": True}, "think"),
    ("chat", {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, "tools"),
    ("chat", {"messages": "hi"}, "messages"),
    ("chat", {"messages": [{"role": "tool", "content": "x"}]}, "messages[0]"),
    ("chat", {"messages": [{"role": "user", "content": "x", "images": ["aGk="]}]}, "messages[0].images"),
    ("chat", {"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ("chat", {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}, "messages"),
])
def test_a_bad_or_unservable_field_is_a_400_naming_it(kind, body, param):
    with pytest.raises(ApiError) as info:
        api.parse(kind, body)
    assert info.value.status == 400 and info.value.param == param
    assert api.error_body(info.value) == {"error": info.value.message} and param.split(".")[0] in info.value.message


def test_a_body_that_is_no_object_is_a_400():
    with pytest.raises(ApiError) as info:
        api.parse("chat", [1, 2])
    assert info.value.status == 400


def test_latest_is_the_bare_name():
    served = {"echo": ["a"], "qwen:7b": ["b"], "odd:latest": ["c"]}
    assert api.resolve("echo:latest", served) == "echo"
    assert api.resolve("qwen:7b", served) == "qwen:7b" and api.resolve("odd:latest", served) == "odd:latest"
    assert api.resolve("gone:latest", served) == "gone:latest" and api.resolve(None, served) is None
    with pytest.raises(ApiError) as info:
        api.check_model("gone", served)
    assert info.value.status == 404 and "not found" in info.value.message and "echo, odd:latest" in info.value.message


# -- pure: answers -----------------------------------------------------------------------------------------


def lines(data: bytes) -> list[dict]:
    """NDJSON: one JSON object per line, each line ended."""
    assert data.endswith(b"\n")
    return [json.loads(line) for line in data.split(b"\n")[:-1]]


def test_a_streamed_generate_is_one_line_per_token_then_done_with_counts():
    framing = api.Framing("generate", "m", clock=lambda: T0)
    assert framing.content_type == "application/x-ndjson" and framing.opening() == b""
    stream = framing.token(0, "he") + framing.token(0, "llo") + framing.finish(0, DONE) + framing.closing([DONE])
    first, second, last = lines(stream)
    assert first == {"model": "m", "created_at": "2023-11-14T22:13:20.250000Z", "response": "he", "done": False}
    assert second["response"] == "llo"
    assert last == {"model": "m", "created_at": "2023-11-14T22:13:20.250000Z", "response": "", "done": True,
                    "done_reason": "length", "total_duration": 10_000_000, "load_duration": 0,
                    "prompt_eval_count": 3, "prompt_eval_duration": 2_500_000, "eval_count": 5,
                    "eval_duration": 7_500_000}
    parsed = [ollama.GenerateResponse(**line) for line in (first, second, last)]  # what the client reads
    assert "".join(p.response for p in parsed) == "hello" and parsed[-1].eval_count == 5


def test_a_chat_answer_is_an_assistant_message():
    framing = api.Framing("chat", "m", clock=lambda: T0)
    (token,) = lines(framing.token(0, "hi"))
    assert token["message"] == {"role": "assistant", "content": "hi"} and token["done"] is False
    whole = framing.whole(["hi there"], [{"finish_reason": "stop"}])
    assert whole["message"]["content"] == "hi there" and whole["done"] and whole["done_reason"] == "stop"
    assert whole["eval_count"] == 0 and whole["total_duration"] == 0  # unknown: 0
    assert ollama.ChatResponse(**whole).message.content == "hi there"
    assert lines(framing.failure(ApiError(504, "too slow"))) == [{"error": "too slow"}]


def test_listings_parse_as_the_ollama_client_reads_them():
    served = {"gemma3-270m": ["b", "a"], "echo": ["a"]}
    listed = ollama.ListResponse(**api.tags(served))
    assert [m.model for m in listed.models] == ["echo", "gemma3-270m"]
    assert listed.models[1].details.family == "gemma3" and listed.models[1].details.format == "gguf"
    assert api.tags(served)["models"][1]["nodes"] == ["a", "b"] and api.tags(served)["models"][0]["size"] == 0
    assert len({m.digest for m in listed.models}) == 2
    running = ollama.ProcessResponse(**api.running(served))
    assert [m.name for m in running.models] == ["echo", "gemma3-270m"] and running.models[0].expires_at.year > 2100
    shown = ollama.ShowResponse(**api.shown("echo", ["b", "a"]))
    assert "FROM echo" in shown.modelfile and "a, b" in shown.modelfile and shown.capabilities == ["completion"]


# -- real daemons ------------------------------------------------------------------------------------------


def client_for(daemon: Daemon, **headers: str) -> ollama.Client:
    return ollama.Client(host=http_url(daemon), timeout=CLIENT_TIMEOUT_S, headers=headers)


def test_the_ollama_client_lists_shows_generates_and_chats(http_pair):
    a, _ = http_pair
    client = client_for(a, **{"x-zmqllm-peer": "b"})  # run on the other node: the tokens cross the mesh
    listed = client.list().models
    assert [m.model for m in listed] == ["echo"] and listed[0].details.format == "gguf"
    assert json.loads(http_request(a, "GET", "/api/tags")[2])["models"][0]["nodes"] == ["a", "b"]  # the client drops it
    assert [m.model for m in client.ps().models] == ["echo"]
    assert "FROM echo" in client.show("echo:latest").modelfile

    chunks = list(client.generate(model="echo:latest", prompt="one two three", stream=True,
                                  options={"num_predict": 5, "temperature": 0}))
    assert "".join(c.response for c in chunks) == "one two three one two "
    assert all(not c.done for c in chunks[:-1]) and len(chunks) == 6
    last = chunks[-1]
    assert last.done and last.done_reason == "length" and last.model == "echo"
    assert (last.prompt_eval_count, last.eval_count) == (3, 5) and last.total_duration > 0
    assert last.created_at.endswith("Z")

    chunks = list(client.chat(model="echo", stream=True, options={"num_predict": 4, "seed": 7},
                              messages=[{"role": "system", "content": "be brief"},
                                        {"role": "user", "content": "hello there"}]))
    assert "".join(c.message.content for c in chunks) == "hello there hello there "
    assert {c.message.role for c in chunks} == {"assistant"} and chunks[-1].done and chunks[-1].eval_count == 4

    whole = client.generate(model="echo", prompt="x y", options={"num_predict": 3})  # the client's default: whole
    assert whole.response == "x y x " and whole.done and whole.eval_count == 3
    said = client.chat(model="echo", messages=[{"role": "user", "content": "p"}], options={"num_predict": 2})
    assert said.message.content == "p p " and said.done_reason == "length"
    assert client.generate(model="echo").done_reason == "load"  # a preload answers at once


def test_unknown_models_and_bad_fields_raise_response_errors(http_pair):
    a, _ = http_pair
    client = client_for(a)
    for call in (lambda: client.generate(model="llama3", prompt="x"), lambda: client.show("llama3:latest"),
                 lambda: list(client.chat(model="llama3", messages=[{"role": "user", "content": "x"}],
                                          stream=True))):
        with pytest.raises(ollama.ResponseError) as missing:
            call()
        assert missing.value.status_code == 404 and "not found" in missing.value.error
        assert "echo" in missing.value.error  # the models the mesh does serve
    with pytest.raises(ollama.ResponseError) as bad:
        client.generate(model="echo", prompt="x", options={"temperature": -1})
    assert bad.value.status_code == 400 and "options.temperature" in bad.value.error
    with pytest.raises(ollama.ResponseError) as bad:
        client.chat(model="echo", messages=[{"role": "user", "content": "x"}], format="json")
    assert bad.value.status_code == 400 and "format" in bad.value.error
    status, _, body = http_request(a, "GET", "/api/nowhere")
    assert status == 404 and set(json.loads(body)) == {"error"}
    status, _, body = http_request(a, "POST", "/api/generate", None, {"Content-Length": "0"})
    assert status == 400 and set(json.loads(body)) == {"error"}


def test_plain_http_reads_ndjson_lines_and_the_probes(http_pair):
    a, _ = http_pair
    status, headers, body = http_request(a, "POST", "/api/generate", {"model": "echo", "prompt": "a b",
                                                                 "options": {"num_predict": 3}})
    assert status == 200 and headers["content-type"].startswith("application/x-ndjson")  # streams by default
    got = lines(body)
    assert [line["response"] for line in got] == ["a ", "b ", "a ", ""]
    assert [line["done"] for line in got] == [False, False, False, True] and got[-1]["eval_count"] == 3
    assert headers["x-zmqllm-executed-by"] in ("a", "b") and headers["x-zmqllm-task-id"]
    status, _, body = http_request(a, "POST", "/api/chat", {"model": "echo", "stream": False,
                                                       "messages": [{"role": "user", "content": "q"}],
                                                       "options": {"num_predict": 1}})
    assert status == 200 and json.loads(body)["message"] == {"role": "assistant", "content": "q "}
    status, _, body = http_request(a, "GET", "/")
    assert status == 200 and body == b"Ollama is running"
    status, _, body = http_request(a, "HEAD", "/")
    assert status == 200 and body == b""
    status, _, body = http_request(a, "GET", "/api/version")
    assert status == 200 and json.loads(body) == {"version": __version__}


def test_a_failure_mid_stream_is_an_error_line(spawn):
    """The task passes its deadline after its first tokens: the stream ends on `{"error": ...}`, which the
    ollama client raises."""
    a = spawn("a", *LOCAL_HTTP, "--echo-rate", "20")
    client = client_for(a, **{"x-zmqllm-deadline": "1"})
    received = []
    with pytest.raises(ollama.ResponseError) as failed:
        for chunk in client.generate(model="echo", prompt="tick", stream=True, options={"num_predict": 1000}):
            received.append(chunk.response)
    assert received and "deadline" in failed.value.error


@pytest.mark.llama
def test_a_llama_mesh_streams_the_same_greedy_text_it_answers_whole(spawn, zmqllm_env):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: bin/setup installs it")
    llama = ("--model", "bundled:gemma3-270m", "--threads", "1")
    a = spawn("a", *LOCAL_HTTP, *llama, engine="llama")
    b = spawn("b", "--peer", a.endpoint, *llama, engine="llama")
    wait_until(lambda: alive_names(a) == {"a", "b"}, 10, what="a sees b")
    prompt, options = "The capital of France is", {"temperature": 0, "num_predict": 16}
    streamed = list(client_for(a, **{"x-zmqllm-peer": "b"}).generate(
        model="gemma3-270m:latest", prompt=prompt, raw=True, stream=True, options=options))
    whole = client_for(a, **{"x-zmqllm-peer": "a"}).generate(model="gemma3-270m", prompt=prompt, raw=True,
                                                             options=options)
    text = "".join(c.response for c in streamed)
    assert text and text == whole.response
    assert streamed[-1].done and streamed[-1].eval_count == whole.eval_count > 0
    submitted = run_cli(zmqllm_env, "submit", prompt, "--connect", a.endpoint, "--max-tokens", "16",
                        "--temperature", "0", "--json", timeout=120)  # raw is a plain completion
    assert json.loads(submitted.stdout.strip().splitlines()[-1])["text"] == text
    templated = client_for(a).generate(model="gemma3-270m", prompt=prompt, options=options)  # Ollama's default
    assert templated.done and templated.eval_count > 0 and templated.prompt_eval_count > whole.prompt_eval_count
