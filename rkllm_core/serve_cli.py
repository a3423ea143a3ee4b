"""``rkllm serve``: the command line of the server (its code is :mod:`rkllm_core.server`, in
the ``[server]`` extra; this module imports none of it until the command runs).

Examples (shell)::

    rkllm serve qwen2.5-1.5b.rkllm                       # 127.0.0.1:8080, OpenAI + Ollama
    rkllm serve qwen.rkllm bge.rkllm --host 0.0.0.0 --api-key "$KEY" --isolated
    rkllm serve --config /etc/rkllm/serve.toml
    rkllm serve qwen.rkllm --ray --host 0.0.0.0 --api-key "$KEY"   # every board of the Ray
                                                                     # cluster (docs/cluster.md)

Example:
    >>> from rkllm_core.cli import build_parser
    >>> args = build_parser().parse_args(["serve", "m.rkllm", "--port", "9000"])
    >>> args.port, args.models, args.host
    (9000, ['m.rkllm'], None)
    >>> args = build_parser().parse_args(["serve", "m.rkllm", "--ray", "--slots", "2"])
    >>> args.ray, args.ray_address, args.replicas, args.slots
    (True, None, None, 2)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

#: Command-line options that, when given, override the config file.
_OVERRIDES = ("host", "port", "api_key", "max_queue", "request_timeout", "isolated",
              "cors_origins", "max_request_bytes")


def add_serve_parser(sub: Any) -> None:
    """Add the ``serve`` subcommand to the ``rkllm`` parser."""
    p = sub.add_parser("serve", help="serve models over the OpenAI and Ollama HTTP APIs "
                                     "(needs rkllm-py[server])")
    p.add_argument("models", nargs="*", metavar="MODEL_PATH",
                   help="model files; each is served under its file name without extension")
    p.add_argument("--config", default=None,
                   help="a .toml or .json file with the models and server settings")
    p.add_argument("--host", default=None, help="address to bind (default 127.0.0.1: this "
                   "machine only; 0.0.0.0 serves the network, with --api-key)")
    p.add_argument("--port", type=int, default=None, help="port (default 8080)")
    p.add_argument("--api-key", default=None,
                   help="require `Authorization: Bearer KEY` (default: RKLLM_API_KEY if set)")
    p.add_argument("--isolated", action="store_const", const=True, default=None,
                   help="run each model's runtime in a child process: a crash fails one "
                        "request and the next is served")
    p.add_argument("--max-queue", type=int, default=None,
                   help="requests that may wait per model before 429 (default 32)")
    p.add_argument("--request-timeout", type=float, default=None,
                   help="seconds a run may take before it is aborted (default 600)")
    p.add_argument("--cors-origin", dest="cors_origins", action="append", default=None,
                   help="allow this browser origin (repeatable; default: no CORS)")
    p.add_argument("--max-request-bytes", type=int, default=None,
                   help="largest request body (default 8 MiB)")
    p.add_argument("--max-context-len", type=int, default=None,
                   help="context of models given on the command line (default 4096)")
    p.add_argument("--preset", default=None,
                   help="chat template preset of models given on the command line")
    p.add_argument("--library", default=None,
                   help="librkllmrt.so path, or 'host' (default: found as `rkllm info` shows)")
    p.add_argument("--runtime-version", default=None,
                   help="runtime release when detection should not decide (e.g. 1.2.3)")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"])
    ray = p.add_argument_group("several boards (needs rkllm-py[cluster]; see docs/cluster.md)")
    ray.add_argument("--ray", action="store_true",
                     help="serve on every board of a Ray cluster: one replica per board "
                          "(placed by the custom resource npu), conversations routed to the "
                          "board that holds their KV cache")
    ray.add_argument("--ray-address", default=None,
                     help="the cluster to join (default: the one this machine is part of, "
                          "from `ray start`; 'local' starts one on this machine)")
    ray.add_argument("--replicas", type=int, default=None,
                     help="boards to use (default: the cluster's npu count)")
    ray.add_argument("--slots", type=int, default=None,
                     help="KV caches per board: instances of each chat model per board, so "
                          "this many conversations stay cached on one board (default 1)")
    p.set_defaults(func=run_serve)


def config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~rkllm_core.server.ServerConfig` the command line describes."""
    from rkllm_core.server.config import ModelConfig, ServerConfig, load_config

    overrides = {k: getattr(args, k) for k in _OVERRIDES if getattr(args, k) is not None}
    if "api_key" not in overrides and os.environ.get("RKLLM_API_KEY"):
        overrides["api_key"] = os.environ["RKLLM_API_KEY"]
    params = {"max_context_len": args.max_context_len or 4096}
    models = [ModelConfig(path=str(path), library=args.library, preset=args.preset,
                          runtime_version=args.runtime_version, params=params)
              for path in args.models]
    if args.config:
        return load_config(args.config, models=models, **overrides)
    return ServerConfig(models=models, **overrides)


def run_serve(args: argparse.Namespace) -> int:
    """Run the server until Ctrl-C or SIGTERM."""
    try:
        from rkllm_core.server import serve
    except ImportError as exc:
        print(f"rkllm serve needs the server extra: pip install \"rkllm-py[server]\" ({exc})",
              file=sys.stderr)
        return 2
    from pydantic import ValidationError

    ray_only = [f"--{name.replace('_', '-')}" for name in ("ray_address", "replicas", "slots")
                if getattr(args, name, None) is not None]
    if ray_only and not getattr(args, "ray", False):
        print(f"rkllm serve: {', '.join(ray_only)} need --ray (a Ray cluster of boards)",
              file=sys.stderr)
        return 2
    try:
        config = config_from_args(args)
    except ValidationError as exc:
        print(f"rkllm serve: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s "
                        "%(levelname)s %(message)s")
    if config.host not in ("127.0.0.1", "localhost", "::1") and config.api_key is None:
        logging.getLogger("rkllm_core.server").warning(
            "serving on %s without --api-key: anyone on the network can use the models",
            config.host)
    if getattr(args, "ray", False):
        return _run_on_ray(config, args)
    serve(config, log_level=args.log_level)
    return 0


def _run_on_ray(config: Any, args: argparse.Namespace) -> int:
    try:
        from rkllm_core.cluster import run
    except ImportError as exc:
        print(f"rkllm serve --ray needs the cluster extra: pip install \"rkllm-py[cluster]\" "
              f"({exc})", file=sys.stderr)
        return 2
    try:
        run(config, address=args.ray_address, replicas=args.replicas, slots=args.slots or 1)
    except (RuntimeError, ValueError, ConnectionError) as exc:
        print(f"rkllm serve --ray: {exc}", file=sys.stderr)
        return 1
    return 0
