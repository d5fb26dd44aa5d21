"""The gateway's pure half (`zmqllm.http.openai`, `zmqllm.http.errors`): request checks and response shapes,
in milliseconds, without a daemon."""

from __future__ import annotations

import json

import pytest

from zmqllm.http import openai
from zmqllm.http.errors import ApiError, from_task_error


def test_a_completion_becomes_a_task_spec():
    parsed = openai.parse("completion", {"model": "m", "prompt": ["once"], "max_tokens": 9, "temperature": 0,
                                         "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1, "seed": 3,
                                         "stop": "\n", "user": "u", "logit_bias": {}, "n": 1})
    spec = parsed.spec("t1", peer="b")
    assert (spec.task_id, spec.prompt, spec.max_tokens, spec.model, spec.peer, spec.stop) == \
        ("t1", "once", 9, "m", "b", ("\n",))
    assert spec.params == {"temperature": 0.0, "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1, "seed": 3}
    assert not parsed.stream and not parsed.include_usage


def test_a_chat_keeps_its_messages_and_prefers_max_completion_tokens():
    parsed = openai.parse("chat", {"messages": [{"role": "developer", "content": "terse", "name": "x"},
                                                {"role": "user", "content": [{"type": "text", "text": "hi "},
                                                                             {"type": "text", "text": "you"}]}],
                                   "max_tokens": 5, "max_completion_tokens": 7, "stream": True,
                                   "stream_options": {"include_usage": True}})
    assert parsed.messages == ({"role": "system", "content": "terse"}, {"role": "user", "content": "hi you"})
    assert parsed.prompt == "" and parsed.max_tokens == 7 and parsed.stream and parsed.include_usage
    assert openai.parse("chat", {"messages": [{"role": "user", "content": "x"}]}).max_tokens == \
        openai.DEFAULT_MAX_TOKENS


@pytest.mark.parametrize("kind,body,param", [
    ("completion", {"prompt": 3}, "prompt"),
    ("completion", {"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ("completion", {"prompt": "x", "max_tokens": True}, "max_tokens"),
    ("completion", {"prompt": "x", "temperature": "warm"}, "temperature"),
    ("completion", {"prompt": "x", "top_p": 1.5}, "top_p"),
    ("completion", {"prompt": "x", "top_k": 2.5}, "top_k"),
    ("completion", {"prompt": "x", "stop": ["a", ""]}, "stop"),
    ("completion", {"prompt": "x", "stop": ["s"] * 17}, "stop"),
    ("completion", {"prompt": "x", "n": 17}, "n"),
    ("completion", {"prompt": "x", "model": 7}, "model"),
    ("completion", {"prompt": "x", "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
    ("chat", {"messages": []}, "messages"),
    ("chat", {"messages": [{"role": "tool", "content": "x"}]}, "messages[0]"),
    ("chat", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content"),
    ("chat", {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}, "messages"),
])
def test_a_bad_parameter_is_a_400_naming_it(kind, body, param):
    with pytest.raises(ApiError) as info:
        openai.parse(kind, body)
    assert info.value.status == 400 and info.value.param == param
    assert info.value.body()["error"]["type"] == "invalid_request_error"


def test_a_body_that_is_no_object_is_a_400():
    with pytest.raises(ApiError) as info:
        openai.parse("chat", [1, 2])
    assert info.value.status == 400


def test_whole_responses_and_chunks_have_openais_shape():
    reply = openai.Framing("chat", "chatcmpl-1", 1700000000, "m", include_usage=True)
    whole = reply.whole(["hi"], [{"finish_reason": "stop", "usage": {"prompt_tokens": 2, "completion_tokens": 1}}])
    assert whole["object"] == "chat.completion" and whole["choices"][0]["message"] == {"role": "assistant",
                                                                                      "content": "hi"}
    assert whole["usage"] == {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}
    first = json.loads(reply.token(0, "h")[6:])
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "h"} and first["usage"] is None
    assert json.loads(reply.token(0, "i")[6:])["choices"][0]["delta"] == {"content": "i"}  # the role once
    closing = json.loads(reply.finish(0, {"finish_reason": "length"})[6:])
    assert closing["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
    end = reply.closing([{"usage": {"prompt_tokens": 1}}]).split(b"\n\n")
    assert json.loads(end[0][6:])["choices"] == [] and end[1] == b"data: [DONE]"
    text = openai.Framing("completion", "cmpl-1", 1, "m")
    chunk = json.loads(text.token(0, "x")[6:])
    assert chunk["object"] == "text_completion" and chunk["choices"][0]["text"] == "x" and "usage" not in chunk
    assert text.closing([{}]) == openai.SSE_DONE


def test_several_choices_are_indexed_and_their_usage_summed():
    reply = openai.Framing("completion", "cmpl-1", 1, "m")
    dones = [{"finish_reason": "stop", "usage": {"prompt_tokens": 2, "completion_tokens": 3}},
             {"finish_reason": "length", "usage": {"prompt_tokens": 2, "completion_tokens": 4}}]
    whole = reply.whole(["a", "b"], dones)
    assert [(c["index"], c["text"], c["finish_reason"]) for c in whole["choices"]] == [(0, "a", "stop"),
                                                                                       (1, "b", "length")]
    assert whole["usage"] == {"prompt_tokens": 4, "completion_tokens": 7, "total_tokens": 11}
    assert json.loads(reply.token(1, "b")[6:])["choices"][0]["index"] == 1
    assert openai.parse("completion", {"prompt": "x", "n": 3}).choices == 3


def test_models_list_names_the_nodes_serving_each_model():
    listing = openai.models_list({"b-model": ["y", "x"], "a-model": ["x"]})
    assert [m["id"] for m in listing["data"]] == ["a-model", "b-model"]
    assert listing["data"][1]["nodes"] == ["x", "y"] and listing["object"] == "list"


@pytest.mark.parametrize("code,status", [("busy", 429), ("no_peer_for_model", 404), ("bad_request", 400),
                                         ("deadline", 504), ("internal", 500), ("whatever", 500)])
def test_task_errors_map_to_the_status_clients_expect(code, status):
    error = from_task_error({"code": code, "message": "why", "retryable": False})
    assert error.status == status and error.body()["error"]["message"] == "why"
    assert ("Retry-After" in error.headers()) == (status == 429)


def test_openai_usage_names_cached_prompt_tokens_only_when_a_cache_held_some() -> None:
    from zmqllm.http.openai import usage_of

    assert usage_of({"prompt_tokens": 40, "completion_tokens": 5}) == {
        "prompt_tokens": 40, "completion_tokens": 5, "total_tokens": 45}
    assert usage_of({"prompt_tokens": 40, "completion_tokens": 5, "cached_tokens": 32},
                    {"prompt_tokens": 40, "completion_tokens": 3}) == {
        "prompt_tokens": 80, "completion_tokens": 8, "total_tokens": 88, "prompt_tokens_details": {"cached_tokens": 32}}
