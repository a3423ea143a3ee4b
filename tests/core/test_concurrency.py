"""Aborts, timeouts, closing and sharing one model between threads and asyncio tasks.

The HANGING model stops sending callbacks after five tokens until rkllm_abort: a run that is
not aborted never ends, so each test below fails (by RunTimeoutError or pytest-timeout) unless
the abort really happened.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from rkllm_core import (
    RKLLM,
    BusyError,
    ModelClosedError,
    RunTimeoutError,
    StreamChunk,
)
from tests.core.conftest import FAMILIES, HANGING, ModelFile, open_model

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture(params=FAMILIES)
def hanging(request: pytest.FixtureRequest, model_file: ModelFile) -> RKLLM:
    llm = open_model(request.param, model_file(HANGING))
    request.addfinalizer(llm.close)
    return llm


def test_break_mid_stream_aborts_and_model_stays_usable(hanging: RKLLM) -> None:
    for chunk in hanging.stream("long"):
        assert chunk.text == "word"
        break
    assert hanging.generate("short", timeout=60).text == "ok"


def test_closing_a_stream_aborts_it_with_finish_reason_abort(hanging: RKLLM) -> None:
    stream = hanging.stream("long")
    first = next(stream)
    stream.close()
    assert stream.result.finish_reason == "abort"
    assert stream.result.text.startswith(first.text)
    assert not hanging.is_running


def test_an_exception_in_the_consumer_aborts_the_run(hanging: RKLLM) -> None:
    with pytest.raises(ZeroDivisionError):
        for _ in hanging.stream("long"):
            1 / 0  # noqa: B018
    assert hanging.generate("short", timeout=60).text == "ok"


def test_abort_from_another_thread_ends_the_run_with_abort(hanging: RKLLM) -> None:
    def abort_on_first(chunk: StreamChunk) -> None:
        threading.Thread(target=hanging.abort).start()

    result = hanging.generate("long", on_token=abort_on_first)
    assert result.finish_reason == "abort"
    assert 1 <= len(result.token_ids) <= 5
    assert hanging.abort() is False  # nothing is running any more


def test_is_running_is_true_only_while_a_run_executes(hanging: RKLLM) -> None:
    assert not hanging.is_running
    stream = hanging.stream("long")
    next(stream)
    assert hanging.is_running
    stream.close()
    assert not hanging.is_running


def test_a_run_exceeding_its_timeout_is_aborted_with_the_partial_text(hanging: RKLLM) -> None:
    seen: list[str] = []
    with pytest.raises(RunTimeoutError, match="did not finish within") as info:
        hanging.generate("long", timeout=0.5, on_token=lambda chunk: seen.append(chunk.text))
    assert info.value.partial_text == "".join(seen)
    assert hanging.generate("short", timeout=60).text == "ok"


def test_a_run_waiting_behind_a_busy_model_times_out_without_starting(hanging: RKLLM) -> None:
    stream = hanging.stream("long")
    next(stream)
    with pytest.raises(BusyError, match="did not start"):
        hanging.generate("short", timeout=0.2)
    stream.close()
    assert hanging.generate("short", timeout=60).text == "ok"


def test_ctrl_c_while_waiting_for_tokens_aborts_the_run(hanging: RKLLM) -> None:
    stream = hanging.stream("long")
    got = [next(stream) for _ in range(5)]  # the run now hangs: the next read blocks
    main = threading.get_ident()
    timer = threading.Timer(0.05, signal.pthread_kill, (main, signal.SIGINT))
    with pytest.raises(KeyboardInterrupt):
        timer.start()
        next(stream)
    timer.join()
    assert len(got) == 5
    assert hanging.generate("short", timeout=60).text == "ok"


def test_close_while_a_run_is_in_flight_aborts_it_and_fails_queued_runs(
    model_file: ModelFile,
) -> None:
    llm = open_model("1.3.0", model_file(HANGING))
    stream = llm.stream("long")
    next(stream)
    queued_error: list[BaseException] = []

    def queued() -> None:
        try:
            llm.generate("short")
        except BaseException as exc:
            queued_error.append(exc)

    waiter = threading.Thread(target=queued)
    waiter.start()
    while not llm._live._jobs:  # the second run is queued behind the hanging one
        threading.Event().wait(0.001)
    llm.close()
    waiter.join()
    assert [type(e) for e in queued_error] == [ModelClosedError]
    assert all(chunk.text == " word" for chunk in stream)  # what was queued before the abort
    assert stream.result.finish_reason == "abort"
    with pytest.raises(ModelClosedError):
        llm.generate("short")
    llm.close()  # idempotent
    assert llm.closed


def test_sixteen_threads_share_one_model_without_interleaving() -> None:
    llm = open_model("1.3.0")
    events: list[tuple[int, str]] = []
    results: dict[int, str] = {}
    lock = threading.Lock()

    def worker(i: int) -> None:
        def on_token(chunk: StreamChunk) -> None:
            with lock:
                events.append((i, chunk.text))

        results[i] = llm.generate(f"echo {i}", on_token=on_token).text

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: f"You said: echo {i}" for i in range(16)}
    order = [i for i, _ in events]
    runs = [i for n, i in enumerate(order) if n == 0 or order[n - 1] != i]
    assert sorted(runs) == list(range(16))  # each run's tokens are contiguous
    llm.close()


def test_sixteen_threads_stream_concurrently_with_runtime_callbacks(model_file: ModelFile) -> None:
    llm = open_model("1.2.1", model_file('callback_thread = runtime\n'
                                         'when contains "echo" reply "You said: {input}"\n'))
    results: dict[int, str] = {}

    def worker(i: int) -> None:
        results[i] = "".join(c.text for c in llm.stream(f"echo {i} ünïcödé"))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: f"You said: echo {i} ünïcödé" for i in range(16)}
    llm.close()


def test_agenerate_and_astream_results() -> None:
    llm = open_model("1.3.0")

    async def main() -> tuple[str, list[str], str]:
        result = await llm.agenerate("unicode")
        stream = llm.astream("What is the capital of France?")
        texts = [chunk.text async for chunk in stream]
        return result.text, texts, stream.result.finish_reason

    text, texts, reason = asyncio.run(main())
    assert text == "Grüße 你好 🙂!"
    assert "".join(texts) == "The capital of France is Paris." and reason == "stop"
    llm.close()


def test_cancelling_an_agenerate_task_aborts_the_run_without_blocking_the_loop(
    hanging: RKLLM,
) -> None:
    async def main() -> str:
        loop = asyncio.get_running_loop()
        started = asyncio.Event()

        def on_token(chunk: StreamChunk) -> None:
            loop.call_soon_threadsafe(started.set)

        task = asyncio.create_task(hanging.agenerate("long", on_token=on_token))
        await started.wait()  # the loop keeps running while the run hangs
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return (await hanging.agenerate("short", timeout=60)).text

    assert asyncio.run(main()) == "ok"


def test_cancelling_a_task_iterating_astream_aborts_the_run(hanging: RKLLM) -> None:
    async def main() -> str:
        first = asyncio.Event()

        async def consume() -> None:
            async for _ in hanging.astream("long"):
                first.set()

        task = asyncio.create_task(consume())
        await first.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return (await hanging.agenerate("short", timeout=60)).text

    assert asyncio.run(main()) == "ok"


def test_breaking_out_of_astream_aborts_the_run(hanging: RKLLM) -> None:
    async def main() -> str:
        async for _ in hanging.astream("long"):
            break
        return (await hanging.agenerate("short", timeout=60)).text

    assert asyncio.run(main()) == "ok"


def test_async_timeout_aborts_the_run(hanging: RKLLM) -> None:
    async def main() -> str:
        with pytest.raises(RunTimeoutError, match="did not finish"):
            await hanging.agenerate("long", timeout=0.3)
        return (await hanging.agenerate("short", timeout=60)).text

    assert asyncio.run(main()) == "ok"


def test_async_tasks_share_one_model_in_fifo_order() -> None:
    llm = open_model("1.2.3")

    async def main() -> list[str]:
        tasks = [asyncio.create_task(llm.agenerate(f"echo {i}")) for i in range(8)]
        return [r.text for r in await asyncio.gather(*tasks)]

    assert asyncio.run(main()) == [f"You said: echo {i}" for i in range(8)]
    llm.close()


def test_an_unreferenced_model_is_closed_by_the_garbage_collector() -> None:
    llm = open_model("1.3.0")
    worker = llm._live
    del llm
    gc.collect()
    assert worker.closed and not worker._thread.is_alive()
    assert worker.native.closed


def test_a_stream_keeps_its_model_alive() -> None:
    stream = open_model("1.3.0").stream("What is the capital of France?")
    gc.collect()
    assert "".join(c.text for c in stream) == "The capital of France is Paris."


def test_interpreter_exit_with_a_run_in_flight_closes_the_model(tmp_path: Path) -> None:
    model = tmp_path / "hang.scripted"
    model.write_text("RKLLM-SCRIPTED 1\n" + HANGING)
    script = (
        "import atexit\n"
        "from rkllm_core import RKLLM\n"
        "engines = []\n"
        "# registered first, so it runs after every other exit handler\n"
        "atexit.register(lambda: print('destroyed' if engines[0].native.closed else 'leaked'))\n"
        f"llm = RKLLM({str(model)!r}, library='host', max_context_len=512)\n"
        "engines.append(llm._live)\n"
        "stream = llm.stream('long')\n"
        "next(stream)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "destroyed"


def test_abort_called_inside_on_token_stops_the_run_after_that_token(hanging: RKLLM) -> None:
    result = hanging.generate("long", on_token=lambda chunk: hanging.abort())
    assert (result.text, result.finish_reason) == ("word", "abort")
    assert hanging.generate("short", timeout=60).text == "ok"
