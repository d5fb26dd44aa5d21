"""Anthropic's Messages API: its pure half (`zmqllm.http.anthropic`: request checks, message and event shapes) in
milliseconds, then real daemons over real sockets driven by the official `anthropic` client.

Every daemon binds port 0 for the mesh and `--http 127.0.0.1:0` for HTTP and is read from its ready line
(`http`); every wait is bounded."""

from __future__ import annotations

import json

import pytest

from conftest import LOCAL_HTTP, Daemon, alive_names, http_request, http_url, wait_until
from zmqllm.http import anthropic as messages_api
from zmqllm.http.errors import ApiError

anthropic = pytest.importorskip("anthropic", reason="the test extra installs anthropic")

USER = [{"role": "user", "content": "hello there"}]

# -- the pure half -----------------------------------------------------------------------------------------


def test_a_message_request_becomes_a_chat_task():
    parsed = messages_api.parse({
        "model": "m", "max_tokens": 9, "temperature": 0, "top_p": 0.9, "top_k": 40, "stop_sequences": ["\n\n"],
        "system": [{"type": "text", "text": "be "}, {"type": "text", "text": "terse", "cache_control": {}}],
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes?"},
                     {"role": "user", "content": [{"type": "text", "text": "a "}, {"type": "text", "text": "b"}]}],
        "metadata": {"user_id": "u"}, "service_tier": "auto", "frobnicate": 1})  # unknown: ignored
    spec = parsed.spec("t1", peer="b")
    assert (spec.task_id, spec.prompt, spec.max_tokens, spec.model, spec.peer, spec.stop) == \
        ("t1", "", 9, "m", "b", ("\n\n",))
    assert spec.messages == ({"role": "system", "content": "be terse"}, {"role": "user", "content": "hi"},
                             {"role": "assistant", "content": "yes?"}, {"role": "user", "content": "a b"})
    assert spec.params == {"temperature": 0.0, "top_p": 0.9, "top_k": 40}
    assert parsed.choices == 1 and not parsed.stream and parsed.model == "m"
    assert messages_api.parse({"max_tokens": 1, "messages": USER, "stream": True, "system": ""}).stream


def test_a_token_count_is_a_one_token_task_that_never_streams():
    parsed = messages_api.parse_count({"model": "m", "messages": USER, "system": "s", "stream": True,
                                       "temperature": 7})  # sampling does not change a count: ignored
    assert (parsed.max_tokens, parsed.stream, parsed.params, parsed.model) == (1, False, {}, "m")
    assert parsed.messages[0] == {"role": "system", "content": "s"}


@pytest.mark.parametrize("change,param", [
    ({"max_tokens": None}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"max_tokens": "5"}, "max_tokens"),
    ({"temperature": 1.5}, "temperature"),
    ({"temperature": "warm"}, "temperature"),
    ({"top_p": -0.1}, "top_p"),
    ({"top_k": 2.5}, "top_k"),
    ({"top_k": -1}, "top_k"),
    ({"stop_sequences": "\n"}, "stop_sequences"),
    ({"stop_sequences": ["a", ""]}, "stop_sequences"),
    ({"stop_sequences": ["s"] * 17}, "stop_sequences"),
    ({"model": 7}, "model"),
    ({"stream": "yes"}, "stream"),
    ({"system": 5}, "system"),
    ({"system": [{"type": "image"}]}, "system[0]"),
    ({"messages": "hi"}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}, {"type": "image", "source": {}}]}]},
     "messages[0].content[1]"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t"}]}]},
     "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content[0].text"),
    ({"messages": [*USER, {"role": "assistant", "content": "prefill"}]}, "messages"),
    ({"tools": [{"name": "f", "input_schema": {}}]}, "tools"),
    ({"tool_choice": {"type": "any"}}, "tool_choice"),
    ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
    ({"output_config": {"format": {"type": "json_schema", "schema": {}}}}, "output_config.format"),
])
def test_a_bad_parameter_is_a_400_naming_it(change, param):
    body = {"max_tokens": 4, "messages": USER, **change}
    with pytest.raises(ApiError) as info:
        messages_api.parse({k: v for k, v in body.items() if v is not None})
    assert info.value.status == 400 and info.value.param == param
    shaped = messages_api.error_body(info.value)
    assert shaped["type"] == "error" and shaped["error"]["type"] == "invalid_request_error"
    assert shaped["error"]["message"].startswith(param)


def test_what_needs_no_tools_is_accepted():
    parsed = messages_api.parse({"max_tokens": 1, "messages": USER, "tools": [], "tool_choice": {"type": "auto"},
                                 "thinking": {"type": "disabled"}, "output_config": {"effort": "low"}})
    assert parsed.max_tokens == 1


def test_a_body_that_is_no_object_is_a_400():
    for parse in (messages_api.parse, messages_api.parse_count):
        with pytest.raises(ApiError) as info:
            parse([1, 2])
        assert info.value.status == 400


@pytest.mark.parametrize("status,kind", [(400, "invalid_request_error"), (401, "authentication_error"),
                                         (403, "permission_error"), (404, "not_found_error"),
                                         (405, "invalid_request_error"), (413, "request_too_large"),
                                         (429, "rate_limit_error"), (500, "api_error"), (502, "api_error"),
                                         (503, "overloaded_error"), (504, "timeout_error"),
                                         (529, "overloaded_error")])
def test_errors_take_anthropics_type_per_status(status, kind):
    assert messages_api.error_body(ApiError(status, "why")) == {"type": "error",
                                                                 "error": {"type": kind, "message": "why"}}


@pytest.mark.parametrize("done,reason,sequence", [
    ({"finish_reason": "stop"}, "end_turn", None),
    ({"finish_reason": "length"}, "max_tokens", None),
    ({"finish_reason": "cancelled"}, "end_turn", None),
    ({"finish_reason": "stop", "stop_sequence": "\n\n"}, "stop_sequence", "\n\n"),
    ({}, "end_turn", None),
])
def test_a_tasks_ending_is_anthropics_stop_reason(done, reason, sequence):
    assert messages_api.stop_reason(done) == (reason, sequence)


def test_a_whole_answer_has_anthropics_message_shape():
    framing = messages_api.Framing("msg_1", "m")
    done = {"finish_reason": "stop", "usage": {"prompt_tokens": 7, "completion_tokens": 2}}
    assert framing.whole(["hi"], [done]) == {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "m",
        "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 7, "output_tokens": 2}}
    assert messages_api.TokenCount("msg_2", "m").whole([""], [done]) == {"input_tokens": 7}


def events(raw: bytes) -> list[tuple[str, dict]]:
    """Server-sent events as (event name, data), each checked to be exactly `event:` then `data:`."""
    out = []
    for block in raw.decode().split("\n\n")[:-1]:
        name_line, data_line = block.split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: ")
        out.append((name_line[7:], json.loads(data_line[6:])))
    assert raw.endswith(b"\n\n")
    return out


def test_a_stream_is_anthropics_event_sequence():
    framing = messages_api.Framing("msg_1", "m")
    done = {"finish_reason": "length", "usage": {"prompt_tokens": 3, "completion_tokens": 2}}
    raw = framing.opening() + framing.token(0, "a ") + framing.token(0, "b ") + framing.finish(0, done) + \
        framing.closing([done])
    sent = events(raw)
    assert [name for name, _ in sent] == ["message_start", "content_block_start", "content_block_delta",
                                          "content_block_delta", "content_block_stop", "message_delta",
                                          "message_stop"]
    assert all(data["type"] == name for name, data in sent)
    start = sent[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["id"] == "msg_1"
    assert start["usage"] == {"input_tokens": 0, "output_tokens": 0}
    assert sent[1][1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert sent[2][1] == {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "a "}}
    assert sent[4][1] == {"type": "content_block_stop", "index": 0}
    assert sent[5][1] == {"type": "message_delta", "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
                          "usage": {"input_tokens": 3, "output_tokens": 2}}


def test_a_failure_mid_stream_is_an_error_event():
    sent = events(messages_api.Framing("msg_1", "m").failure(ApiError(504, "too slow", code="deadline")))
    assert sent == [("error", {"type": "error", "error": {"type": "timeout_error", "message": "too slow"}})]


# -- real daemons, the official client ----------------------------------------------------------------------


def client_for(daemon: Daemon, key: str = "none") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=http_url(daemon), api_key=key, max_retries=0, timeout=30)


def request(daemon: Daemon, path: str, body: dict | bytes,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    return http_request(daemon, "POST", path, body, {"Content-Type": "application/json", **(headers or {})})


def test_anthropic_client_creates_and_streams_messages(http_pair):
    a, _ = http_pair
    client = client_for(a)
    message = client.messages.create(model="echo", max_tokens=5, system="be brief", stop_sequences=["never"],
                                     extra_body={"temperature": 0},  # this SDK has no sampling arguments
                                     messages=[{"role": "user", "content": "hello there"}])
    assert [(block.type, block.text) for block in message.content] == [("text", "hello there hello there hello ")]
    assert message.stop_reason == "max_tokens" and message.stop_sequence is None and message.role == "assistant"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (2, 5)
    assert message.id.startswith("msg_") and message.model == "echo" and message.type == "message"

    with client.messages.stream(model="echo", max_tokens=6, extra_headers={"x-zmqllm-peer": "b"},
                                messages=[{"role": "user", "content": [{"type": "text", "text": "a b c"}]}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
        executor = stream.response.headers["x-zmqllm-executed-by"]
    assert text == "a b c a b c " and final.content[0].text == text and executor == "b"
    assert final.stop_reason == "max_tokens" and final.id.startswith("msg_")
    assert (final.usage.input_tokens, final.usage.output_tokens) == (3, 6)  # message_delta's totals

    sent = list(client.messages.create(model="echo", max_tokens=2, stream=True, messages=USER))
    assert [e.type for e in sent] == ["message_start", "content_block_start", "content_block_delta",
                                        "content_block_delta", "content_block_stop", "message_delta", "message_stop"]


def test_unknown_model_is_404_and_bad_parameter_is_400_in_anthropics_shape(http_pair):
    a, _ = http_pair
    client = client_for(a)
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="claude-9", max_tokens=4, messages=USER)
    assert missing.value.body["error"]["type"] == "not_found_error" and "echo" in missing.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(model="echo", max_tokens=4, extra_body={"temperature": 1.5}, messages=USER)
    assert bad.value.body["type"] == "error" and bad.value.body["error"]["type"] == "invalid_request_error"
    assert bad.value.body["error"]["message"].startswith("temperature")
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model="echo", max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]}])
    status, headers, body = request(a, "/v1/messages", {"messages": USER})  # no max_tokens
    assert status == 400 and json.loads(body)["error"]["message"].startswith("max_tokens")
    assert headers["x-request-id"]
    status, _, body = request(a, "/v1/messages", b"{not json")
    assert status == 400 and json.loads(body)["type"] == "error"
    status, _, body = request(a, "/v1/messages/nowhere", {})
    assert status == 404 and json.loads(body)["error"]["type"] == "not_found_error"


def test_a_failure_mid_stream_raises_in_the_client(spawn):
    """A deadline passing after the first token: the stream has begun (200), so the failure is an error event,
    which the client raises."""
    a = spawn("slow", *LOCAL_HTTP, "--echo-rate", "20")
    client = client_for(a).with_options(default_headers={"x-zmqllm-deadline": "1"})
    texts = []
    with pytest.raises(anthropic.APIStatusError) as failed:
        with client.messages.stream(model="echo", max_tokens=2000, messages=USER) as stream:
            texts.extend(stream.text_stream)
    assert texts and failed.value.body["error"]["type"] == "timeout_error"


def test_count_tokens_grows_with_the_prompt(http_pair):
    a, _ = http_pair
    client = client_for(a)
    short = client.messages.count_tokens(model="echo", messages=[{"role": "user", "content": "one two"}])
    long = client.messages.count_tokens(model="echo", messages=[{"role": "user", "content": "one two three four"}])
    assert isinstance(short.input_tokens, int) and 0 < short.input_tokens < long.input_tokens
    assert (short.input_tokens, long.input_tokens) == (2, 4)  # the echo engine counts the user's words
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="claude-9", messages=USER)
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.count_tokens(model="echo", messages=[{"role": "assistant", "content": "x"}])
    assert bad.value.body["error"]["message"].startswith("messages")


def test_api_key_is_required_when_set(spawn):
    a = spawn("locked", *LOCAL_HTTP, "--api-key", "k")
    body = {"max_tokens": 2, "messages": USER}
    status, _, raw = request(a, "/v1/messages", body)
    error = json.loads(raw)
    assert status == 401 and error["type"] == "error" and error["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.AuthenticationError):
        client_for(a, key="wrong").messages.create(model="echo", **body)
    assert request(a, "/v1/messages", body, {"x-api-key": "k"})[0] == 200  # Anthropic's own header
    assert client_for(a, key="k").messages.create(model="echo", **body).content[0].text == "hello there "


@pytest.mark.llama
def test_greedy_stream_equals_the_whole_message_on_a_llama_mesh(spawn):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: bin/setup installs it")
    llama = ("--model", "bundled:gemma3-270m", "--threads", "1")
    a = spawn("la", *LOCAL_HTTP, *llama, engine="llama")
    spawn("lb", "--peer", a.endpoint, *llama, engine="llama")
    wait_until(lambda: alive_names(a) == {"la", "lb"}, 10, what="la sees lb")
    client = client_for(a)
    ask = {"model": "gemma3-270m", "max_tokens": 16, "extra_body": {"temperature": 0}, "system": "You answer briefly.",
           "messages": [{"role": "user", "content": "What is the capital of France?"}]}
    whole = client.messages.create(**ask, extra_headers={"x-zmqllm-peer": "la"})
    with client.messages.stream(**ask, extra_headers={"x-zmqllm-peer": "lb"}) as stream:  # across the mesh
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
        assert stream.response.headers["x-zmqllm-executed-by"] == "lb"
    assert whole.content[0].text.strip() and streamed == whole.content[0].text
    assert final.stop_reason == whole.stop_reason and final.usage.output_tokens == whole.usage.output_tokens
    assert final.usage.input_tokens == whole.usage.input_tokens > 0

    count = client.messages.count_tokens(model="gemma3-270m", system=ask["system"], messages=ask["messages"])
    longer = client.messages.count_tokens(model="gemma3-270m", system=ask["system"], messages=[
        {"role": "user", "content": "What is the capital of France, and what river runs through it?"}])
    assert count.input_tokens == whole.usage.input_tokens and longer.input_tokens > count.input_tokens
