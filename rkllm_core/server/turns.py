"""One chat turn as every chat route runs it: wait for the model's turn, stream the engine's
chunks, count what the metrics need. The OpenAI and Ollama routes only translate.

:func:`run_turn` yields each :class:`~rkllm_core.chat.ChatChunk` and finally the
:class:`~rkllm_core.chat.ChatResult`; the time to first token runs from the request's arrival
(queueing included), as a client sees it. A request's sampling fields override the model's
defaults where the runtime takes sampling per run (1.3.0); older runtimes fix sampling at load,
so there the request's values are left out (and logged), not refused: every OpenAI client sends
a temperature.

Example:
    >>> import asyncio, tempfile, pathlib, time
    >>> from rkllm_core.chat import ChatMessage, ChatResult
    >>> from rkllm_core.server.config import ModelConfig
    >>> from rkllm_core.server.metrics import Metrics
    >>> from rkllm_core.server.registry import ModelRegistry
    >>> from rkllm_core.server.turns import TurnRequest, run_turn
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "tiny.scripted"
    >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "Hi there."\\n')
    >>> registry = ModelRegistry([ModelConfig(path=str(path), library="host",
    ...                                       params={"max_context_len": 512})])
    >>> async def ask() -> tuple[str, str]:
    ...     request = TurnRequest([ChatMessage.user("Hello")], sampling={"temperature": 0.0})
    ...     pieces = []
    ...     async for item in run_turn(registry.get("tiny"), request, Metrics(), time.monotonic()):
    ...         pieces.append(item)
    ...     *chunks, result = pieces
    ...     return "".join(c.content for c in chunks), result.finish_reason
    >>> asyncio.run(ask())
    ('Hi there.', 'stop')
    >>> registry.close()
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from rkllm_core.chat import ChatChunk, ChatMessage, ChatResult, ToolCallDelta, ToolSpec
from rkllm_core.params import SAMPLING_FIELDS, SamplingParams
from rkllm_core.results import GenerationResult, StreamChunk
from rkllm_core.server.metrics import Metrics
from rkllm_core.server.registry import ServedModel

logger = logging.getLogger("rkllm_core.server")


@dataclass
class TurnRequest:
    """What a chat or completion request asks of the engine, in the engine's own terms.

    ``sampling`` holds :data:`~rkllm_core.params.SAMPLING_FIELDS` values the request set;
    ``schema`` / ``json_mode`` ask for structured output (a JSON schema, or any JSON object).

    Example:
        >>> from rkllm_core.chat import ChatMessage
        >>> from rkllm_core.server.turns import TurnRequest
        >>> TurnRequest([ChatMessage.user("Hi")], max_new_tokens=16).tool_choice
        'auto'
    """

    messages: Sequence[ChatMessage]
    tools: Sequence[ToolSpec] = ()
    tool_choice: str = "auto"
    enable_thinking: bool = False
    stop: Sequence[str] = ()
    max_new_tokens: int | None = None
    sampling: Mapping[str, Any] = field(default_factory=dict)
    schema: Mapping[str, Any] | None = None
    json_mode: bool = False


def sampling_for(served: ServedModel, wanted: Mapping[str, Any]) -> SamplingParams | None:
    """The run's sampling: the model's defaults with ``wanted`` on top, where the runtime takes
    sampling per run; ``None`` (the model's own) otherwise or when nothing was asked.

    Example:
        >>> import tempfile, pathlib
        >>> from rkllm_core.server.config import ModelConfig
        >>> from rkllm_core.server.registry import ModelRegistry
        >>> from rkllm_core.server.turns import sampling_for
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.scripted"
        >>> _ = path.write_text("RKLLM-SCRIPTED 1\\n")
        >>> registry = ModelRegistry([ModelConfig(path=str(path), library="host",
        ...                                       params={"max_context_len": 512, "top_k": 5})])
        >>> s = sampling_for(registry.get("m"), {"temperature": 0.0})
        >>> s.temperature, s.top_k
        (0.0, 5)
        >>> registry.close()
    """
    asked = {k: v for k, v in wanted.items() if v is not None}
    if not asked:
        return None
    unknown = sorted(set(asked) - set(SAMPLING_FIELDS))
    if unknown:
        raise ValueError(f"unknown sampling fields: {', '.join(unknown)}")
    backend = served.backend
    if not backend.capabilities.per_run_sampling:
        logger.debug("runtime %s fixes sampling at load; ignoring %s for this request",
                     backend.runtime_info.release, ", ".join(sorted(asked)))
        return None
    base = {name: getattr(backend.params, name) for name in SAMPLING_FIELDS}
    return SamplingParams(**(base | asked))


async def run_turn(served: ServedModel, request: TurnRequest, metrics: Metrics,
                   arrived: float, *, timeout: float | None = None,
                   ) -> AsyncIterator[ChatChunk | ChatResult]:
    """Run one assistant turn of ``served``'s chat engine in its queue: its chunks, then its
    :class:`~rkllm_core.chat.ChatResult`. Leaving the iteration early (a client that went
    away) aborts the run. A structured-output request is answered whole (it may need a repair
    turn), as one chunk with the JSON."""
    first = True
    async with served.turn("chat"):
        engine = served.chat
        sampling = sampling_for(served, request.sampling)
        if request.schema is not None or request.json_mode:
            _value, result = await engine.agenerate_structured(
                request.messages, request.schema if not request.json_mode else None,
                method="json_mode" if request.json_mode else "json_schema",
                enable_thinking=request.enable_thinking, max_new_tokens=request.max_new_tokens,
                sampling=sampling, timeout=timeout)
            metrics.ttft.labels(model=served.id).observe(time.monotonic() - arrived)
            yield ChatChunk(result.message.content, result.message.reasoning or "")
        elif request.tools and request.tool_choice not in ("auto", "none"):
            # a required or named tool: the engine's generate retries a turn without the call
            # once, so the turn is answered whole (tool calls are held back until parsed anyway)
            result = await engine.agenerate(
                request.messages, tools=request.tools, tool_choice=request.tool_choice,
                enable_thinking=request.enable_thinking, stop=request.stop,
                max_new_tokens=request.max_new_tokens, sampling=sampling, timeout=timeout)
            metrics.ttft.labels(model=served.id).observe(time.monotonic() - arrived)
            message = result.message
            yield ChatChunk(message.content, message.reasoning or "", [
                ToolCallDelta(i, call.id, call.name, call.arguments_json())
                for i, call in enumerate(message.tool_calls)])
        else:
            stream = engine.astream(
                request.messages, tools=request.tools, tool_choice=request.tool_choice,
                enable_thinking=request.enable_thinking, stop=request.stop,
                max_new_tokens=request.max_new_tokens, sampling=sampling, timeout=timeout)
            # closed explicitly: a client that leaves closes this generator, and the run must be
            # aborted now, not when the garbage collector finalizes the engine's stream
            async with contextlib.aclosing(cast(AsyncGenerator[ChatChunk, None],
                                                aiter(stream))) as chunks:
                async for chunk in chunks:
                    if first:
                        metrics.ttft.labels(model=served.id).observe(
                            time.monotonic() - arrived)
                        first = False
                    yield chunk
            result = stream.result
    usage = result.usage
    metrics.count_turn(served.id, usage.input_tokens, cached_tokens(result),
                       usage.output_tokens, result.reused_cache)
    yield result


class StartedStream:
    """A turn or completion that has started: its queue turn came and its first item is
    here, so errors before any output (a full queue, bad tools, a crash during prefill) are
    still plain HTTP errors. Iterate it for every item, the first included; ``replica`` names
    the board or slot that runs it (``X-RKLLM-Replica``), ``None`` on a single server.

    Example:
        >>> import asyncio
        >>> from rkllm_core.server.turns import StartedStream, start
        >>> async def numbers():
        ...     for i in range(3):
        ...         yield i
        >>> async def main() -> list[int]:
        ...     started = await start(numbers())
        ...     return [i async for i in started]
        >>> asyncio.run(main())
        [0, 1, 2]
    """

    def __init__(self, first: Any, rest: AsyncGenerator[Any, None], replica: str | None) -> None:
        self._first: list[Any] = [first]
        self._rest = rest
        self.replica = replica

    def headers(self) -> dict[str, str]:
        """The response headers that name the replica, if any."""
        return {"X-RKLLM-Replica": self.replica} if self.replica else {}

    async def __aiter__(self) -> AsyncIterator[Any]:
        async with contextlib.aclosing(self._rest):
            while self._first:
                yield self._first.pop()
            async for item in self._rest:
                yield item

    async def aclose(self) -> None:
        """End it early (the run is aborted)."""
        await self._rest.aclose()


async def turn_items(served: ServedModel, request: TurnRequest, metrics: Metrics,
                     arrived: float, *, timeout: float | None = None,
                     scope: MutableMapping[str, Any] | None = None,
                     ) -> AsyncIterator[ChatChunk | ChatResult]:
    """:func:`run_turn`'s items through the served model's own interface
    (:meth:`ServedModel.start_turn`, which a model on other boards implements too); the
    replica that runs it goes into ``scope["state"]["replica"]``, which the app sends as
    ``X-RKLLM-Replica``."""
    started = await served.start_turn(request, metrics, arrived, timeout=timeout)
    if scope is not None and started.replica:
        scope.setdefault("state", {})["replica"] = started.replica
    async with contextlib.aclosing(cast(AsyncGenerator[Any, None], aiter(started))) as items:
        async for item in items:
            yield item


async def start(items: AsyncIterator[Any], replica: str | None = None) -> StartedStream:
    """Wait for the first item of ``items``; raises what the start raised."""
    generator = cast(AsyncGenerator[Any, None], items)
    try:
        first = await anext(generator)
    except StopAsyncIteration:
        raise RuntimeError("the stream ended before its result") from None
    except BaseException:
        await generator.aclose()
        raise
    return StartedStream(first, generator, replica)


async def run_completion(served: ServedModel, prompt: str, *, max_new_tokens: int | None,
                         sampling: Mapping[str, Any], stop: Sequence[str],
                         metrics: Metrics, arrived: float, timeout: float | None = None,
                         ) -> AsyncIterator[StreamChunk | GenerationResult]:
    """A raw completion: ``prompt`` sent as written (no chat template), on a cleared KV cache;
    its :class:`~rkllm_core.StreamChunk` pieces, then its
    :class:`~rkllm_core.GenerationResult`."""
    from rkllm_core.backend import ClearKVCache, SetChatTemplate

    async with served.turn("completion"):
        backend = served.backend
        setup: list[Any] = [ClearKVCache()]
        if backend.capabilities.chat_template:
            setup.insert(0, SetChatTemplate("", "", ""))
        stream = backend.astream(prompt, max_new_tokens=max_new_tokens,
                                 sampling=sampling_for(served, sampling), stop=list(stop),
                                 setup=setup, timeout=timeout)
        first = True
        async with contextlib.aclosing(cast(AsyncGenerator[StreamChunk, None],
                                            aiter(stream))) as chunks:
            async for chunk in chunks:
                if first and chunk.text:
                    metrics.ttft.labels(model=served.id).observe(time.monotonic() - arrived)
                    first = False
                yield chunk
        result = stream.result
    perf = result.perf
    metrics.count_turn(served.id, perf.prefill_tokens or 0 if perf else 0, 0,
                       len(result.token_ids), False)
    yield result


def cached_tokens(result: ChatResult) -> int:
    """Prompt tokens of a turn served from the KV cache (what the turn did not prefill).

    Example:
        >>> from rkllm_core.chat import ChatMessage, ChatResult, ChatUsage
        >>> from rkllm_core.server.turns import cached_tokens
        >>> usage = ChatUsage(input_tokens=120, output_tokens=8, prefill_tokens=20,
        ...                   prefill_ms=1.0, decode_ms=2.0, tokens_per_second=4.0)
        >>> cached_tokens(ChatResult(ChatMessage.assistant("Hi"), [], "stop", usage, None,
        ...                          "native", True, "1.3.0"))
        100
    """
    return max(0, result.usage.input_tokens - result.usage.prefill_tokens)
