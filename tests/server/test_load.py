"""The server under load and faults (issue 15): a FIFO queue per model that refuses only when
full, a client that leaves aborts its run, a runtime crash under ``--isolated`` fails one
request. Real servers on 127.0.0.1, the official ``openai`` client; every wait is bounded."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import openai
import pytest

from rkllm_core.server import ModelConfig, ServerConfig
from rkllm_core.worker import ABORT_GRACE

Serve = Callable[[ServerConfig], AbstractContextManager[str]]

pytestmark = pytest.mark.stress

#: 12 words at 40 tokens/s: each turn takes about 0.3 s, so 16 of them queue visibly
PACED = ('RKLLM-SCRIPTED 1\ndecode_tokens_per_second = 40\n'
         'when contains "long" reply "' + " ".join(f"w{i}" for i in range(900)) + '"\n'
         'default reply "one two three four five six seven eight nine ten eleven twelve"\n')
TWELVE = "one two three four five six seven eight nine ten eleven twelve"


def model(tmp_path: Path, text: str = PACED, name: str = "paced") -> ModelConfig:
    path = tmp_path / f"{name}.scripted"
    path.write_text(text)
    return ModelConfig(path=str(path), library="host", params={"max_context_len": 4096})


def metric(url: str, prefix: str) -> float:
    """The sum of the /metrics samples whose line starts with ``prefix``."""
    return sum(float(line.rsplit(" ", 1)[1])
               for line in httpx.get(f"{url}/metrics").text.splitlines()
               if line.startswith(prefix))


def waiting(url: str) -> float:
    return metric(url, "rkllm_queue_waiting{")


def arrived(url: str) -> float:
    """Chat requests the server has taken: waiting, running or answered."""
    return (waiting(url) + metric(url, "rkllm_queue_running{") +
            metric(url, 'rkllm_requests_total{model="paced",route="/v1/chat/completions"'))


def wait_until(condition: Callable[[], bool], what: str, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_sixteen_streaming_clients_all_finish_in_arrival_order(tmp_path: Path,
                                                               serve_models: Serve) -> None:
    with serve_models(ServerConfig(models=[model(tmp_path)], max_queue=32)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        started: list[int] = []
        texts: dict[int, str] = {}
        errors: list[BaseException] = []
        lock = threading.Lock()

        def chat(i: int) -> None:
            try:
                stream = client.chat.completions.create(
                    model="paced", stream=True,
                    messages=[{"role": "user", "content": f"client {i}"}])
                parts = []
                for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        if not parts:
                            with lock:
                                started.append(i)
                        parts.append(chunk.choices[0].delta.content)
                texts[i] = "".join(parts)
            except BaseException as exc:  # reported below, with the client's number
                errors.append(exc)

        threads = []
        for i in range(16):
            threads.append(threading.Thread(target=chat, args=(i,)))
            threads[-1].start()
            # the next client arrives only once the server has taken this one
            wait_until(lambda i=i: arrived(url) >= i + 1, f"client {i} to be queued")
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors
        assert started == list(range(16))  # served in the order they arrived
        assert all(texts[i] == TWELVE for i in range(16))


def test_a_full_queue_answers_429_with_retry_after(tmp_path: Path, serve_models: Serve) -> None:
    with serve_models(ServerConfig(models=[model(tmp_path)], max_queue=1)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        done: list[str] = []

        def long_chat(prompt: str) -> None:
            reply = client.chat.completions.create(
                model="paced", messages=[{"role": "user", "content": prompt}], max_tokens=40)
            done.append(reply.choices[0].message.content or "")

        first = threading.Thread(target=long_chat, args=("a long one",))
        first.start()
        wait_until(lambda: "rkllm_queue_running{model=\"paced\"} 1.0" in
                   httpx.get(f"{url}/metrics").text, "the first request to run")
        second = threading.Thread(target=long_chat, args=("a second long one",))
        second.start()
        wait_until(lambda: waiting(url) == 1, "the second request to wait")
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model="paced",
                                           messages=[{"role": "user", "content": "third"}])
        assert int(refused.value.response.headers["Retry-After"]) >= 1
        assert refused.value.body["code"] == "queue_full"  # type: ignore[index]
        raw = httpx.post(f"{url}/api/chat", json={"model": "paced", "messages": [
            {"role": "user", "content": "fourth"}]})
        assert raw.status_code == 429 and "max-queue" in raw.json()["error"]
        first.join(timeout=60)
        second.join(timeout=60)
        assert len(done) == 2  # the waiting one was served, not dropped


def test_a_client_that_disconnects_aborts_its_run(tmp_path: Path, serve_models: Serve) -> None:
    with serve_models(ServerConfig(models=[model(tmp_path)])) as url:
        # the long reply is 900 tokens at 40/s: 22 s if nobody aborted it
        with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=60, json={
                "model": "paced", "stream": True,
                "messages": [{"role": "user", "content": "a long story"}]}) as response:
            lines = response.iter_lines()
            assert sum(1 for line, _ in zip(lines, range(6), strict=False)
                       if line.startswith("data: ")) >= 3
        left = time.monotonic()  # the connection is closed here
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        reply = client.chat.completions.create(
            model="paced", messages=[{"role": "user", "content": "short"}])
        assert reply.choices[0].message.content == TWELVE
        # the next request ran after the aborted one ended: within the abort grace, not after
        # the 20 s the dropped reply still had to go
        assert time.monotonic() - left < ABORT_GRACE


CRASHY = ('RKLLM-SCRIPTED 1\ncrash_after_tokens = 3\ncrash_on = "boom"\n'
          'default reply "alpha beta gamma delta epsilon"\n')


def test_a_runtime_crash_under_isolation_fails_one_request_and_the_next_answers(
        tmp_path: Path, serve_models: Serve) -> None:
    config = ServerConfig(models=[model(tmp_path, CRASHY, "crashy")], isolated=True)
    with serve_models(config) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.InternalServerError) as crashed:
            client.chat.completions.create(model="crashy",
                                           messages=[{"role": "user", "content": "boom"}])
        assert crashed.value.status_code == 503
        assert "SIGSEGV" in str(crashed.value.body)
        # streamed: the tokens before the crash arrive, then one error event
        got: list[str] = []
        with pytest.raises(openai.APIError):
            for chunk in client.chat.completions.create(
                    model="crashy", stream=True,
                    messages=[{"role": "user", "content": "boom again"}]):
                if chunk.choices and chunk.choices[0].delta.content:
                    got.append(chunk.choices[0].delta.content)
        assert "".join(got) == "alpha beta gamma"
        reply = client.chat.completions.create(
            model="crashy", messages=[{"role": "user", "content": "fine now?"}])
        assert reply.choices[0].message.content == "alpha beta gamma delta epsilon"
        assert httpx.get(f"{url}/").status_code == 200
