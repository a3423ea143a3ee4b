"""``/metrics``: the server in Prometheus' text format, through ``prometheus-client``.

Each app has its own registry (two servers in one process, as in the tests, do not mix their
numbers). What is counted: requests by route, model and status; prompt, cached and completion
tokens; time to first token; queue depth; and the NPU's load where the driver's debugfs file is
readable (``/sys/kernel/debug/rknpu/load``, root only on most boards).

Example:
    >>> from rkllm_core.server.metrics import Metrics
    >>> m = Metrics()
    >>> m.requests.labels(route="/v1/chat/completions", model="qwen", status="200").inc()
    >>> b'rkllm_requests_total{model="qwen",route="/v1/chat/completions",status="200"} 1.0' \\
    ...     in m.render()
    True
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

NPU_LOAD_FILE = Path("/sys/kernel/debug/rknpu/load")
_CORE = re.compile(r"Core(\d+):\s*(\d+)%")


def read_npu_load(path: Path = NPU_LOAD_FILE) -> dict[str, float]:
    """Load per NPU core in percent from the rknpu driver's debugfs (``{}`` when unreadable).

    Example:
        >>> import tempfile, pathlib
        >>> from rkllm_core.server.metrics import read_npu_load
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "load"
        >>> _ = f.write_text("NPU load:  Core0: 35%, Core1:  0%, Core2: 12%,\\n")
        >>> read_npu_load(f)
        {'0': 35.0, '1': 0.0, '2': 12.0}
        >>> read_npu_load(f.parent / "absent")
        {}
    """
    try:
        text = path.read_text()
    except OSError:
        return {}
    return {core: float(value) for core, value in _CORE.findall(text)}


class _LiveCollector(Collector):
    """Values read when Prometheus scrapes: queue depths and the NPU's load."""

    def __init__(self, queues: Callable[[], Iterable[tuple[str, int, int]]],
                 npu_load: Callable[[], dict[str, float]]) -> None:
        self.queues = queues
        self.npu_load = npu_load

    def collect(self) -> Iterator[GaugeMetricFamily]:
        waiting = GaugeMetricFamily("rkllm_queue_waiting", "Requests waiting for a model",
                                    labels=["model"])
        running = GaugeMetricFamily("rkllm_queue_running", "Requests a model is running",
                                    labels=["model"])
        for model, wait, run in self.queues():
            waiting.add_metric([model], wait)
            running.add_metric([model], run)
        yield waiting
        yield running
        load = self.npu_load()
        if load:
            family = GaugeMetricFamily("rkllm_npu_load_percent",
                                       "NPU load per core (rknpu debugfs)", labels=["core"])
            for core, value in sorted(load.items()):
                family.add_metric([core], value)
            yield family


class Metrics:
    """The server's metrics on a registry of their own; ``render()`` is the ``/metrics`` body.

    Example: see :mod:`rkllm_core.server.metrics`.
    """

    def __init__(self, queues: Callable[[], Iterable[tuple[str, int, int]]] = lambda: (),
                 npu_load: Callable[[], dict[str, float]] = read_npu_load) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("rkllm_requests", "Requests by route, model and status",
                                ["route", "model", "status"], registry=r)
        self.tokens = Counter("rkllm_tokens", "Tokens by kind: prompt (the whole context a "
                              "reply was computed on), cached (served from the KV cache), "
                              "completion", ["model", "kind"], registry=r)
        self.ttft = Histogram("rkllm_time_to_first_token_seconds",
                              "From the request's arrival to its first token", ["model"],
                              buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64),
                              registry=r)
        self.kv_reuse = Counter("rkllm_kv_cache_reused_turns",
                                "Chat turns that reused the KV cache", ["model"], registry=r)
        r.register(_LiveCollector(queues, npu_load))

    def count_turn(self, model: str, prompt: int, cached: int, completion: int,
                   reused: bool) -> None:
        """Count one finished chat or completion turn."""
        self.tokens.labels(model=model, kind="prompt").inc(prompt)
        self.tokens.labels(model=model, kind="cached").inc(cached)
        self.tokens.labels(model=model, kind="completion").inc(completion)
        if reused:
            self.kv_reuse.labels(model=model).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
