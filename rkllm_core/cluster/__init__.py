"""``rkllm serve --ray``: several boards behind one endpoint, on Ray Serve
(``pip install "rkllm-py[cluster]"``).

Each board runs a :class:`~rkllm_core.cluster.replica.Board` replica, placed by the custom
resource ``npu`` the board advertises (``ray start ... --resources='{"npu": 1}'``), one request
per slot at a time; the ingress is ``rkllm serve``'s own FastAPI app
(:class:`~rkllm_core.cluster.ingress.Ingress`); the router between them
(:class:`~rkllm_core.cluster.router.ConversationAffinityRouter`) sends a conversation back to
the board and slot whose KV cache holds it. See ``docs/cluster.md``.

Example (the application, built without running it):
    >>> from rkllm_core.cluster import build_app
    >>> from rkllm_core.server import ModelConfig, ServerConfig
    >>> config = ServerConfig(models=[ModelConfig(path="/models/qwen.rkllm")], max_queue=8)
    >>> app = build_app(config, replicas=4, slots=2)
    >>> [d.name for d in deployments(app)]
    ['Ingress', 'Board']
    >>> board = deployments(app)[1]
    >>> board.num_replicas, board.max_ongoing_requests, board.ray_actor_options["resources"]
    (4, 2, {'npu': 1})
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

from rkllm_core.cluster.router import Policy

if TYPE_CHECKING:
    from ray.serve import Application

    from rkllm_core.server.config import ServerConfig

logger = logging.getLogger("rkllm_core.cluster")

#: The name of the Ray Serve application ``rkllm serve --ray`` runs.
APP_NAME = "rkllm"
#: The custom resource a board advertises, one per NPU.
NPU = "npu"


def npu_count() -> int:
    """How many ``npu`` resources the connected Ray cluster has (one per board).

    Example (not run here: it needs ``ray.init``)::

        ray.init(address="auto"); npu_count()   # 4 on a Turing Pi 2 with four RK1
    """
    import ray

    return int(ray.cluster_resources().get(NPU, 0))  # type: ignore[no-untyped-call]


def build_app(config: ServerConfig, *, replicas: int | None = None, slots: int = 1,
              routing: Policy = "affinity", stats_period_s: float = 1.0,
              health_check_period_s: float = 2.0) -> Application:
    """The Ray Serve application of ``rkllm serve --ray``: ``replicas`` boards (default: the
    cluster's ``npu`` count) with ``slots`` KV caches each, behind the ingress.

    ``routing="round_robin"`` turns the cache affinity off (the benchmark's baseline);
    ``stats_period_s`` is how often boards report what their slots hold;
    ``health_check_period_s`` how often Ray asks a board whether its runtimes live (three
    failures in a row replace it).

    Example: see :mod:`rkllm_core.cluster`.
    """
    from ray import serve
    from ray.serve.config import RequestRouterConfig

    from rkllm_core.cluster.ingress import Ingress
    from rkllm_core.cluster.replica import Board
    from rkllm_core.cluster.router import ConversationAffinityRouter

    if slots < 1:
        raise ValueError(f"--slots must be at least 1, got {slots}")
    if replicas is None:
        replicas = npu_count()
        if replicas == 0:
            raise RuntimeError(
                "no node of this Ray cluster advertises an NPU: start Ray on every board with "
                "--resources='{\"npu\": 1}' (see docs/cluster.md), or give --replicas")
    if replicas < 1:
        raise ValueError(f"--replicas must be at least 1, got {replicas}")
    router_settings: dict[str, Any] = {  # RequestRouterConfig's pydantic signature fools mypy
        "request_router_class": ConversationAffinityRouter,
        # a report is at most a period (and a control-loop round) old; routings younger than
        # this are applied again on top of it
        "request_router_kwargs": {"policy": routing, "report_lag_s": 3 * stats_period_s + 2},
        "request_routing_stats_period_s": stats_period_s,
        "request_routing_stats_timeout_s": max(5.0, 3 * stats_period_s)}
    router = RequestRouterConfig(**router_settings)
    deployment: Any = serve.deployment  # its overloads do not type the class form
    boards = deployment(Board, name="Board").options(
        num_replicas=replicas,
        max_ongoing_requests=slots,  # one request at a time per slot (per KV cache)
        max_queued_requests=max(1, config.max_queue),
        ray_actor_options={"resources": {NPU: 1}, "num_cpus": 0},
        health_check_period_s=health_check_period_s,
        health_check_timeout_s=max(10.0, 3 * health_check_period_s),
        request_router_config=router)
    ingress = deployment(serve.ingress()(Ingress), name="Ingress").options(
        # on the head, next to the HTTP proxy: a board that leaves takes only its own replica
        num_replicas=1, ray_actor_options={"num_cpus": 0,
                                           "resources": {"node:__internal_head__": 0.001}},
        # the ingress only relays; the boards' handle queue is the bound (--max-queue)
        max_ongoing_requests=max(64, 4 * (replicas * slots + config.max_queue)))
    board_app = boards.bind(config.models, slots=slots, isolated=config.isolated,
                            max_queue=config.max_queue)
    app: Application = ingress.bind(config, board_app)
    return app


def deployments(app: Application) -> list[Any]:
    """The deployments of an application built by :func:`build_app`, ingress first.

    Example: see :mod:`rkllm_core.cluster`.
    """
    found = []
    pending: list[Any] = [app]
    while pending:
        node = pending.pop(0)
        bound = getattr(node, "_bound_deployment", None)
        if bound is None:
            continue
        found.append(bound)
        pending.extend(a for a in [*bound.init_args, *bound.init_kwargs.values()]
                       if hasattr(a, "_bound_deployment"))
    return found


def run(config: ServerConfig, *, address: str | None = None, replicas: int | None = None,
        slots: int = 1, routing: Policy = "affinity", blocking: bool = True) -> None:
    """Connect to the Ray cluster at ``address`` (``None``: the one this machine belongs to,
    from ``ray start``; ``"local"``: a new one-node cluster on 127.0.0.1 with ``replicas``
    simulated NPUs, to try it on one machine), start Serve's HTTP proxy on
    ``config.host:config.port`` (on the head node only), run the application and, with
    ``blocking``, serve until Ctrl-C or SIGTERM (then Serve is shut down).

    Example (not run here: it blocks)::

        run(ServerConfig(models=[ModelConfig(path="qwen.rkllm")], host="0.0.0.0"),
            address="auto")
    """
    import ray
    from ray import serve

    if not ray.is_initialized():
        if address == "local":
            ray.init(resources={NPU: replicas or 1}, include_dashboard=False,
                     _node_ip_address="127.0.0.1", logging_level=logging.WARNING)
        else:
            ray.init(address=address or "auto", logging_level=logging.WARNING)
    serve.start(http_options={"host": config.host, "port": config.port},
                proxy_location="HeadOnly")
    app = build_app(config, replicas=replicas, slots=slots, routing=routing)
    serve.run(app, name=APP_NAME, route_prefix="/")
    logger.info("serving %s on http://%s:%d with %s",
                ", ".join(m.id for m in config.models), config.host, config.port,
                f"{replicas or npu_count()} boards x {slots} slots")
    if not blocking:
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # systemd's stop: shut down cleanly
    try:
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        # the proxy too, so that a next run listens where it is told
        serve.shutdown()  # type: ignore[no-untyped-call]


__all__ = ["APP_NAME", "NPU", "build_app", "deployments", "npu_count", "run"]
