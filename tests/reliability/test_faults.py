"""Faults the way native bindings meet them in the field: runtime errors, failed inits, abort
storms, close() mid-run, failing handlers, Ctrl-C, cancellation and a runtime that goes silent.

Each test ends with the model answering again (or, after close(), refusing with a typed error).
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from rkllm_core import (
    RKLLM,
    ModelClosedError,
    ModelLoadError,
    ModelWedgedError,
    RKLLMError,
    RunError,
    RunTimeoutError,
    StreamChunk,
)
from tests.reliability.conftest import HANGING, ModelFile, paced

ROOT = Path(__file__).resolve().parent.parent.parent


def open_model(path: Path, family: str = "1.3.0", **kwargs: object) -> RKLLM:
    kwargs.setdefault("max_context_len", 512)
    return RKLLM(path, library="host", runtime_version=family, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("family", ["1.1", "1.2.1", "1.3.0"])
def test_run_error_mid_stream_from_a_runtime_thread_keeps_the_model_usable(
        family: str, model_file: ModelFile) -> None:
    llm = open_model(model_file("callback_thread = runtime\nerror_after_tokens = 3\n"
                                'default reply "a b c d e"\n'), family)
    for _ in range(3):  # the same fault again and again changes nothing
        seen: list[str] = []
        with pytest.raises(RunError, match="RKLLM_RUN_ERROR") as info:
            for chunk in llm.stream("Hello"):
                seen.append(chunk.text)
        assert seen == ["a", " b", " c"] and info.value.partial_text == "a b c"
    assert not llm.is_running
    llm.close()


def test_a_failed_init_is_typed_and_the_next_model_loads(model_file: ModelFile) -> None:
    bad = model_file('fail_init = "failed to malloc npu memory"\n')
    for _ in range(3):
        with pytest.raises(ModelLoadError, match=r"failed to malloc npu memory.*base_domain_id"):
            open_model(bad)
    with open_model(model_file(paced(0))) as llm:
        assert llm.generate("short").text == "ok"


def test_abort_storms_from_many_threads_leave_the_model_usable(model_file: ModelFile) -> None:
    llm = open_model(model_file(paced(2000)))
    stop = threading.Event()
    reasons: list[str] = []
    errors: list[BaseException] = []

    def storm() -> None:
        while not stop.is_set():
            llm.abort()
            time.sleep(random.uniform(0, 0.002))

    def consumer(i: int) -> None:
        try:
            for n in range(10):
                if n % 2:
                    stream = llm.stream(f"echo {i}-{n}", timeout=30)
                    texts = []
                    for chunk in stream:
                        texts.append(chunk.text)
                        if random.random() < 0.3:
                            stream.abort()  # the consumer's own abort, racing the storm
                    # an aborted stream holds a prefix of the reply, and exactly what it streamed
                    assert f"You said: echo {i}-{n}".startswith("".join(texts))
                    assert stream.result.text == "".join(texts)
                    reasons.append(stream.result.finish_reason)
                else:
                    result = llm.generate(f"echo {i}-{n}", timeout=30)
                    assert f"You said: echo {i}-{n}".startswith(result.text)
                    reasons.append(result.finish_reason)
        except BaseException as exc:
            errors.append(exc)

    storms = [threading.Thread(target=storm) for _ in range(4)]
    consumers = [threading.Thread(target=consumer, args=(i,)) for i in range(8)]
    for t in storms + consumers:
        t.start()
    for t in consumers:
        t.join(120)
    stop.set()
    for t in storms:
        t.join()
    assert errors == []
    assert len(reasons) == 80 and set(reasons) <= {"stop", "abort"} and "abort" in reasons
    assert llm.generate("echo after the storm").text == "You said: echo after the storm"
    llm.close()


def test_close_during_runs_ends_every_consumer_with_a_result_or_a_typed_error(
        model_file: ModelFile) -> None:
    llm = open_model(model_file(paced(200)))
    outcomes: list[object] = []
    started = threading.Barrier(9)

    def thread_consumer(i: int) -> None:
        started.wait()
        try:
            outcomes.append(llm.generate(f"long story {i}", timeout=30).finish_reason)
        except RKLLMError as exc:
            outcomes.append(type(exc))

    async def async_consumers() -> list[object]:
        async def one(i: int) -> object:
            try:
                async for _ in llm.astream(f"long {i}", timeout=30):
                    pass
                return "stream"
            except RKLLMError as exc:
                return type(exc)

        tasks = [asyncio.create_task(one(i)) for i in range(4)]
        await asyncio.sleep(0)
        started.wait()
        return list(await asyncio.gather(*tasks))

    threads = [threading.Thread(target=thread_consumer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    closer = threading.Timer(0.3, llm.close)
    closer.start()
    async_outcomes = asyncio.run(async_consumers())
    for t in threads:
        t.join(30)
    closer.join()
    assert all(not t.is_alive() for t in threads)
    everything = outcomes + async_outcomes
    assert len(everything) == 12
    assert set(everything) <= {"abort", "stop", "stream", ModelClosedError}
    assert ModelClosedError in everything  # runs still queued at close()
    with pytest.raises(ModelClosedError):
        llm.generate("short")


@pytest.mark.parametrize("error", [KeyError("handler bug"), SystemExit(3), KeyboardInterrupt()])
def test_any_exception_in_on_token_on_a_runtime_thread_is_reraised_to_the_caller(
        model_file: ModelFile, error: BaseException) -> None:
    llm = open_model(model_file(paced(0)))

    def on_token(chunk: StreamChunk) -> None:
        raise error

    with pytest.raises(type(error)):
        llm.generate("long story", on_token=on_token)
    assert llm.generate("short", on_token=lambda chunk: None).text == "ok"
    llm.close()


SIGINT_SCRIPT = textwrap.dedent("""
    import sys
    from rkllm_core import RKLLM
    llm = RKLLM(sys.argv[1], library="host", max_context_len=512)
    for how in ("generate", "stream"):
        try:
            print("running", flush=True)
            if how == "generate":
                llm.generate("long story")
            else:
                for chunk in llm.stream("long story"):
                    pass
            print("not interrupted", flush=True)
        except KeyboardInterrupt:
            print("interrupted", how, flush=True)
        print(llm.generate("short", timeout=30).text, flush=True)
    llm.close()
    print("closed", flush=True)
""")


def test_sigint_during_generation_aborts_the_run_and_the_model_stays_usable(
        model_file: ModelFile) -> None:
    model = model_file(paced(20))  # a 40-word reply takes two seconds
    child = subprocess.Popen([sys.executable, "-c", SIGINT_SCRIPT, str(model)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout is not None
    lines = []
    try:
        for _ in range(2):
            assert child.stdout.readline().strip() == "running"
            time.sleep(0.3)
            child.send_signal(signal.SIGINT)
            lines += [child.stdout.readline().strip(), child.stdout.readline().strip()]
        # read through the same buffered stream: communicate() would skip what it holds
        out = child.stdout.read()
        child.wait(60)
    finally:
        child.kill()
    assert child.stderr is not None
    err = child.stderr.read()
    assert lines == ["interrupted generate", "ok", "interrupted stream", "ok"], err
    assert (out.strip(), child.returncode) == ("closed", 0), err


def test_cancelling_many_async_tasks_at_random_points_leaves_the_model_usable(
        model_file: ModelFile) -> None:
    llm = open_model(model_file(paced(1000)))

    async def main() -> str:
        async def consume(i: int) -> None:
            if i % 2:
                await llm.agenerate(f"long {i}")
            else:
                async for _ in llm.astream(f"long {i}"):
                    pass

        tasks = [asyncio.create_task(consume(i)) for i in range(16)]
        for task in tasks:
            await asyncio.sleep(random.uniform(0, 0.01))
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) or r is None for r in results)
        return (await llm.agenerate("short", timeout=30)).text

    assert asyncio.run(main()) == "ok"
    assert not llm.is_running
    llm.close()


@pytest.mark.parametrize("family", ["1.1", "1.3.0"])
def test_a_runtime_that_stops_calling_back_times_out_and_the_model_recovers(
        family: str, model_file: ModelFile) -> None:
    llm = open_model(model_file(HANGING), family)
    for _ in range(2):
        start = time.monotonic()
        with pytest.raises(RunTimeoutError, match=r"did not finish within 0.3 s") as info:
            llm.generate("long", timeout=0.3)
        assert time.monotonic() - start < 5
        assert info.value.partial_text == "word word word word word"
    assert llm.generate("short", timeout=30).text == "ok"
    llm.close()


def test_a_runtime_that_ignores_abort_makes_a_wedged_error_then_recovers_when_it_returns(
        model_file: ModelFile, monkeypatch: pytest.MonkeyPatch) -> None:
    llm = open_model(model_file(HANGING), abort_grace=0.5)
    real_abort = llm.lib.abort
    monkeypatch.setattr(llm.lib, "abort", lambda handle: 0)  # an NPU that no longer listens
    start = time.monotonic()
    with pytest.raises(ModelWedgedError, match=r"model is wedged.*close\(\) it and load"):
        llm.generate("long", timeout=0.3)
    assert time.monotonic() - start < 5
    with pytest.raises(ModelWedgedError, match="wedged"):  # refused at once, not queued forever
        llm.generate("short", timeout=30)
    monkeypatch.undo()
    real_abort(llm._live.native.handle)  # the runtime finally returns
    deadline = time.monotonic() + 10
    while llm.is_running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert llm.generate("short", timeout=30).text == "ok"
    llm.close()


def test_queued_runs_behind_a_wedged_run_fail_instead_of_waiting_forever(
        model_file: ModelFile, monkeypatch: pytest.MonkeyPatch) -> None:
    llm = open_model(model_file(HANGING), abort_grace=0.3)
    real_abort = llm.lib.abort
    monkeypatch.setattr(llm.lib, "abort", lambda handle: 0)
    stream = llm.stream("long", timeout=0.2)
    waiting: list[BaseException] = []

    def queued() -> None:
        try:
            llm.generate("short")
        except BaseException as exc:
            waiting.append(exc)

    behind = threading.Thread(target=queued)
    behind.start()
    with pytest.raises(ModelWedgedError):
        list(stream)
    behind.join(10)
    assert [type(e) for e in waiting] == [ModelWedgedError]
    start = time.monotonic()
    llm.close()  # returns after the abort grace instead of joining a stuck worker for ever
    assert time.monotonic() - start < 5
    monkeypatch.undo()
    real_abort(llm._worker.native.handle)  # type: ignore[union-attr]
    llm._worker._thread.join(10)  # type: ignore[union-attr]
    assert llm._worker.native.closed  # type: ignore[union-attr]


def test_a_subprocess_ends_cleanly_with_a_wedged_run_in_flight(model_file: ModelFile) -> None:
    script = textwrap.dedent(f"""
        from rkllm_core import RKLLM
        llm = RKLLM({str(model_file(HANGING))!r}, library="host", max_context_len=512,
                    abort_grace=0.5)
        llm.lib.abort = lambda handle: 0
        stream = llm.stream("long")
        next(stream)
        print("exiting", flush=True)
    """)
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "exiting", done.stderr
    assert time.monotonic() - start < 30
    assert "Traceback" not in done.stderr

