"""The server around its routes: API key, body limit, CORS, health, metrics, config, queue."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest

from rkllm_core.server import ModelConfig, ServerConfig, load_config
from rkllm_core.server.registry import ModelRegistry, QueueFullError

Serve = Callable[[ServerConfig], AbstractContextManager[str]]


def tiny(tmp_path: Path, name: str = "tiny", reply: str = "Hi.") -> ModelConfig:
    path = tmp_path / f"{name}.scripted"
    path.write_text(f'RKLLM-SCRIPTED 1\ndefault reply "{reply}"\n')
    return ModelConfig(path=str(path), library="host", params={"max_context_len": 512})


def test_api_key_guards_every_route_but_health(tmp_path: Path, serve_models: Serve) -> None:
    config = ServerConfig(models=[tiny(tmp_path)], api_key="s3cret")
    with serve_models(config) as url:
        assert httpx.get(f"{url}/").text == "Ollama is running"
        assert httpx.head(f"{url}/").status_code == 200
        refused = httpx.get(f"{url}/v1/models")
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_api_key"
        wrong = httpx.get(f"{url}/api/version", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "Bearer" in wrong.json()["error"]
        ok = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json()["data"][0]["id"] == "tiny"


def test_an_oversized_body_is_refused_with_413(tmp_path: Path, serve_models: Serve) -> None:
    config = ServerConfig(models=[tiny(tmp_path)], max_request_bytes=1000)
    with serve_models(config) as url:
        big = httpx.post(f"{url}/v1/chat/completions", content=b"x" * 5000,
                         headers={"Content-Type": "application/json"})
        assert big.status_code == 413
        assert "--max-request-bytes" in big.json()["error"]["message"]

        def chunks() -> object:
            for _ in range(10):
                yield b"y" * 500

        streamed = httpx.post(f"{url}/api/chat", content=chunks())  # no Content-Length
        assert streamed.status_code == 413 and "max-request-bytes" in streamed.json()["error"]


def test_cors_is_off_unless_origins_are_configured(tmp_path: Path, serve_models: Serve) -> None:
    origin = {"Origin": "http://webui.local"}
    with serve_models(ServerConfig(models=[tiny(tmp_path)])) as url:
        assert "access-control-allow-origin" not in httpx.get(f"{url}/v1/models",
                                                              headers=origin).headers
    config = ServerConfig(models=[tiny(tmp_path)], cors_origins=["http://webui.local"])
    with serve_models(config) as url:
        got = httpx.get(f"{url}/v1/models", headers=origin)
        assert got.headers["access-control-allow-origin"] == "http://webui.local"


def test_metrics_count_requests_by_route_and_status(tmp_path: Path,
                                                    serve_models: Serve) -> None:
    with serve_models(ServerConfig(models=[tiny(tmp_path)])) as url:
        httpx.get(f"{url}/v1/models")
        httpx.get(f"{url}/v1/models")
        text = httpx.get(f"{url}/metrics").text
    assert 'rkllm_requests_total{model="",route="/v1/models",status="200"} 2.0' in text
    assert 'rkllm_queue_waiting{model="tiny"} 0.0' in text


def test_unknown_model_names_the_served_ones(tmp_path: Path, serve_models: Serve) -> None:
    with serve_models(ServerConfig(models=[tiny(tmp_path)])) as url:
        got = httpx.get(f"{url}/rkllm/v1/models/nope")
    assert got.status_code == 404
    assert "tiny" in got.json()["error"]["message"]


def test_config_file_sets_ids_roles_and_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "qwen.rkllm").write_text("")
    (tmp_path / "serve.toml").write_text(
        'port = 9001\napi_key = "k"\n[[models]]\npath = "qwen.rkllm"\nid = "qwen"\n'
        'preset = "qwen2"\n[models.params]\nmax_context_len = 2048\n'
        '[[models]]\npath = "bge.rkllm"\nrole = "embedding"\n')
    config = load_config(tmp_path / "serve.toml", port=9002)
    assert config.port == 9002 and config.api_key == "k"
    assert [(m.id, m.role) for m in config.models] == [("qwen", "chat"), ("bge", "embedding")]
    assert config.models[0].path == str(tmp_path / "qwen.rkllm")
    assert config.models[0].params == {"max_context_len": 2048}
    with pytest.raises(ValueError, match="share the id"):
        ServerConfig(models=[ModelConfig(path="/a/m.rkllm"), ModelConfig(path="/b/m.rkllm")])
    with pytest.raises(ValueError, match=r"unknown_field|Extra inputs"):
        ServerConfig.model_validate({"models": [{"path": "/m.rkllm"}], "unknown_field": 1})
    (tmp_path / "bad.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="top level"):
        load_config(tmp_path / "bad.json")


def test_the_queue_is_fifo_and_refuses_beyond_max_queue(tmp_path: Path) -> None:
    registry = ModelRegistry([tiny(tmp_path)], max_queue=2)
    served = registry.get("tiny")
    order: list[int] = []

    async def client(i: int, release: asyncio.Event) -> None:
        async with served.turn("chat"):
            order.append(i)
            await release.wait()

    async def main() -> None:
        release = asyncio.Event()
        first = asyncio.create_task(client(0, release))
        await asyncio.sleep(0.01)
        waiting = [asyncio.create_task(client(i, release)) for i in (1, 2)]
        await asyncio.sleep(0.01)
        assert served.stats.waiting == 2
        with pytest.raises(QueueFullError) as refused:
            async with served.turn("chat"):
                pass
        assert refused.value.retry_after >= 1
        release.set()
        await asyncio.gather(first, *waiting)

    asyncio.run(main())
    assert order == [0, 1, 2] and served.stats.refused == 1
    registry.close()


def test_the_shipped_board_config_and_unit_are_consistent() -> None:
    deploy = Path(__file__).resolve().parents[2] / "docs" / "deploy"
    config = load_config(deploy / "serve.toml")
    assert config.host == "0.0.0.0" and config.isolated and config.api_key is None
    assert [(m.id, m.role) for m in config.models] == [("qwen2.5-1.5b", "chat"),
                                                       ("qwen3-embedding", "embedding")]
    unit = (deploy / "rkllm-serve.service").read_text()
    assert "rkllm serve --config /etc/rkllm/serve.toml" in unit


def test_two_ids_of_one_model_file_share_its_queue(tmp_path: Path) -> None:
    chat = tiny(tmp_path)
    embed = chat.model_copy(update={"id": "tiny-embed", "role": "embedding"})
    other = tiny(tmp_path, "other")
    registry = ModelRegistry([chat, embed, other], max_queue=0)

    async def main() -> None:
        async with registry.get("tiny").turn("chat"):
            # the same loaded model: its other id waits in the same queue (full at 0 waiting)
            with pytest.raises(QueueFullError):
                async with registry.get("tiny-embed").turn("embed"):
                    pass
            async with registry.get("other").turn("chat"):  # another model: its own queue
                pass

    asyncio.run(main())
    registry.load_all()
    assert registry.get("tiny").backend is registry.get("tiny-embed").backend
    assert registry.get("tiny").loaded and registry.get("other").loaded
    registry.close()


def test_the_sdk_page_runs_against_a_server(tmp_path: Path, serve_models: Serve,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    import re

    page = Path(__file__).resolve().parents[2] / "docs" / "clients" / "openai-sdk.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    assert len(blocks) == 2
    model = tiny(tmp_path, "Qwen2.5-1.5B-Instruct_W8A8_RK3588", "Rayleigh scattering.")
    with serve_models(ServerConfig(models=[model], api_key="KEY")) as url:
        for block in blocks:
            exec(compile(block.replace("http://BOARD:8080", url), str(page), "exec"), {})
    out = capsys.readouterr().out
    assert out.count("Rayleigh scattering.") == 2  # streamed, then the ollama client's reply
    assert "cached" in out


def test_each_request_writes_one_structured_access_line_without_its_body(
        tmp_path: Path, serve_models: Serve, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="rkllm_core.server.access")
    with serve_models(ServerConfig(models=[tiny(tmp_path)])) as url:
        httpx.post(f"{url}/api/chat", json={"model": "tiny", "stream": False, "messages": [
            {"role": "user", "content": "my secret is swordfish"}]})
        httpx.get(f"{url}/nope")
    lines = [json.loads(r.getMessage()) for r in caplog.records
             if r.name == "rkllm_core.server.access"]
    chat = next(line for line in lines if line["path"] == "/api/chat")
    assert chat["method"] == "POST" and chat["status"] == 200 and chat["model"] == "tiny"
    assert chat["ms"] > 0 and chat["client"].startswith("127.0.0.1:")
    assert next(line for line in lines if line["path"] == "/nope")["status"] == 404
    assert "swordfish" not in caplog.text
