"""Load: 32 threads and 32 asyncio tasks share one paced model for a bounded set of mixed
requests; every request completes (or fails with a typed error) within its timeout, no run's
output reaches another, and everything shuts down."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import pytest

from rkllm_core import RKLLM, RKLLMError, StreamChunk
from rkllm_core.chat import ChatEngine, ChatMessage, ToolSpec
from tests.reliability.conftest import ModelFile, paced

pytestmark = pytest.mark.stress

THREADS = 32
TASKS = 32
PER_THREAD = 4
TIMEOUT = 120.0
WEATHER = ToolSpec("get_weather", "Weather of a city",
                   {"type": "object", "properties": {"city": {"type": "string"}}})


class Ledger:
    """What every request did, and the order in which tokens reached on_token handlers."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.outcomes: list[tuple[str, str, object]] = []
        self.token_owners: list[str] = []

    def done(self, who: str, kind: str, outcome: object) -> None:
        with self.lock:
            self.outcomes.append((who, kind, outcome))

    def on_token(self, who: str) -> Any:
        def record(chunk: StreamChunk) -> None:
            with self.lock:
                self.token_owners.append(who)
        return record


def thread_requests(llm: RKLLM, chat: ChatEngine, i: int, ledger: Ledger) -> None:
    for k in range(PER_THREAD):
        who = f"t{i}-{k}"
        kind = ("generate", "break", "abort", "embed", "chat")[(i + k) % 5]
        started = time.monotonic()
        try:
            if kind == "generate":
                result = llm.generate(f"echo {who}", timeout=TIMEOUT,
                                      on_token=ledger.on_token(who))
                outcome: object = result.text == f"You said: echo {who}"
            elif kind == "break":
                pieces = []
                for chunk in llm.stream(f"echo {who}", timeout=TIMEOUT):
                    pieces.append(chunk.text)
                    if len(pieces) == 2:
                        break
                outcome = f"You said: echo {who}".startswith("".join(pieces))
            elif kind == "abort":
                stream = llm.stream(f"long {who}", timeout=TIMEOUT)
                next(stream)
                stream.abort()
                stream.close()
                outcome = stream.result.finish_reason == "abort"
            elif kind == "embed":
                vectors = llm.embed([f"a cat {who}", "a dog"], timeout=TIMEOUT)
                outcome = vectors.shape == (2, 32) and bool(np.isfinite(vectors).all())
            else:
                turn = chat.generate([ChatMessage.user(f"Weather in Paris? ({who})")],
                                     tools=[WEATHER], timeout=TIMEOUT)
                call = turn.message.tool_calls[0] if turn.message.tool_calls else None
                outcome = (turn.finish_reason == "tool_calls" and call is not None
                           and call.name == "get_weather"
                           and dict(call.arguments) == {"city": "Paris"})
        except RKLLMError as exc:
            outcome = exc
        except BaseException as exc:  # an untyped failure: the test reports it
            outcome = ("UNTYPED", repr(exc))
        ledger.done(who, kind, outcome if time.monotonic() - started < TIMEOUT + 15
                    else "too slow")


async def task_request(llm: RKLLM, chat: ChatEngine, i: int, ledger: Ledger) -> None:
    who = f"a{i}"
    kind = ("agenerate", "astream-break", "cancel", "achat")[i % 4]
    try:
        if kind == "agenerate":
            result = await llm.agenerate(f"echo {who}", timeout=TIMEOUT,
                                         on_token=ledger.on_token(who))
            outcome: object = result.text == f"You said: echo {who}"
        elif kind == "astream-break":
            pieces = []
            async for chunk in llm.astream(f"echo {who}", timeout=TIMEOUT):
                pieces.append(chunk.text)
                if len(pieces) == 3:
                    break
            outcome = f"You said: echo {who}".startswith("".join(pieces))
        elif kind == "cancel":
            task = asyncio.create_task(llm.agenerate(f"long {who}", timeout=TIMEOUT))
            await asyncio.sleep(0.01 * (i % 7))
            task.cancel()
            try:
                await task
                outcome = True  # it finished before the cancel
            except asyncio.CancelledError:
                outcome = True
        else:
            turn = await chat.agenerate([ChatMessage.user(f"Weather in Paris? ({who})")],
                                        tools=[WEATHER], timeout=TIMEOUT)
            outcome = turn.finish_reason == "tool_calls"
    except RKLLMError as exc:
        outcome = exc
    except BaseException as exc:
        outcome = ("UNTYPED", repr(exc))
    ledger.done(who, kind, outcome)


def test_32_threads_and_32_tasks_share_one_paced_model(model_file: ModelFile) -> None:
    threads_before = threading.active_count()
    llm = RKLLM(model_file(paced(100)), library="host", runtime_version="1.3.0",
                max_context_len=1024)
    chat = ChatEngine(llm)
    ledger = Ledger()

    async def tasks() -> None:
        await asyncio.gather(*(task_request(llm, chat, i, ledger) for i in range(TASKS)))

    loop_thread = threading.Thread(target=lambda: asyncio.run(tasks()))
    workers = [threading.Thread(target=thread_requests, args=(llm, chat, i, ledger))
               for i in range(THREADS)]
    start = time.monotonic()
    loop_thread.start()
    for t in workers:
        t.start()
    for t in [*workers, loop_thread]:
        t.join(TIMEOUT + 30)
    elapsed = time.monotonic() - start
    assert all(not t.is_alive() for t in [*workers, loop_thread]), "a request never returned"

    assert len(ledger.outcomes) == THREADS * PER_THREAD + TASKS
    failed = [o for o in ledger.outcomes if o[2] is not True]
    assert failed == [], failed
    # on_token handlers of concurrent runs never see each other's tokens in between
    owners = ledger.token_owners
    runs = [w for n, w in enumerate(owners) if n == 0 or owners[n - 1] != w]
    assert len(runs) == len(set(runs))
    assert elapsed < TIMEOUT

    assert llm.generate("short", timeout=30).text == "ok"
    llm.close()
    deadline = time.monotonic() + 10  # short-lived abort helper threads finish too
    while threading.active_count() > threads_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= threads_before
