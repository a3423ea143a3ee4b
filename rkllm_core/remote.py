"""``RemoteRKLLM``: a model served by ``rkllm serve`` on another machine, as a backend.

A laptop develops against the board: ``ChatEngine(RemoteRKLLM("http://board:8080", "qwen"))``
and both adapters (given the model as ``client=``) run exactly as on an in-process
:class:`~rkllm_core.RKLLM`: streaming, asyncio, tools, reasoning, stop sequences, structured
output, KV-cache reuse, embeddings and reranking. Every call is one request to the server's
backend routes (:mod:`rkllm_core.server.backend_routes`, JSON of :mod:`rkllm_core.remote_wire`);
a run streams NDJSON, so its chunks arrive as the board makes them.

The model's KV cache is shared with everyone the server serves; whoever ran last owns it. Each
``RemoteRKLLM`` is one client (``client_id``): when another client ran in between, a turn that
counted on its cache gets :class:`~rkllm_core.errors.StaleKVCacheError` from the server and the
chat engine replays the conversation, so answers stay right. Leaving a stream early (``break``,
``close()``, a cancelled task) closes its connection, which aborts the run on the server.

Errors are the server's own classes (a run that timed out raises
:class:`~rkllm_core.errors.RunTimeoutError` with its ``partial_text``, a crashed runtime
:class:`~rkllm_core.errors.RuntimeCrashedError`...); a server that cannot be reached or refuses
the key raises :class:`~rkllm_core.errors.RemoteUnavailableError` naming the URL. Needs httpx
(``pip install "rkllm-py[remote]"``).

Example: see :class:`RemoteRKLLM`.
"""

from __future__ import annotations

import urllib.parse
import uuid
import weakref
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
from typing_extensions import Unpack

from rkllm_core.backend import EmbedOptions, RerankOptions, RunOptions
from rkllm_core.errors import InvalidParameterError, ModelClosedError, RemoteUnavailableError
from rkllm_core.remote_streams import (
    ABORT_TIMEOUT,
    REMOTE_MARGIN,
    AsyncRemoteTextStream,
    OnToken,
    RemoteTextStream,
    _checked_timeout,
    _Server,
)
from rkllm_core.remote_wire import (
    PREFIX,
    ModelInfo,
    decode_array,
    decode_model_info,
    encode_run,
    encode_texts,
)
from rkllm_core.results import GenerationResult, RuntimeInfo

if TYPE_CHECKING:
    from rkllm_core.abi import Capabilities
    from rkllm_core.params import ModelParams


class RemoteRKLLM:
    """A model served by ``rkllm serve`` at ``base_url``, with :class:`~rkllm_core.RKLLM`'s
    calls: generate, stream and their async twins, embed, rerank, the KV cache, abort.

    ``model`` is the served model's id (``GET /v1/models`` lists them; None picks the only
    one). ``api_key`` is sent as ``Authorization: Bearer``. ``timeout`` is the default timeout
    of every run and call that gives none (seconds; the server's ``--request-timeout`` caps
    it); this client waits that long plus ``REMOTE_MARGIN`` for the server's verdict.

    Example:
        >>> import asyncio, tempfile, pathlib
        >>> from rkllm_core import RemoteRKLLM
        >>> from rkllm_core.chat import ChatEngine, ChatMessage
        >>> from rkllm_core.server import ModelConfig, ServerConfig
        >>> from rkllm_core.server import serving
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "tiny.scripted"
        >>> _ = path.write_text('RKLLM-SCRIPTED 1\\nhidden_size = 8\\ndefault reply "Hi there."\\n')
        >>> config = ServerConfig(models=[ModelConfig(path=str(path), library="host",
        ...                                           params={"max_context_len": 512})])
        >>> async def in_asyncio(llm: RemoteRKLLM) -> tuple[str, str, int, int]:
        ...     streamed = "".join([c.text async for c in llm.astream("Hello")])
        ...     rows = await llm.aembed(["a cat"])
        ...     scores = await llm.arerank("cats?", ["a cat"], yes_token_id=1, no_token_id=2)
        ...     return streamed, (await llm.agenerate("Hello")).text, len(rows), len(scores)
        >>> with serving(config) as url:                  # `rkllm serve` in this process
        ...     llm = RemoteRKLLM(url, "tiny")
        ...     text = llm.generate("Hello").text
        ...     pieces = [chunk.text for chunk in llm.stream("Hello")]
        ...     turn = ChatEngine(llm).generate([ChatMessage.user("Hello")])
        ...     asynced = asyncio.run(in_asyncio(llm))
        ...     shape = llm.embed(["a cat", "a dog"]).shape
        ...     scores = llm.rerank("cats?", ["a cat", "a car"], yes_token_id=1, no_token_id=2)
        ...     _ = llm.generate("Hi", keep_history=True)
        ...     kept = llm.kv_cache_size
        ...     llm.clear_kv_cache()
        ...     cleared, running = llm.kv_cache_size, llm.abort()   # nothing runs to abort
        ...     info = (llm.runtime_info.release, llm.params.max_context_len,
        ...             llm.capabilities.function_tools)
        ...     llm.close()
        >>> text, "".join(pieces), turn.message.content
        ('Hi there.', 'Hi there.', 'Hi there.')
        >>> asynced, shape, len(scores), kept > 0, cleared, running, info, llm.closed
        (('Hi there.', 'Hi there.', 1, 1), (2, 8), 2, True, 0, False, ('1.3.0', 512, True), True)
    """

    def __init__(self, base_url: str, model: str | None = None, *, api_key: str | None = None,
                 timeout: float | None = None) -> None:
        self.timeout = _checked_timeout(timeout)
        self.client_id = uuid.uuid4().hex
        self._server = _Server(base_url, api_key, self.client_id)
        self.base_url = self._server.base_url
        self._closed = False
        self._finalizer = weakref.finalize(self, self._server.close)
        try:
            self._info = self._fetch_info(model)
        except BaseException:
            self._finalizer()
            raise
        self.model = self._info.id

    def _fetch_info(self, model: str | None) -> ModelInfo:
        if model is None:
            listed = self._server.call("GET", "/v1/models", read=60.0, what="listing models")
            ids = [str(m.get("id")) for m in listed.get("data", [])]
            if len(ids) != 1:
                raise InvalidParameterError(
                    f"{self.base_url} serves {len(ids)} models ({', '.join(ids) or 'none'}): "
                    "name one with model=")
            model = ids[0]
        if not isinstance(model, str) or not model:
            raise InvalidParameterError(f"model must be a served model's id, got {model!r}")
        self.model = model
        answer = self._server.call("GET", self._path(""), read=60.0, what="reading the model")
        try:
            return decode_model_info(answer)
        except Exception as exc:
            raise RemoteUnavailableError(
                f"{self.base_url} describes model {model!r} in a form this rkllm-py does not "
                f"read ({type(exc).__name__}: {exc}): use the same rkllm-py release on both "
                "sides") from None

    def _path(self, tail: str) -> str:
        return f"{PREFIX}/{urllib.parse.quote(self.model, safe='')}{tail}"

    def _live(self) -> _Server:
        if self._closed:
            raise ModelClosedError("the remote model is closed: create a new RemoteRKLLM")
        return self._server

    def _read(self, timeout: float | None, runs: int = 1) -> float | None:
        """How long this client waits for an answer: the server's time, then a margin."""
        return None if timeout is None else timeout * max(1, runs) + REMOTE_MARGIN

    # -- the model -------------------------------------------------------------------------------

    @property
    def capabilities(self) -> Capabilities:
        """What the server's runtime release can do (:class:`~rkllm_core.abi.Capabilities`).

        Example: ``llm.capabilities.function_tools``.
        """
        return self._info.capabilities

    @property
    def runtime_info(self) -> RuntimeInfo:
        """The server's :class:`~rkllm_core.results.RuntimeInfo` for this model.

        Example: ``llm.runtime_info.release`` (see the class example).
        """
        return self._info.runtime_info

    @property
    def params(self) -> ModelParams:
        """The :class:`~rkllm_core.ModelParams` the server loaded the model with
        (``model_path`` is the file on the server's machine).

        Example: ``llm.params.max_context_len`` (see the class example).
        """
        return self._info.params

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run.

        Example: ``llm.close(); assert llm.closed``.
        """
        return self._closed

    def close(self) -> None:
        """Close this client's connections (the model stays loaded on the server). Idempotent.

        Example: ``llm.close()``, or use ``with RemoteRKLLM(...) as llm``.
        """
        self._closed = True
        self._finalizer()

    def __enter__(self) -> RemoteRKLLM:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"RemoteRKLLM({self.base_url!r}, {self.model!r}, {state})"

    # -- runs ------------------------------------------------------------------------------------

    def _run_body(self, prompt: str | None,
                  options: Mapping[str, Any]) -> tuple[dict[str, Any], float | None]:
        wanted = dict(options)
        timeout = _checked_timeout(wanted.pop("timeout", None))
        timeout = self.timeout if timeout is None else timeout
        body = encode_run(prompt, {**wanted, "timeout": timeout}, run_id=uuid.uuid4().hex)
        return body, self._read(timeout)

    def stream(self, prompt: str | None = None,
               **options: Unpack[RunOptions]) -> RemoteTextStream:
        """Start a run on the server and return its :class:`RemoteTextStream`; takes
        :meth:`RKLLM.generate <rkllm_core.RKLLM.generate>`'s options (not
        ``save_prompt_cache``; ``lora`` names an adapter the server's model has loaded).

        Example: ``"".join(c.text for c in llm.stream("Hi"))`` (see the class example).
        """
        body, read = self._run_body(prompt, options)
        self._live()
        return RemoteTextStream(self, body, read)

    def astream(self, prompt: str | None = None,
                **options: Unpack[RunOptions]) -> AsyncRemoteTextStream:
        """Async :meth:`stream`; the request goes out when iteration starts.

        Example: ``[c.text async for c in llm.astream("Hi")]``.
        """
        body, read = self._run_body(prompt, options)
        self._live()
        return AsyncRemoteTextStream(self, body, read)

    def generate(self, prompt: str | None = None, *, on_token: OnToken | None = None,
                 **options: Unpack[RunOptions]) -> GenerationResult:
        """The whole run's :class:`~rkllm_core.results.GenerationResult`; ``on_token`` sees
        each chunk here as it arrives.

        Example: ``llm.generate("Hi").text`` (see the class example).
        """
        body, read = self._run_body(prompt, options)
        self._live()
        stream = RemoteTextStream(self, body, read, on_token)
        for _ in stream:
            pass
        return stream.result

    async def agenerate(self, prompt: str | None = None, *, on_token: OnToken | None = None,
                        **options: Unpack[RunOptions]) -> GenerationResult:
        """Async :meth:`generate`; cancelling the awaiting task aborts the run on the server.

        Example: ``(await llm.agenerate("Hi")).text``.
        """
        body, read = self._run_body(prompt, options)
        self._live()
        stream = AsyncRemoteTextStream(self, body, read, on_token)
        async for _ in stream:
            pass
        return stream.result

    def abort(self) -> bool:
        """Abort this client's runs on the server now; False if none was running or waiting.

        Example: ``llm.abort()`` from another thread.
        """
        answer = self._live().call("POST", self._path("/abort"), {}, read=ABORT_TIMEOUT,
                                   what="abort()")
        return bool(answer.get("aborted"))

    # -- embeddings and reranking -----------------------------------------------------------------

    def _embed_body(self, texts: str | Sequence[str],
                    options: Mapping[str, Any]) -> tuple[dict[str, Any], float | None]:
        wanted = dict(options)
        timeout = _checked_timeout(wanted.pop("timeout", None))
        timeout = self.timeout if timeout is None else timeout
        items = encode_texts(texts)
        return {"texts": items, "timeout": timeout, **wanted}, self._read(timeout, len(items))

    def embed(self, texts: str | Sequence[str], **options: Unpack[EmbedOptions]) -> np.ndarray:
        """Like :meth:`RKLLM.embed <rkllm_core.RKLLM.embed>`: ``(len(texts), dim)`` float32,
        computed on the server (``timeout`` is per text).

        Example: ``llm.embed(["a cat", "a dog"]).shape`` (see the class example).
        """
        body, read = self._embed_body(texts, options)
        answer = self._live().call("POST", self._path("/embed"), body, read=read,
                                   what="embed()")
        return decode_array(answer["embeddings"])

    async def aembed(self, texts: str | Sequence[str],
                     **options: Unpack[EmbedOptions]) -> np.ndarray:
        """Async :meth:`embed`; cancelling it aborts the batch on the server.

        Example: ``(await llm.aembed(["a cat"])).shape``.
        """
        body, read = self._embed_body(texts, options)
        answer = await self._live().acall("POST", self._path("/embed"), body, read=read,
                                          what="aembed()")
        return decode_array(answer["embeddings"])

    def _rerank_body(self, query: str, documents: Sequence[str], options: Mapping[str, Any],
                     ids: tuple[int | None, int | None]) -> tuple[dict[str, Any], float | None]:
        if not isinstance(query, str) or isinstance(documents, str):
            raise InvalidParameterError("rerank takes a query (str) and documents (a list of str)")
        wanted = {k: v for k, v in options.items() if k not in ("tokenizer", "timeout")}
        timeout = _checked_timeout(options.get("timeout"))
        timeout = self.timeout if timeout is None else timeout
        body = {"query": query, "documents": [str(d) for d in documents], "timeout": timeout,
                **wanted, "yes_token_id": ids[0], "no_token_id": ids[1]}
        return body, self._read(timeout, len(documents))

    def rerank(self, query: str, documents: Sequence[str],
               **options: Unpack[RerankOptions]) -> list[float]:
        """Like :meth:`RKLLM.rerank <rkllm_core.RKLLM.rerank>`: one score (0-1) per document.
        A ``tokenizer`` given here is read here (the yes/no ids are sent); without it the
        server finds the ids (its config, its tokenizer, the model's vocabulary).

        Example: ``llm.rerank("cats?", ["a cat", "a car"], yes_token_id=1, no_token_id=2)``.
        """
        ids = (options.get("yes_token_id"), options.get("no_token_id"))
        tokenizer = options.get("tokenizer")
        if tokenizer is not None and None in ids:
            from rkllm_core.rerank_tokens import rerank_token_ids

            ids = rerank_token_ids(self.params.model_path, tokenizer=tokenizer,
                                   yes_token_id=ids[0], no_token_id=ids[1])
        body, read = self._rerank_body(query, documents, options, ids)
        answer = self._live().call("POST", self._path("/rerank"), body, read=read,
                                   what="rerank()")
        return [float(s) for s in answer["scores"]]

    async def arerank(self, query: str, documents: Sequence[str],
                      **options: Unpack[RerankOptions]) -> list[float]:
        """Async :meth:`rerank`; cancelling it aborts the runs on the server.

        Example: ``await llm.arerank("cats?", ["a cat"], yes_token_id=1, no_token_id=2)``.
        """
        ids = (options.get("yes_token_id"), options.get("no_token_id"))
        tokenizer = options.get("tokenizer")
        if tokenizer is not None and None in ids:
            from rkllm_core.rerank_tokens import arerank_token_ids

            ids = await arerank_token_ids(self.params.model_path, tokenizer=tokenizer,
                                          yes_token_id=ids[0], no_token_id=ids[1])
        body, read = self._rerank_body(query, documents, options, ids)
        answer = await self._live().acall("POST", self._path("/rerank"), body, read=read,
                                          what="arerank()")
        return [float(s) for s in answer["scores"]]

    # -- the KV cache ------------------------------------------------------------------------------

    @property
    def kv_cache_size(self) -> int:
        """The positions the model's KV cache holds now, on the server (runtime 1.2.1+); it
        holds whatever conversation ran last there, this client's or another's.

        Example: ``llm.kv_cache_size``.
        """
        answer = self._live().call("GET", self._path("/kv-cache"), read=self._read(self.timeout),
                                   what="kv_cache_size")
        return int(answer["size"])

    def clear_kv_cache(self, keep_system_prompt: bool = False,
                       ranges: Sequence[tuple[int, int]] | tuple[int, int] | None = None) -> None:
        """Like :meth:`RKLLM.clear_kv_cache <rkllm_core.RKLLM.clear_kv_cache>`, in the model's
        queue on the server.

        Example: ``llm.clear_kv_cache()``.
        """
        pairs: list[list[int]] | None = None
        if ranges is not None:
            one = len(ranges) == 2 and all(isinstance(v, int) for v in ranges)
            given: Any = [ranges] if one else ranges  # one (start, end) pair, or several
            pairs = [[int(start), int(end)] for start, end in given]
        body = {"keep_system_prompt": bool(keep_system_prompt), "ranges": pairs}
        self._live().call("POST", self._path("/kv-cache/clear"), body,
                          read=self._read(self.timeout), what="clear_kv_cache()")


__all__ = ["AsyncRemoteTextStream", "RemoteRKLLM", "RemoteTextStream"]
