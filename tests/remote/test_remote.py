"""The remote backend against a real ``rkllm serve`` on 127.0.0.1 with scripted models: the chat
engine's features over HTTP, KV-cache ownership shared with other clients, aborts, timeouts,
typed errors, embeddings and reranking."""

from __future__ import annotations

import asyncio
import http.server
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from rkllm_core import RKLLM
from rkllm_core.chat import ChatEngine, ChatMessage, ToolSpec
from rkllm_core.errors import (
    InvalidParameterError,
    ModelClosedError,
    RemoteUnavailableError,
    RunTimeoutError,
)
from rkllm_core.remote import RemoteRKLLM
from rkllm_core.server import ServerConfig
from tests.remote.conftest import JUDGE, Serve, model

WEATHER = ToolSpec("get_weather", "The weather in a city",
                   {"type": "object", "properties": {"city": {"type": "string"}},
                    "required": ["city"]})


def test_a_multi_turn_chat_reuses_the_servers_cache_and_prefills_only_new_turns(
        url: str) -> None:
    with RemoteRKLLM(url, "m") as llm:
        chat = ChatEngine(llm)
        history = [ChatMessage.system("You are terse."), ChatMessage.user("My name is Alice.")]
        reply = first = chat.generate(history)
        assert not first.reused_cache
        prefills = []
        for turn in range(2, 7):
            history += [reply.message, ChatMessage.user(f"Remember fact number {turn}.")]
            reply = chat.generate(history)
            assert reply.reused_cache
            prefills.append(reply.usage.prefill_tokens)
            assert reply.usage.input_tokens == llm.kv_cache_size - reply.usage.output_tokens
        # every later turn prefilled the same few tokens on the server: its own message only
        assert len(set(prefills)) == 1 and prefills[0] < first.usage.prefill_tokens
        history += [reply.message, ChatMessage.user("What is my name?")]
        assert chat.generate(history).message.content == "Your name is Alice."


def _two_turns(chat: ChatEngine) -> list[ChatMessage]:
    history = [ChatMessage.user("My name is Alice.")]
    first = chat.generate(history)
    history += [first.message, ChatMessage.user("Hello.")]
    second = chat.generate(history)
    assert second.reused_cache
    return [*history, second.message, ChatMessage.user("What is my name?")]


def test_a_chat_route_request_in_between_makes_the_next_turn_replay_and_answer_right(
        url: str) -> None:
    with RemoteRKLLM(url, "m") as llm:
        chat = ChatEngine(llm)
        history = _two_turns(chat)
        other = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
            "model": "m", "messages": [{"role": "user", "content": "Hello from elsewhere."}]})
        assert other.status_code == 200, other.text
        third = chat.generate(history)
        # the cache held the other conversation: the turn was replayed, not continued
        assert not third.reused_cache
        assert third.message.content == "Your name is Alice."
        assert chat.generate([*history, third.message,
                              ChatMessage.user("What is my name?")]).reused_cache


def test_two_remote_clients_take_turns_on_one_model_and_both_stay_right(url: str) -> None:
    with RemoteRKLLM(url, "m") as alice_side, RemoteRKLLM(url, "m") as bob_side:
        alice, bob = ChatEngine(alice_side), ChatEngine(bob_side)
        history = _two_turns(alice)
        assert bob.generate([ChatMessage.user("My name is Bob.")]).message.content == \
            "OK, noted."
        third = alice.generate(history)
        assert not third.reused_cache and third.message.content == "Your name is Alice."
        bob_turn = bob.generate([ChatMessage.user("My name is Bob."),
                                 ChatMessage.assistant("OK, noted."),
                                 ChatMessage.user("What is my name?")])
        assert not bob_turn.reused_cache and bob_turn.message.content == "I do not know."


def test_an_embedding_in_between_clears_the_cache_and_the_turn_replays(url: str) -> None:
    with RemoteRKLLM(url, "m") as llm:
        chat = ChatEngine(llm)
        history = _two_turns(chat)
        assert llm.embed(["a cat"]).shape == (1, 16)
        third = chat.generate(history)
        assert not third.reused_cache and third.message.content == "Your name is Alice."


def test_tool_calls_stream_and_round_trip_through_the_remote_backend(url: str) -> None:
    with RemoteRKLLM(url, "m") as llm:
        chat = ChatEngine(llm)
        history = [ChatMessage.user("What is the weather in Paris?")]
        stream = chat.stream(history, tools=[WEATHER])
        chunks = list(stream)
        assert "".join(c.content for c in chunks) == "Let me look."
        deltas = [d for c in chunks for d in c.tool_calls]
        assert json.loads("".join(d.arguments for d in deltas)) == {"city": "Paris"}
        turn = stream.result
        [call] = turn.message.tool_calls
        assert turn.finish_reason == "tool_calls" and call.name == "get_weather"
        history += [turn.message, ChatMessage.tool("sunny, 21 C", tool_call_id=call.id,
                                                   name="get_weather")]
        answer = chat.generate(history, tools=[WEATHER])
        assert answer.reused_cache and answer.message.content == "It is sunny in Paris."


def test_reasoning_stop_sequences_and_structured_output_work_remotely(url: str) -> None:
    with RemoteRKLLM(url, "m") as llm:
        chat = ChatEngine(llm)
        thought = chat.generate([ChatMessage.user("Please think about it.")],
                                enable_thinking=True)
        assert (thought.message.reasoning, thought.message.content) == \
            ("Let me consider.", "Done thinking.")
        cut = chat.generate([ChatMessage.user("stop test")], stop=["User:"])
        assert cut.message.content == "Hello there. " and cut.stop_sequence == "User:"
        schema = {"type": "object", "properties": {"city": {"type": "string"},
                                                   "days": {"type": "integer"}},
                  "required": ["city", "days"]}
        value, _ = chat.generate_structured([ChatMessage.user("json please")], schema)
        assert value == {"city": "Paris", "days": 3}  # repaired once, on the server's cache


def test_tokens_mode_sends_only_new_tokens_and_cuts_a_diverged_history_remotely(
        url: str, tmp_path: Path) -> None:
    from tests.chat.test_engine_modes import byte_tokenizer

    with RemoteRKLLM(url, "tokens") as llm:
        chat = ChatEngine(llm, tokenizer=byte_tokenizer(tmp_path), preset="chatml")
        base = [ChatMessage.system("Be brief."), ChatMessage.user("My name is Alice.")]
        first = chat.generate(base)
        second = chat.generate([*base, first.message, ChatMessage.user("Fact 2.")])
        new_part = "<|im_end|>\n<|im_start|>user\nFact 2.<|im_end|>\n<|im_start|>assistant\n"
        assert second.reused_cache and second.usage.prefill_tokens == len(new_part.encode())
        edited = [*base, first.message, ChatMessage.user("What is my name?")]
        again = chat.generate(edited)  # the cache is cut back to the common prefix on the server
        assert again.reused_cache and again.message.content == "Your name is Alice."
        assert again.usage.prefill_tokens < len(chat.render(edited).encode())


def test_text_images_and_embeddings_cross_the_wire_as_sent(tmp_path: Path,
                                                           serve: Serve) -> None:
    from rkllm_core import ImageInput

    served = model(tmp_path, "fresh", 'RKLLM-SCRIPTED 1\nhidden_size = 16\nwhen contains '
                   '"unicode" reply "Grüße, 日本 🙂"\ndefault reply "OK, noted."\n')
    image = ImageInput(np.linspace(0, 1, 64, dtype=np.float32).reshape(1, 4, 16))
    rows = np.ones((3, 16), np.float32)
    with serve(ServerConfig(models=[served])) as url, RemoteRKLLM(url) as remote, \
            RKLLM(served.path, library="host", max_context_len=4096) as here:
        pieces = [chunk.text for chunk in remote.stream("unicode please")]
        assert "".join(pieces) == "Grüße, 日本 🙂" == here.generate("unicode please").text
        for run in ({"prompt": "<image>Describe it.", "image": image},
                    {"embeddings": rows}):
            there, local = remote.generate(**run), here.generate(**run)
            assert there.text == local.text == "OK, noted."
            assert there.perf.prefill_tokens == local.perf.prefill_tokens  # every row arrived


def test_async_chat_streams_and_generates_remotely(url: str) -> None:
    async def main() -> tuple[str, str, bool]:
        with RemoteRKLLM(url, "m") as llm:
            chat = ChatEngine(llm)
            stream = chat.astream([ChatMessage.user("My name is Alice.")])
            text = "".join([c.content async for c in stream])
            follow = await chat.agenerate([ChatMessage.user("My name is Alice."),
                                           stream.result.message,
                                           ChatMessage.user("What is my name?")])
            return text, follow.message.content, follow.reused_cache

    assert asyncio.run(main()) == ("OK, noted.", "Your name is Alice.", True)


def test_embeddings_and_rerank_scores_match_the_model_in_process(url: str,
                                                                 tmp_path: Path) -> None:
    judge = tmp_path / "judge.scripted"
    judge.write_text(JUDGE)
    documents = ["Paris is in France.", "Bananas are yellow."]
    yes, no = ord("y"), ord("n")
    with RemoteRKLLM(url, "judge") as remote, \
            RKLLM(judge, library="host", max_context_len=512) as here:
        np.testing.assert_array_equal(remote.embed(["a cat", "a dog"]),
                                      here.embed(["a cat", "a dog"]))
        np.testing.assert_array_equal(remote.embed("a cat"), here.embed("a cat"))
        scores = remote.rerank("Which city?", documents, yes_token_id=yes, no_token_id=no)
        assert scores == here.rerank("Which city?", documents, yes_token_id=yes, no_token_id=no)
        assert scores[0] > 0.9 > 0.1 > scores[1]

        async def both() -> tuple[np.ndarray, list[float]]:
            rows = await remote.aembed(["a cat"])
            return rows, await remote.arerank("Which city?", documents, yes_token_id=yes,
                                              no_token_id=no)

        rows, again = asyncio.run(both())
        np.testing.assert_array_equal(rows, here.embed(["a cat"]))
        assert again == scores


def test_breaking_out_of_a_stream_aborts_the_run_on_the_server(url: str) -> None:
    with RemoteRKLLM(url, "slow") as llm:
        for chunk in llm.stream("long"):  # five words, then nothing until aborted
            assert chunk.text.strip() == "word"
            break
        started = time.monotonic()
        assert llm.generate("short", timeout=30).text == "ok"
        assert time.monotonic() - started < 10  # not the server's 600 s request timeout


def test_closing_a_stream_keeps_its_result_and_abort_reaches_the_run(url: str) -> None:
    with RemoteRKLLM(url, "slow") as llm:
        stream = llm.stream("long")
        seen = [next(stream).text for _ in range(3)]
        stream.close()
        assert stream.result.finish_reason == "abort"
        assert stream.result.text.startswith("".join(seen)) and stream.text.startswith("word")
        assert llm.generate("short").text == "ok"


def test_cancelling_an_agenerate_aborts_the_run_and_the_next_request_answers_promptly(
        url: str) -> None:
    async def main() -> tuple[str, float]:
        with RemoteRKLLM(url, "slow") as llm:
            seen: list[str] = []
            task = asyncio.ensure_future(llm.agenerate("long", on_token=lambda c: seen.append(
                c.text)))
            for _ in range(1000):
                if len(seen) >= 5:
                    break
                await asyncio.sleep(0.01)
            assert len(seen) == 5  # the run hangs now, until it is aborted
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            started = time.monotonic()
            answer = await llm.agenerate("short", timeout=30)
            return answer.text, time.monotonic() - started

    text, waited = asyncio.run(main())
    assert text == "ok" and waited < 10


def test_a_run_that_times_out_on_the_server_raises_with_its_partial_text(url: str) -> None:
    with RemoteRKLLM(url, "slow") as llm:
        seen: list[str] = []
        with pytest.raises(RunTimeoutError, match=r"did not finish within 0\.5 s") as info:
            for chunk in llm.stream("long", timeout=0.5):
                seen.append(chunk.text)
        assert info.value.partial_text == "".join(seen) == "word" + " word" * 4

        async def in_asyncio() -> str:
            with pytest.raises(RunTimeoutError) as again:
                await llm.agenerate("long", timeout=0.5)
            return again.value.partial_text

        assert asyncio.run(in_asyncio()) == "word" + " word" * 4
        assert llm.generate("short").text == "ok"


def test_a_run_that_cannot_start_in_time_says_so(url: str) -> None:
    with RemoteRKLLM(url, "slow") as first, RemoteRKLLM(url, "slow") as second:
        blocker = first.stream("long")
        next(blocker)
        with pytest.raises(RunTimeoutError, match=r"did not start within 0\.3 s"):
            second.generate("short", timeout=0.3)
        blocker.close()
        assert second.generate("short").text == "ok"


def test_the_api_key_is_sent_and_a_missing_one_is_a_typed_error(tmp_path: Path,
                                                                 serve: Serve) -> None:
    config = ServerConfig(models=[model(tmp_path, "m", JUDGE)], api_key="s3cret")
    with serve(config) as url:
        with pytest.raises(RemoteUnavailableError, match="api_key="):
            RemoteRKLLM(url, "m")
        with pytest.raises(RemoteUnavailableError, match="refused"):
            RemoteRKLLM(url, "m", api_key="wrong")
        with RemoteRKLLM(url, "m", api_key="s3cret") as llm:
            assert llm.generate("Paris?").text == "y"


def test_an_unreachable_server_is_a_typed_error_naming_the_url() -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(RemoteUnavailableError, match=rf"127\.0\.0\.1:{port}.*rkllm serve"):
        RemoteRKLLM(f"http://127.0.0.1:{port}", "m")
    with pytest.raises(InvalidParameterError, match="http"):
        RemoteRKLLM("ftp://board:8080", "m")


def test_a_connection_lost_mid_run_is_a_typed_error_with_the_partial_text(url: str) -> None:
    info = httpx.get(f"{url}/rkllm/v1/models/m").content

    class Dying(http.server.BaseHTTPRequestHandler):
        """Describes the model, then streams one chunk of a run and dies."""

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(info)))
            self.end_headers()
            self.wfile.write(info)

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            line = b'{"chunk": {"text": "Hel", "token_id": 1}}\n'
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.flush()
            self.close_connection = True

        def log_message(self, *args: object) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Dying) as dying:
        threading.Thread(target=dying.serve_forever, daemon=True).start()
        try:
            with RemoteRKLLM(f"http://127.0.0.1:{dying.server_address[1]}", "m") as llm:
                seen: list[str] = []
                with pytest.raises(RemoteUnavailableError, match=r"127\.0\.0\.1") as lost:
                    for chunk in llm.stream("Hi"):
                        seen.append(chunk.text)
                assert seen == ["Hel"] and lost.value.partial_text == "Hel"
        finally:
            dying.shutdown()


def test_a_closed_remote_model_refuses_calls(url: str) -> None:
    llm = RemoteRKLLM(url, "m")
    llm.close()
    llm.close()
    assert llm.closed
    with pytest.raises(ModelClosedError):
        llm.generate("Hi")


def test_what_would_touch_the_servers_files_is_refused(url: str) -> None:
    with RemoteRKLLM(url, "m") as llm, \
            pytest.raises(InvalidParameterError, match="save_prompt_cache"):
        llm.generate("Hi", save_prompt_cache="/tmp/cache.bin")
    raw = httpx.post(f"{url}/rkllm/v1/models/m/run",
                     json={"prompt": "Hi", "save_prompt_cache": "/tmp/x.bin"})
    assert raw.status_code == 400 and raw.json()["error"]["type"] == "InvalidParameterError"
    unknown = httpx.post(f"{url}/rkllm/v1/models/nope/run", json={"prompt": "Hi"})
    assert unknown.status_code == 404 and "served models: m" in unknown.json()["error"]["message"]


def test_server_errors_keep_their_class_on_the_client(url: str) -> None:
    with RemoteRKLLM(url, "m") as llm:
        with pytest.raises(InvalidParameterError, match="role"):
            llm.generate("Hi", role="robot")
        with pytest.raises(InvalidParameterError, match="served models"):
            RemoteRKLLM(url, "nope")


def test_importing_rkllm_core_never_imports_httpx() -> None:
    probe = ("import sys, rkllm_core, rkllm_core.backend, rkllm_core.shared; "
             "from rkllm_core.backend import is_backend; is_backend(1); "
             "print('httpx' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip() == "False", out.stdout + out.stderr


def test_a_remote_chat_loads_nothing_of_the_runtime_binding(url: str) -> None:
    probe = ("import sys; from rkllm_core import RemoteRKLLM; "
             "from rkllm_core.chat import ChatEngine, ChatMessage; "
             f"llm = RemoteRKLLM({url!r}, 'm'); "
             "print(ChatEngine(llm).generate([ChatMessage.user('Hi')]).message.content); "
             "print(sorted(m for m in ('rkllm_core.native', 'rkllm_core.library', "
             "'rkllm_core.model', 'rkllm_core.worker', 'rkllm_core.inputs', "
             "'rkllm_core.server') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.split("\n")[:2] == ["OK, noted.", "[]"], out.stdout + out.stderr


def test_without_httpx_the_error_says_which_extra_to_install() -> None:
    probe = ("import sys; sys.modules['httpx'] = None\n"
             "try:\n    from rkllm_core import RemoteRKLLM\n"
             "except ImportError as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=120)
    assert 'pip install "rkllm-py[remote]"' in out.stdout, out.stdout + out.stderr
