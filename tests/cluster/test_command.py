"""``rkllm serve MODEL --ray`` as a user runs it: the real command, here on a one-machine Ray
cluster (``--ray-address local``) with two simulated boards, answering the official clients
(chat, /api/show, embeddings; raw completions refused with the reason) and stopping cleanly on
SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.cluster.conftest import LOOPBACK, free_port

pytestmark = pytest.mark.stress

#: Seconds the command may take to start Ray, deploy and load its models.
START_TIMEOUT = 180.0


def test_the_command_serves_a_model_on_two_boards_and_stops_on_sigterm(tmp_path: Path) -> None:
    model = tmp_path / "assistant.scripted"
    model.write_text('RKLLM-SCRIPTED 1\ndefault reply "Served by a board."\n')
    port = free_port()
    # a new local Ray would otherwise turn token auth on and write ~/.ray/auth_token
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
    command = [sys.executable, "-m", "rkllm_core.cli", "serve", str(model), "--ray",
               "--ray-address", "local", "--replicas", "2", "--host", LOOPBACK, "--port",
               str(port), "--library", "host", "--runtime-version", "1.3.0",
               "--max-context-len", "1024", "--log-level", "warning"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    url = f"http://{LOOPBACK}:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert process.poll() is None, process.communicate()[0][-3000:]
            try:
                if httpx.get(f"{url}/api/tags", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "rkllm serve --ray did not start in time"
            time.sleep(1)

        import ollama
        from openai import OpenAI

        tags = ollama.Client(host=url).list()
        assert [m.model for m in tags.models] == ["assistant:latest"]
        answer = ollama.Client(host=url).chat(
            model="assistant", messages=[{"role": "user", "content": "Hello"}])
        assert answer.message.content == "Served by a board."
        raw = OpenAI(base_url=f"{url}/v1", api_key="none").chat.completions \
            .with_raw_response.create(model="assistant",
                                      messages=[{"role": "user", "content": "Hi"}])
        assert raw.parse().choices[0].message.content == "Served by a board."
        assert raw.headers["x-rkllm-replica"].endswith("/slot-0")
        shown = ollama.Client(host=url).show("assistant")
        assert shown.modelinfo and "completion" in (shown.capabilities or [])
        vectors = OpenAI(base_url=f"{url}/v1", api_key="none").embeddings.create(
            model="assistant", input=["one", "two"])
        assert len(vectors.data) == 2 and len(vectors.data[0].embedding) > 0
        refused = httpx.post(f"{url}/v1/completions", timeout=30,
                             json={"model": "assistant", "prompt": [1, 2, 3]})
        assert refused.status_code == 400 and "single `rkllm serve`" in refused.text
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
    assert process.returncode == 0, output[-3000:]
