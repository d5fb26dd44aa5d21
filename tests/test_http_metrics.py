"""`/metrics` on real daemons: Prometheus's own parser reads it, and its counters and histograms move as
requests run, fail over and fail. A node started with `--metrics` serves only /metrics and /health."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import pytest

import zmqllm

from conftest import alive_names, wait_until

openai = pytest.importorskip("openai", reason="the test extra installs openai")
parser = pytest.importorskip("prometheus_client.parser")


def get(url: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, parsed by prometheus_client: {(name, sorted labels): value}."""
    status, text = get(url, "/metrics")
    assert status == 200
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in parser.text_string_to_metric_families(text) for sample in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_parse_and_move_as_requests_run(spawn):
    a = spawn("a", "--http", "127.0.0.1:0", "--echo-rate", "0")
    b = spawn("b", "--peer", a.endpoint, "--echo-rate", "0", "--metrics", "127.0.0.1:0")
    wait_until(lambda: alive_names(a) == {"a", "b"}, 10, what="a sees b")
    url, metrics_url = a.ready_event["http"][0], b.ready_event["metrics"][0]
    before = scrape(url)
    assert value(before, "zmqllm_peers", state="alive") == 2
    build = [dict(labels) for name, labels in before if name == "zmqllm_build_info"]
    assert len(build) == 1 and build[0]["version"] == zmqllm.__version__

    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=30)
    for peer in ("a", "b"):  # one task on each node, streamed, so both first-token and gap times move
        stream = client.with_options(default_headers={"x-zmqllm-peer": peer}).completions.create(
            model="echo", prompt="one two three", max_tokens=6, stream=True)
        assert "".join(chunk.choices[0].text for chunk in stream) == "one two three one two three "
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x", max_tokens=1)

    after = scrape(url)
    assert value(after, "zmqllm_http_requests_total", api="openai", code="200") - \
        value(before, "zmqllm_http_requests_total", api="openai", code="200") == 2
    assert value(after, "zmqllm_http_requests_total", api="openai", code="404") == 1
    assert value(after, "zmqllm_tasks_total", outcome="length") == 2
    assert value(after, "zmqllm_generated_tokens_total", model="echo") == 12
    assert value(after, "zmqllm_prompt_tokens_total", model="echo") > 0
    assert value(after, "zmqllm_time_to_first_token_seconds_count") == 2
    assert value(after, "zmqllm_inter_token_seconds_count") == 10
    assert value(after, "zmqllm_http_request_duration_seconds_count", api="openai") >= 3
    assert value(after, "zmqllm_time_to_first_token_seconds_bucket", le="+Inf") == 2
    assert value(after, "zmqllm_messages_sent_total", type="ASSIGN") == 1  # the task pinned to b
    assert value(after, "zmqllm_messages_received_total", type="TOKEN") >= 6
    assert value(after, "zmqllm_journal_writes_total") > value(before, "zmqllm_journal_writes_total")
    assert not any(name.startswith("zmqllm_") and "task_id" in dict(labels) for name, labels in after)

    executor = scrape(metrics_url)  # b's metrics-only address: it ran one task, originated none
    assert value(executor, "zmqllm_messages_received_total", type="ASSIGN") == 1
    assert value(executor, "zmqllm_messages_sent_total", type="TOKEN") >= 6
    assert value(executor, "zmqllm_tasks_total", outcome="length") == 0
    assert get(metrics_url, "/v1/models")[0] == 404 and get(metrics_url, "/health")[0] == 200


def test_a_failover_is_counted_with_the_tokens_it_resumed(spawn):
    a = spawn("a", "--http", "127.0.0.1:0", "--echo-rate", "20")
    b = spawn("b", "--peer", a.endpoint, "--echo-rate", "20")
    wait_until(lambda: alive_names(a) == {"a", "b"}, 10, what="a sees b")
    url = a.ready_event["http"][0]
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=30)
    stream = client.with_options(default_headers={"x-zmqllm-peer": "b"}).completions.create(
        model="echo", prompt="w", max_tokens=30, stream=True)
    texts = []
    for chunk in stream:
        texts.append(chunk.choices[0].text)
        if len(texts) == 5:
            b.kill()
    assert "".join(texts) == "w " * 30
    samples = scrape(url)
    assert value(samples, "zmqllm_failovers_total") == 1
    assert value(samples, "zmqllm_resumed_tokens_total") >= 5
    assert value(samples, "zmqllm_peers", state="dead") + value(samples, "zmqllm_peers", state="suspect") == 1


def test_metrics_need_the_key_when_one_is_set(spawn):
    a = spawn("a", "--http", "127.0.0.1:0", "--api-key", "k")
    url = a.ready_event["http"][0]
    assert get(url, "/metrics")[0] == 401
    status, text = get(url, "/metrics", {"Authorization": "Bearer k"})
    assert status == 200 and "zmqllm_http_requests_total" in text
    assert json.loads(get(url, "/health")[1])["status"] == "ok"  # load balancers probe it without a key

