"""IsolatedRKLLM: the runtime in a child process; killing it mid-run costs a typed error and a
restart, never the parent."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rkllm_core import (
    RKLLM,
    InvalidParameterError,
    IsolatedRKLLM,
    ModelClosedError,
    ModelLoadError,
    ModelWedgedError,
    RunError,
    RuntimeCrashedError,
    RunTimeoutError,
)
from tests.reliability.conftest import HANGING, ModelFile, paced

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture
def isolated(model_file: ModelFile) -> Iterator[IsolatedRKLLM]:
    llm = IsolatedRKLLM(model_file(paced(200) + "hang_after_tokens = 30\n"), library="host",
                        runtime_version="1.3.0", max_context_len=512, abort_grace=1.0)
    yield llm
    llm.close()


def test_the_same_calls_as_rkllm_work_across_the_process_boundary(
        isolated: IsolatedRKLLM) -> None:
    assert isolated.pid != os.getpid()
    seen: list[str] = []
    result = isolated.generate("echo hi", on_token=lambda chunk: seen.append(chunk.text))
    assert result.text == "You said: echo hi" == "".join(seen)
    assert result.finish_reason == "stop" and result.perf.decode_tokens == len(seen)
    stream = isolated.stream("echo again")
    assert "".join(c.text for c in stream) == "You said: echo again"
    assert stream.result.finish_reason == "stop"
    assert isolated.embed(["a cat", "a dog"]).shape == (2, 32)
    isolated.generate("echo remember", keep_history=True)
    assert isolated.kv_cache_size > 0
    isolated.clear_kv_cache()
    assert isolated.kv_cache_size == 0
    assert isolated.runtime_info.release == "1.3.0" and isolated.runtime_info.is_host_runtime

    async def main() -> tuple[str, list[str]]:
        first = await isolated.agenerate("echo async")
        pieces = [c.text async for c in isolated.astream("echo stream")]
        return first.text, pieces

    text, pieces = asyncio.run(main())
    assert text == "You said: echo async" and "".join(pieces) == "You said: echo stream"
    assert isolated.restarts == 0


def test_errors_in_the_child_arrive_typed_with_their_details(
        isolated: IsolatedRKLLM, model_file: ModelFile) -> None:
    with pytest.raises(InvalidParameterError, match="NUL"):
        isolated.generate("a\x00b")
    with pytest.raises(RunError, match="RKLLM_RUN_ERROR"):
        isolated.generate("Hello", lora="missing")
    with pytest.raises(RunTimeoutError, match="did not finish") as info:
        isolated.generate("long", timeout=0.5)  # hangs after 30 tokens
    assert info.value.partial_text.startswith("word word")
    with pytest.raises(ModelLoadError, match="malloc"):
        IsolatedRKLLM(model_file('fail_init = "failed to malloc npu memory"\n'), library="host",
                      max_context_len=512)
    with pytest.raises(InvalidParameterError, match="before= hooks"):
        isolated.generate("Hello", before=[print])
    assert isolated.generate("short").text == "ok" and isolated.restarts == 0


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV], ids=["SIGKILL", "SIGSEGV"])
def test_killing_the_child_mid_stream_is_a_typed_error_and_the_next_call_restarts_it(
        isolated: IsolatedRKLLM, sig: signal.Signals) -> None:
    first_pid = isolated.pid
    stream = isolated.stream("long story")
    received = [next(stream).text for _ in range(3)]
    os.kill(first_pid, sig)  # what a crash inside librkllmrt looks like from outside
    with pytest.raises(RuntimeCrashedError, match=f"died: killed by {sig.name}") as info:
        for chunk in stream:
            received.append(chunk.text)
    assert info.value.partial_text == "".join(received)
    assert isolated.generate("echo back").text == "You said: echo back"
    assert isolated.pid != first_pid and isolated.restarts == 1


def test_every_caller_in_flight_gets_the_crash_and_the_model_recovers(
        isolated: IsolatedRKLLM) -> None:
    errors: list[type[BaseException]] = []
    started = threading.Event()

    def caller(i: int) -> None:
        try:
            isolated.generate(f"long {i}", on_token=lambda chunk: started.set())
        except BaseException as exc:
            errors.append(type(exc))

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    assert started.wait(30)
    os.kill(isolated.pid, signal.SIGKILL)
    for t in threads:
        t.join(30)
    assert errors == [RuntimeCrashedError] * 6

    async def after() -> str:
        return str((await isolated.agenerate("short")).text)

    assert asyncio.run(after()) == "ok"


def test_a_child_that_stops_answering_is_killed_and_restarted(
        isolated: IsolatedRKLLM) -> None:
    stuck = isolated.pid
    os.kill(stuck, signal.SIGSTOP)  # a wedged NPU: the process is there and says nothing
    start = time.monotonic()
    try:
        with pytest.raises(ModelWedgedError, match="was killed"):
            isolated.generate("echo hello", timeout=0.5)
    finally:
        if isolated.pid == stuck:  # pragma: no cover - only if the kill did not happen
            os.kill(stuck, signal.SIGCONT)
    assert time.monotonic() - start < 10
    assert isolated.generate("echo hello").text == "You said: echo hello"
    assert isolated.restarts == 1


def test_cancellation_and_early_exits_abort_the_run_in_the_child(
        isolated: IsolatedRKLLM) -> None:
    for chunk in isolated.stream("long"):
        assert chunk.text == "word"
        break
    stream = isolated.stream("long")
    next(stream)
    stream.close()
    assert stream.result.finish_reason == "abort"

    async def main() -> str:
        task = asyncio.create_task(isolated.agenerate("long"))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return str((await isolated.agenerate("short", timeout=30)).text)

    assert asyncio.run(main()) == "ok"
    result: list[object] = []
    runner = threading.Thread(target=lambda: result.append(isolated.generate("long")))
    runner.start()
    time.sleep(0.3)
    assert isolated.abort() is True
    runner.join(30)
    assert result and result[0].finish_reason == "abort"  # type: ignore[attr-defined]
    assert isolated.restarts == 0


def test_close_ends_the_child_and_refuses_new_calls(model_file: ModelFile) -> None:
    llm = IsolatedRKLLM(model_file(HANGING), library="host", max_context_len=512)
    pid = llm.pid
    stream = llm.stream("long")
    next(stream)
    llm.close()
    llm.close()
    with pytest.raises(ModelClosedError):
        llm.generate("short")
    assert all(chunk.text == " word" for chunk in stream)  # what came before the abort
    assert stream.result.finish_reason == "abort"  # as with RKLLM: close() aborts the run
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_ctrl_c_reaches_the_parent_only_and_aborts_the_run(model_file: ModelFile) -> None:
    script = textwrap.dedent(f"""
        from rkllm_core import IsolatedRKLLM
        llm = IsolatedRKLLM({str(model_file(paced(20)))!r}, library="host",
                            max_context_len=512)
        pid = llm.pid
        try:
            print("running", flush=True)
            llm.generate("long story")
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        print(llm.generate("short").text, llm.pid == pid, llm.restarts, flush=True)
        llm.close()
    """)
    # a terminal's Ctrl-C signals the whole process group, the child included
    child = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert child.stdout is not None
    try:
        assert child.stdout.readline().strip() == "running"
        time.sleep(0.5)
        os.killpg(child.pid, signal.SIGINT)
        out = child.stdout.read()  # the buffered stream readline used, not communicate()
        child.wait(60)
    finally:
        child.kill()
    assert child.stderr is not None
    err = child.stderr.read()
    assert out.split("\n")[:2] == ["interrupted", "ok True 0"], err
    assert child.returncode == 0, err


def test_failed_starts_and_restarts_leak_no_file_descriptors(model_file: ModelFile) -> None:
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    bad = model_file('fail_init = "failed to malloc npu memory"\n')
    before = open_fds()
    for _ in range(3):
        with pytest.raises(ModelLoadError):
            IsolatedRKLLM(bad, library="host", max_context_len=512)
    assert open_fds() == before
    llm = IsolatedRKLLM(model_file(paced(0)), library="host", max_context_len=512)
    for _ in range(2):
        os.kill(llm.pid, signal.SIGKILL)
        with pytest.raises(RuntimeCrashedError):
            llm.generate("short")
        assert llm.generate("short").text == "ok"
    llm.close()
    deadline = time.monotonic() + 5  # the dead children's pipes close on helper threads
    while open_fds() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert open_fds() == before


@pytest.mark.parametrize("thread", ["caller", "runtime"])
def test_a_crash_inside_the_runtime_loses_none_of_the_tokens_it_emitted(
        model_file: ModelFile, thread: str) -> None:
    # the runtime raises SIGSEGV as soon as the callback of its fourth token returns, so the
    # child has no time to forward anything after the callback: ten crashes in a row
    reply = "alpha beta gamma delta epsilon zeta"
    path = model_file(f"callback_thread = {thread}\ncrash_after_tokens = 4\n"
                      f'default reply "{reply}"\n')
    with IsolatedRKLLM(path, library="host", runtime_version="1.3.0",
                       max_context_len=512) as llm:
        for attempt in range(10):
            streamed: list[tuple[str, int | None]] = []
            with pytest.raises(RuntimeCrashedError, match="SIGSEGV") as info:
                for chunk in llm.stream(f"go {attempt}"):
                    streamed.append((chunk.text, chunk.token_id))
            assert "".join(text for text, _ in streamed) == "alpha beta gamma delta"
            assert info.value.partial_text == "alpha beta gamma delta"
            assert len(streamed) == 4 and all(token is not None for _, token in streamed)
        assert llm.restarts == 9  # each call after a crash started a new process


def test_a_crash_inside_the_runtime_keeps_the_emitted_text_for_generate_and_async(
        model_file: ModelFile) -> None:
    path = model_file('crash_after_tokens = 2\ndefault reply "one two three four"\n')
    with IsolatedRKLLM(path, library="host", runtime_version="1.3.0",
                       max_context_len=512) as llm:
        seen: list[str] = []
        with pytest.raises(RuntimeCrashedError) as info:
            llm.generate("go", on_token=lambda chunk: seen.append(chunk.text))
        assert "".join(seen) == info.value.partial_text == "one two"

        async def consume() -> tuple[list[str], str]:
            pieces: list[str] = []
            try:
                async for chunk in llm.astream("again"):
                    pieces.append(chunk.text)
            except RuntimeCrashedError as exc:
                return pieces, exc.partial_text
            raise AssertionError("the runtime did not crash")

        pieces, partial = asyncio.run(consume())
        assert "".join(pieces) == partial == "one two"


@pytest.mark.parametrize("kind", [RKLLM, IsolatedRKLLM], ids=["in_process", "isolated"])
def test_both_backends_end_streams_by_the_same_rules(
        model_file: ModelFile, kind: type[RKLLM] | type[IsolatedRKLLM]) -> None:
    with kind(model_file(HANGING), library="host", max_context_len=512, abort_grace=1.0) as llm:
        stream = llm.stream("long", timeout=0.5)  # five words, then nothing until aborted
        seen: list[str] = []
        with pytest.raises(RunTimeoutError, match=r"did not finish within 0\.5 s") as info:
            for chunk in stream:
                seen.append(chunk.text)
        assert info.value.partial_text == "".join(seen) == stream.text == "word" + " word" * 4

        blocker = llm.stream("long")
        first = next(blocker)
        with pytest.raises(RunTimeoutError, match=r"did not start within 0\.2 s"):
            llm.generate("short", timeout=0.2)
        blocker.close()
        assert blocker.result.finish_reason == "abort"
        assert blocker.result.text.startswith(first.text) and blocker.text == blocker.result.text

        with pytest.raises(ZeroDivisionError):
            llm.generate("long", on_token=lambda chunk: 1 / 0)

        async def in_asyncio() -> str:
            with pytest.raises(RunTimeoutError, match=r"did not finish within 0\.3 s"):
                async for _ in llm.astream("long", timeout=0.3):
                    pass
            stream = llm.astream("long")
            await stream.__anext__()
            await stream.aclose()
            return stream.result.finish_reason

        assert asyncio.run(in_asyncio()) == "abort"
        assert llm.generate("short", timeout=30).text == "ok"


def test_a_run_the_child_cannot_abort_costs_the_child_and_keeps_its_text(
        model_file: ModelFile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # every child of this test runs a runtime whose rkllm_abort does nothing (a wedged NPU)
    (tmp_path / "sitecustomize.py").write_text(
        "from rkllm_core.library import RuntimeLibrary\n"
        "RuntimeLibrary.abort = lambda self, handle: 0\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    with IsolatedRKLLM(model_file(HANGING), library="host", max_context_len=512,
                       abort_grace=0.5) as llm:
        first = llm.pid
        start = time.monotonic()
        with pytest.raises(ModelWedgedError, match="model is wedged") as info:
            llm.generate("long", timeout=0.3)  # the child says so itself, after its grace
        assert time.monotonic() - start < 5
        assert info.value.partial_text == "word" + " word" * 4
        assert llm.generate("short").text == "ok"
        assert llm.pid != first and llm.restarts == 1


def test_a_child_that_stops_answering_mid_stream_is_killed_and_the_error_keeps_the_text(
        isolated: IsolatedRKLLM) -> None:
    stuck = isolated.pid
    stream = isolated.stream("long story", timeout=0.5)
    received = [next(stream).text for _ in range(3)]
    os.kill(stuck, signal.SIGSTOP)
    start = time.monotonic()
    try:
        with pytest.raises(ModelWedgedError, match="was killed") as info:
            for chunk in stream:
                received.append(chunk.text)
    finally:
        if isolated.pid == stuck:  # pragma: no cover - only if the kill did not happen
            os.kill(stuck, signal.SIGCONT)
    # the run's timeout, then its abort's grace, each with the child's margin
    assert time.monotonic() - start < 0.5 + 1.0 + 2 * 2.0 + 3
    assert info.value.partial_text == "".join(received) == stream.text
    assert isolated.generate("echo back").text == "You said: echo back"
    assert isolated.restarts == 1
