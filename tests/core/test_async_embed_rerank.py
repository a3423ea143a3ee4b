"""RKLLM.aembed / RKLLM.arerank: the results of embed / rerank without blocking the event loop,
and a cancelled call frees the model: the run in flight is aborted, the call's other runs never
start, and the next caller's run starts within the model's abort grace.

The slow model prefills like an NPU (a text of this file takes about two seconds) and calls back
from a runtime thread. Which runs started is read from the runtime's own log
(``RKLLM_LOG_LEVEL=2`` prints each run's prompt before its prefill). The helpers here are also
used by the LangChain and LlamaIndex adapter tests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from rkllm_core import RKLLM
from rkllm_core.errors import InvalidParameterError, RunTimeoutError

#: Prefills 100 tokens a second from a runtime-owned thread; answers "y" about Paris, else "n"
#: (single bytes, whose token ids are their codes).
SLOW_MODEL = (
    "RKLLM-SCRIPTED 1\n"
    "callback_thread = runtime\n"
    "prefill_tokens_per_second = 100\n"
    "hidden_size = 32\n"
    'when contains "paris" reply "y"\n'
    'default reply "n"\n'
)
#: The abort grace of the slow model: half of what the rest of one text's prefill takes when a
#: test cancels, so a call whose run is not aborted cannot let the next caller in within it.
GRACE = 1.0
#: Seconds one long text takes to prefill (about 200 tokens with the chat template).
TEXT_SECONDS = 2.0
#: When to cancel a call of several texts: halfway into its second text.
MID_BATCH = 1.25 * TEXT_SECONDS
#: When to cancel a call of one text: early in it.
MID_TEXT = 0.25 * TEXT_SECONDS
YES, NO = ord("y"), ord("n")


def long_text(i: int) -> str:
    """The i-th text of a batch; about TEXT_SECONDS of prefill on the slow model."""
    return f"text {i} about Paris: " + " ".join(f"word{i}x{k}" for k in range(155))


def slow_model(folder: Path, monkeypatch: pytest.MonkeyPatch) -> RKLLM:
    """The slow model loaded from ``folder``, logging each run's prompt, with the abort grace
    GRACE."""
    monkeypatch.setenv("RKLLM_LOG_LEVEL", "2")
    path = folder / "slow.scripted"
    path.write_text(SLOW_MODEL)
    return RKLLM(path, library="host", max_context_len=1024, abort_grace=GRACE)


@dataclass(frozen=True)
class Cancellation:
    """What happened when a call was cancelled while the next caller waited behind it."""

    runs_started: int  # runs the runtime started for the cancelled call
    wait_for_next: float  # seconds from the cancellation to the next caller's first output


async def cancel_mid_call(model: RKLLM, call: Awaitable[object], after: float,
                          capfd: pytest.CaptureFixture[str]) -> Cancellation:
    """Start ``call`` on ``model``; while it runs, queue the next caller's run (a one-token
    generation); cancel the call with ``asyncio.wait_for`` ``after`` seconds in."""
    capfd.readouterr()
    task = asyncio.ensure_future(asyncio.wait_for(call, after))
    await asyncio.sleep(min(0.3, after / 2))
    assert model.is_running and not task.done()  # the call's first run is in flight
    follower = model.astream(tokens=[ord("f")])  # queued behind every run of the call
    with pytest.raises(asyncio.TimeoutError):
        await task
    cancelled = time.monotonic()
    await follower.__anext__()
    wait = time.monotonic() - cancelled
    async for _ in follower:
        pass
    assert follower.result.finish_reason == "stop"
    log = capfd.readouterr().err
    assert 'prompt text: "f"' in log
    return Cancellation(log.split('prompt text: "f"')[0].count("prompt text:"), wait)


def expect_cancellation_frees_the_model(model: RKLLM, call: Callable[[], Awaitable[object]],
                                       runs: int, capfd: pytest.CaptureFixture[str]) -> None:
    """Cancel ``call()`` (``runs`` texts of the slow model) mid-batch, or early in its one text,
    and check that the model was handed on: not every run started, and the next caller's run
    started within the abort grace, which leaves the run in flight no time to finish."""

    async def main() -> Cancellation:
        return await cancel_mid_call(model, call(), MID_BATCH if runs > 1 else MID_TEXT, capfd)

    cancellation = asyncio.run(main())
    assert 1 <= cancellation.runs_started <= max(1, runs - 1)
    assert cancellation.wait_for_next < GRACE
    assert not model.is_running


@pytest.fixture
def slow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RKLLM]:
    model = slow_model(tmp_path, monkeypatch)
    yield model
    model.close()


@pytest.fixture
def quick(tmp_path: Path) -> Iterator[RKLLM]:
    path = tmp_path / "quick.scripted"
    path.write_text(SLOW_MODEL.replace("prefill_tokens_per_second = 100",
                                       "prefill_tokens_per_second = 2000"))
    model = RKLLM(path, library="host", max_context_len=1024)
    yield model
    model.close()


TEXTS = ["the cat sat on the mat", "Paris is the capital of France", "bananas are yellow"]


def test_aembed_and_arerank_give_what_embed_and_rerank_give(quick: RKLLM) -> None:
    async def both() -> tuple[np.ndarray, list[float], np.ndarray]:
        return (await quick.aembed(TEXTS, pooling="last", instruction="Find it"),
                await quick.arerank("capital?", TEXTS, yes_token_id=YES, no_token_id=NO),
                await quick.aembed([]))

    vectors, scores, empty = asyncio.run(both())
    np.testing.assert_allclose(vectors, quick.embed(TEXTS, pooling="last",
                                                    instruction="Find it"))
    assert scores == pytest.approx(quick.rerank("capital?", TEXTS, yes_token_id=YES,
                                                no_token_id=NO))
    assert scores[1] > 0.99 and scores[0] < 0.01
    assert empty.shape == quick.embed([]).shape == (0, 0)


def test_the_event_loop_keeps_running_while_the_model_works(slow: RKLLM) -> None:
    texts = ["a cat", "a dog"]  # about half a second of prefill each

    async def main() -> tuple[int, np.ndarray, list[float]]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        task = asyncio.create_task(ticker())
        vectors = await slow.aembed(texts)
        scores = await slow.arerank("pets", texts, yes_token_id=YES, no_token_id=NO)
        task.cancel()
        return ticks, vectors, scores

    ticks, vectors, scores = asyncio.run(main())
    assert vectors.shape == (2, 32) and len(scores) == 2
    assert ticks > 50  # two seconds of runs; a blocked loop would have ticked about once


@pytest.mark.parametrize("method", ["aembed", "arerank"])
def test_a_cancelled_call_aborts_its_run_and_lets_the_next_caller_in(
        slow: RKLLM, method: str, capfd: pytest.CaptureFixture[str]) -> None:
    texts = [long_text(i) for i in range(3)]

    def call() -> Awaitable[object]:
        if method == "aembed":
            return slow.aembed(texts)
        return slow.arerank("Which city?", texts, yes_token_id=YES, no_token_id=NO)

    expect_cancellation_frees_the_model(slow, call, len(texts), capfd)
    assert slow.embed(["still usable"]).shape == (1, 32)


def test_a_cancelled_single_text_is_aborted_in_flight(
        slow: RKLLM, capfd: pytest.CaptureFixture[str]) -> None:
    # the text has most of its prefill left when cancelled: only an abort frees the model
    expect_cancellation_frees_the_model(slow, lambda: slow.aembed(long_text(0)), 1, capfd)


def test_a_timed_out_embed_drops_the_texts_it_had_not_started(
        slow: RKLLM, capfd: pytest.CaptureFixture[str]) -> None:
    capfd.readouterr()
    with pytest.raises(RunTimeoutError):
        slow.embed([long_text(i) for i in range(3)], timeout=MID_TEXT)
    assert slow.generate(tokens=[ord("f")]).text == "n"
    log = capfd.readouterr().err
    assert log.split('prompt text: "f"')[0].count("prompt text:") == 1


def test_a_failed_argument_check_queues_nothing(slow: RKLLM) -> None:
    async def main() -> None:
        with pytest.raises(InvalidParameterError, match="pooling"):
            await slow.aembed(["a"], pooling="max")  # type: ignore[arg-type]
        with pytest.raises(InvalidParameterError, match="list of strings"):
            await slow.arerank("q", "one document", yes_token_id=YES, no_token_id=NO)

    asyncio.run(main())
    assert not slow.is_running
