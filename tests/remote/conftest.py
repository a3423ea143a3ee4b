"""A real ``rkllm serve`` on 127.0.0.1 (in a thread of the test process) for the remote-backend
tests: scripted models, and SmolLM2 for the ``gguf`` ones."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the remote-backend tests need rkllm-py[server]")

from rkllm_core.server import ModelConfig, ServerConfig, serving

Serve = Callable[..., contextlib.AbstractContextManager[str]]

CALL = ('<tool_call>\\n{\\"name\\": \\"get_weather\\", \\"arguments\\": '
        '{\\"city\\": \\"Paris\\"}}\\n</tool_call>')
#: The chat engine's scripted assistant (tests/chat/test_engine.py's rules).
ASSISTANT = f"""RKLLM-SCRIPTED 1
max_context_limit = 4096
thinking = yes
hidden_size = 16
when contains "what is my name" remembers "alice" reply "Your name is Alice."
when contains "what is my name" contains "alice" reply "Your name is Alice."
when contains "what is my name" reply "I do not know."
when contains "think about it" reply "Done thinking." think "Let me consider."
when contains "weather" tools yes reply "Let me look.\\n{CALL}"
when role tool reply "It is sunny in Paris."
when contains "unicode" reply "Grüße, 日本 🙂"
when contains "stop test" reply "Hello there. User: this should not be seen"
when contains "corrected json" remembers "json please" reply "{{\\"city\\": \\"Paris\\", \\"days\\": 3}}"
when contains "json please" reply "Sure: {{\\"city\\": \\"Paris\\"}}"
default reply "OK, noted."
"""  # noqa: E501
#: Replies to "short" at once; anything else streams five words, then nothing until aborted.
HANGING = ("RKLLM-SCRIPTED 1\nhang_after_tokens = 5\n"
           'when contains "short" reply "ok"\n'
           'default reply "' + "word " * 50 + '"\n')
#: A toy reranker: answers "y" (relevant) or "n", single bytes whose token ids are their codes.
JUDGE = ('RKLLM-SCRIPTED 1\nvocab_size = 1000\n'
         'when contains "paris" reply "y"\ndefault reply "n"\n')


def model(folder: Path, name: str, text: str, **params: object) -> ModelConfig:
    """A scripted model file written in ``folder``, served as ``name``."""
    path = folder / f"{name}.scripted"
    path.write_text(text)
    return ModelConfig(path=str(path), id=name, library="host",
                       params={"max_context_len": 4096, **params})


def models(folder: Path) -> list[ModelConfig]:
    """The assistant (``m``), the hanging model (``slow``), the reranker (``judge``) and the
    tokens-mode assistant (``tokens``, tests/chat/test_engine_modes.py's)."""
    from tests.chat.test_engine_modes import MODEL as TOKENS_MODEL

    return [model(folder, "m", ASSISTANT), model(folder, "slow", HANGING, max_context_len=512),
            model(folder, "judge", JUDGE, max_context_len=512),
            model(folder, "tokens", TOKENS_MODEL)]


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One server with the three scripted models for a test module (its tests each use their
    own clients; the server's queue and KV-cache ownership keep them apart)."""
    with serving(ServerConfig(models=models(tmp_path_factory.mktemp("served")))) as base:
        yield base


@pytest.fixture
def serve() -> Serve:
    """``with serve(config) as url``: a server of this test's own."""
    return serving
