"""Prometheus's text format for `/metrics`: the gateway's own counters (requests by API and status, their
duration) and the families any collector builds from `core/metrics.py`'s plain numbers.

Counting stays plain integers on the hot path; prometheus_client only renders them when a scraper asks.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from zmqllm.core.metrics import LATENCY_BUCKETS_S, Histogram

APIS = (("/v1/messages", "anthropic"), ("/api/", "ollama"), ("/metrics", "metrics"), ("/health", "health"))
"""Path prefixes and the API label of their requests; anything else is `openai` (its routes answer with and
without /v1) or, with no route, `other`."""


def api_of(path: str, routed: bool) -> str:
    if not routed:
        return "other"
    for prefix, api in APIS:
        if path.startswith(prefix):
            return api
    return "openai"


def counter(name: str, doc: str, values: Mapping[str, int] | int, label: str | None = None) -> CounterMetricFamily:
    """A counter family: one value, or one per label value."""
    if label is None:
        return CounterMetricFamily(name, doc, value=values)
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


def histogram(name: str, doc: str, series: Mapping[tuple[str, ...], Histogram] | Histogram,
              labels: Iterable[str] = ()) -> HistogramMetricFamily:
    """A histogram family from one core Histogram, or one per label values."""
    family = HistogramMetricFamily(name, doc, labels=list(labels))
    for values, hist in (sorted(series.items()) if isinstance(series, Mapping) else [((), series)]):
        family.add_metric(list(values), hist.cumulative(), hist.total)
    return family


class HttpStats(Collector):
    """Requests this node's HTTP servers answered, by API and status code, and how long they took."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str]] = Counter()
        self.durations: dict[tuple[str], Histogram] = {}

    def record(self, api: str, status: int, seconds: float) -> None:
        self.requests[(api, str(status))] += 1
        self.durations.setdefault((api,), Histogram(LATENCY_BUCKETS_S)).observe(seconds)

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        family = CounterMetricFamily("zmqllm_http_requests", "HTTP requests answered, by API and status code",
                                     labels=["api", "code"])
        for (api, code), value in sorted(self.requests.items()):
            family.add_metric([api, code], value)
        yield family
        yield histogram("zmqllm_http_request_duration_seconds", "HTTP request time, to the last byte of a stream",
                        self.durations, ["api"])


def exposition(registry: CollectorRegistry) -> web.Response:
    """`GET /metrics`: every collector of the registry in Prometheus's text format."""
    response = web.Response(body=generate_latest(registry))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response
