"""What one extra of rkllm-py promises, checked in a virtual environment that has only it.

Run by scripts/check_extras.sh (and so by CI) in a fresh venv per extra, installed from the
built wheel, so that an import no extra declares fails here rather than on a user's machine:

    python scripts/extras_smoke.py core        # pip install rkllm-py
    python scripts/extras_smoke.py langchain   # pip install "rkllm-py[langchain]"
    python scripts/extras_smoke.py llamaindex  # pip install "rkllm-py[llamaindex]"
    python scripts/extras_smoke.py host        # pip install "rkllm-py[host]"
    python scripts/extras_smoke.py server      # pip install "rkllm-py[server]"

Every extra gets the core checks (import, a preset rendered, one scripted chat through the chat
engine on the host runtime, ``rkllm info``), then what the extra adds. Prints one line per check;
exits 1 at the first failure with its traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

SCRIPTED = (
    "RKLLM-SCRIPTED 1\n"
    "hidden_size = 16\n"
    'when contains "weather" tools yes reply "<tool_call>\\n{\\"name\\": \\"get_weather\\", '
    '\\"arguments\\": {\\"city\\": \\"Paris\\"}}\\n</tool_call>"\n'
    'default reply "Hello from the scripted model."\n'
)
REPLY = "Hello from the scripted model."


def check(name: str, fn: Callable[[], object]) -> None:
    fn()
    print(f"  ok  {name}", flush=True)


def core(model: Path) -> None:
    def imports() -> None:
        import rkllm_core
        import rkllm_core.chat

        assert rkllm_core.RKLLM.__name__ == "RKLLM"

    def preset() -> None:
        from rkllm_core.chat.templates import preset_for

        text = preset_for("qwen2").render([{"role": "user", "content": "Hi"}])
        assert text.endswith("<|im_start|>assistant\n"), text

    def chat() -> None:
        from rkllm_core import RKLLM
        from rkllm_core.chat import ChatEngine, ChatMessage

        with RKLLM(model, library="host", max_context_len=512) as llm:
            engine = ChatEngine(llm, preset="qwen2")
            result = engine.generate([ChatMessage.user("Hi")])
            assert result.message.content == REPLY, result.message.content

    def info() -> None:
        # no board here: the host runtime stands in for librkllmrt.so
        env = {**os.environ, "RKLLM_LIBRARY_PATH": "host"}
        out = subprocess.run([str(Path(sys.executable).parent / "rkllm"), "info"], check=True,
                             capture_output=True, text=True, env=env).stdout
        assert "host:      yes" in out, out

    check("import rkllm_core, rkllm_core.chat", imports)
    check("a preset rendered (qwen2)", preset)
    check("one scripted chat through ChatEngine (host runtime)", chat)
    check("rkllm info (host runtime)", info)


def langchain(model: Path) -> None:
    def chat() -> None:
        from langchain_core.messages import AIMessage

        from langchain_rkllm import ChatRKLLM

        llm = ChatRKLLM(model_path=str(model), library="host", max_context_len=512,
                        preset="qwen2")
        reply = llm.invoke("Hi")
        assert isinstance(reply, AIMessage) and reply.content == REPLY, reply
        streamed = "".join(str(chunk.content) for chunk in llm.stream("Hi again"))
        assert streamed == REPLY, streamed

    def tools() -> None:
        from langchain_rkllm import ChatRKLLM

        def get_weather(city: str) -> str:
            """The weather in a city."""
            return f"sunny in {city}"

        llm = ChatRKLLM(model_path=str(model), library="host", max_context_len=512,
                        preset="qwen2").bind_tools([get_weather])
        reply = llm.invoke("What is the weather in Paris?")
        assert reply.tool_calls[0]["args"] == {"city": "Paris"}, reply

    def embeddings() -> None:
        from langchain_rkllm import RKLLMEmbeddings

        vector = RKLLMEmbeddings(model_path=str(model), library="host",
                                 max_context_len=512).embed_query("a cat")
        assert len(vector) == 16, len(vector)

    check("ChatRKLLM invoke and stream with preset='qwen2'", chat)
    check("ChatRKLLM tool call", tools)
    check("RKLLMEmbeddings", embeddings)


def llamaindex(model: Path) -> None:
    def chat() -> None:
        from llama_index.core.llms import ChatMessage

        from llama_index_rkllm import RKLLM

        llm = RKLLM(model_path=str(model), library="host", max_context_len=512,
                    preset="qwen2")
        reply = llm.chat([ChatMessage(role="user", content="Hi")])
        assert reply.message.content == REPLY, reply
        assert llm.complete("Hi").text == REPLY

    def embeddings() -> None:
        from llama_index_rkllm import RKLLMEmbedding

        vector = RKLLMEmbedding(model_path=str(model), library="host",
                                max_context_len=512).get_text_embedding("a cat")
        assert len(vector) == 16, len(vector)

    check("llama_index_rkllm.RKLLM chat and complete with preset='qwen2'", chat)
    check("RKLLMEmbedding", embeddings)


def core_only(model: Path) -> None:
    def serve_needs_extra() -> None:
        # without the server extra, `rkllm serve` says which extra to install and exits 2
        done = subprocess.run([str(Path(sys.executable).parent / "rkllm"), "serve", str(model)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and 'pip install "rkllm-py[server]"' in done.stderr, done

    check("rkllm serve without the extra names it", serve_needs_extra)


def server(model: Path) -> None:
    import socket
    import time

    with socket.socket() as probe:  # a free port on loopback for this check
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "RKLLM_LIBRARY_PATH": "host"}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "rkllm"), "serve", str(model),
                             "--port", str(port), "--preset", "qwen2",
                             "--max-context-len", "512"], env=env)
    try:
        import httpx

        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"rkllm serve exited with {proc.returncode}"
            try:
                if httpx.get(url + "/", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "rkllm serve did not start in 120 s"
            time.sleep(0.2)

        def openai_chat() -> None:
            from openai import OpenAI

            client = OpenAI(base_url=url + "/v1", api_key="unused")
            reply = client.chat.completions.create(
                model="assistant", messages=[{"role": "user", "content": "Hi"}])
            assert reply.choices[0].message.content == REPLY, reply

        def ollama_chat() -> None:
            import ollama

            reply = ollama.Client(host=url).chat(
                model="assistant:latest", messages=[{"role": "user", "content": "Hi"}])
            assert reply.message.content == REPLY, reply

        def metrics() -> None:
            assert "rkllm_requests_total" in httpx.get(url + "/metrics").text

        check("rkllm serve answers the openai client", openai_chat)
        check("rkllm serve answers the ollama client", ollama_chat)
        check("rkllm serve /metrics", metrics)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def host(_model: Path) -> None:
    def build() -> None:
        subprocess.run([str(Path(sys.executable).parent / "rkllm"), "host", "build",
                        "--family", "1.3.0"], check=True)

    def smollm2() -> None:
        from rkllm_core import RKLLM
        from rkllm_core.host.models import smollm2_path

        with RKLLM(smollm2_path(), library="host", max_context_len=512) as llm:
            assert llm.runtime_info.is_host_runtime
            result = llm.generate("Hi", max_new_tokens=4)
            assert result.perf.decode_tokens >= 1 and result.token_ids, result

    check("rkllm host build (llama.cpp engine)", build)
    check("SmolLM2 answers on the llama.cpp engine", smollm2)


EXTRAS: dict[str, Callable[[Path], None]] = {
    "core": core_only, "langchain": langchain, "llamaindex": llamaindex, "host": host,
    "server": server}


def main(extra: str) -> None:
    if extra not in EXTRAS:
        raise SystemExit(f"unknown extra {extra!r}: one of {', '.join(EXTRAS)}")
    print(f"rkllm-py[{extra}] in {sys.prefix}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "assistant.scripted"
        model.write_text(SCRIPTED)
        core(model)
        EXTRAS[extra](model)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "core")
