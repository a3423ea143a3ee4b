"""A Ray cluster of simulated boards on this machine, for ``rkllm serve --ray``'s tests.

``ray.cluster_utils.Cluster`` starts each node as its own raylet; every node advertises
``npu: 1`` (as ``ray start --resources='{"npu": 1}'`` does on a board) and everything listens
on 127.0.0.1: the nodes are started with ``node_ip_address="127.0.0.1"``, and the driver's
view of "this machine" is the loopback too (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: on Linux
Ray otherwise rewrites a 127.0.0.1 cluster address to the machine's outward address before it
connects, ``ray._private.services.resolve_ip_for_localhost``, where nothing listens). The
fixture checks both: every node's ``NodeManagerAddress`` and the GCS address are 127.0.0.1.
Serve's HTTP proxy runs on the head node only, on 127.0.0.1 and a free port.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

if "ray" not in sys.modules:  # read once, when Ray is imported
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

pytest.importorskip("fastapi", reason="the cluster tests need rkllm-py[server]")
pytest.importorskip("ray.serve", reason="rkllm serve --ray needs rkllm-py[cluster] (ray[serve])")

import ray
from ray import serve
from ray._private import ray_constants
from ray.cluster_utils import Cluster

from rkllm_core.cluster import APP_NAME, build_app
from rkllm_core.server import ModelConfig, ServerConfig

LOOPBACK = "127.0.0.1"
#: Seconds a simulated board may take to come back after its runtime crashed.
RECOVERY_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


@dataclass
class Boards:
    """A running cluster: its Ray cluster object and the base URL of its HTTP proxy."""

    cluster: Cluster
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def deploy(self, config: ServerConfig, **options: object) -> str:
        """Run ``build_app(config, **options)`` as the cluster's application; its base URL."""
        serve.run(build_app(config.model_copy(update={"host": self.host, "port": self.port}),
                            **options),  # type: ignore[arg-type]
                  name=APP_NAME, route_prefix="/")
        return self.url


@contextlib.contextmanager
def boards(count: int) -> Iterator[Boards]:
    """``count`` simulated boards (Ray nodes with ``npu: 1``) on 127.0.0.1, Serve started."""
    if ray_constants.ENABLE_RAY_CLUSTER:
        # Ray was imported before this conftest set the variable (another test imported it)
        ray_constants.ENABLE_RAY_CLUSTER = False
    node = {"node_ip_address": LOOPBACK, "num_cpus": 1, "resources": {"npu": 1},
            "object_store_memory": 80 * 1024 * 1024}
    cluster = Cluster(initialize_head=True,
                      head_node_args={**node, "include_dashboard": False})
    try:
        for _ in range(count - 1):
            cluster.add_node(**node)
        ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
        nodes = [n for n in ray.nodes() if n["Alive"]]
        assert len(nodes) == count
        assert {n["NodeManagerAddress"] for n in nodes} == {LOOPBACK}
        assert cluster.address.startswith(f"{LOOPBACK}:")
        assert ray.cluster_resources().get("npu") == count
        port = free_port()
        serve.start(http_options={"host": LOOPBACK, "port": port}, proxy_location="HeadOnly")
        yield Boards(cluster, LOOPBACK, port)
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


def scripted(tmp: Path, body: str, name: str = "assistant") -> ModelConfig:
    """A scripted model file in ``tmp`` and its config (host runtime, 1.3.0 family)."""
    path = tmp / f"{name}.scripted"
    path.write_text("RKLLM-SCRIPTED 1\nmax_context_limit = 2048\n" + body)
    return ModelConfig(path=str(path), library="host", runtime_version="1.3.0",
                       params={"max_context_len": 2048})


def board_of(replica: str) -> str:
    """The board part of an ``X-RKLLM-Replica`` value (``host:replica-id/slot-N``)."""
    return replica.rsplit("/slot-", 1)[0]


def wait_for_running_boards(count: int, timeout: float = RECOVERY_TIMEOUT) -> None:
    """Wait until the Board deployment has ``count`` running replicas and is healthy."""
    deadline = time.monotonic() + timeout
    while True:
        status = serve.status().applications[APP_NAME].deployments["Board"]
        running = status.replica_states.get("RUNNING", 0)
        if running == count and status.status == "HEALTHY":
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"Board has {status.replica_states} replicas after {timeout} s")
        time.sleep(0.5)
