"""The HTTP side of :class:`~rkllm_core.remote.RemoteRKLLM`: its connection to the server and
the streams of its runs, :class:`RemoteTextStream` and :class:`AsyncRemoteTextStream`.

Both streams run one decoder without I/O (``_RunReader``, as httpx's own decoders are): the
run's NDJSON lines in (:mod:`rkllm_core.remote_wire`), chunks, the result and the errors out,
each end of a run handled once; the sync stream feeds it from ``httpx.Client``, the async one
from ``httpx.AsyncClient``. Answers and transport failures become this package's errors in one
place (``_Server``), the same for both.

Example:
    >>> from rkllm_core.remote_streams import REMOTE_MARGIN, RemoteTextStream
    >>> REMOTE_MARGIN > 0, callable(RemoteTextStream.close)  # RemoteRKLLM's example streams
    (True, True)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

try:
    import httpx
except ImportError as _missing:  # the [remote] and [server] extras bring it
    raise ImportError(
        'RemoteRKLLM needs httpx: pip install "rkllm-py[remote]"') from _missing

from rkllm_core.errors import (
    InvalidParameterError,
    ModelWedgedError,
    RemoteUnavailableError,
    RKLLMError,
    RunTimeoutError,
)
from rkllm_core.remote_wire import CLIENT_HEADER, decode_error, decode_line
from rkllm_core.results import GenerationResult, PerfStats, StreamChunk

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from rkllm_core.remote import RemoteRKLLM

logger = logging.getLogger("rkllm_core")

#: Seconds to wait for a connection to the server.
CONNECT_TIMEOUT = 10.0
#: Seconds this client waits beyond a call's own timeout for the server's verdict on it.
REMOTE_MARGIN = 5.0
#: Seconds an abort request may take.
ABORT_TIMEOUT = 10.0

OnToken = Callable[[StreamChunk], object]


def _checked_url(base_url: Any) -> str:
    if not isinstance(base_url, str):
        raise InvalidParameterError(
            f"base_url must be the server's URL as a str, got {type(base_url).__name__}")
    try:
        url = httpx.URL(base_url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise InvalidParameterError(f"base_url {base_url!r} is not a URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise InvalidParameterError(
            f"base_url must be the http(s) URL of an `rkllm serve`, like http://board:8080; "
            f"got {base_url!r}")
    return str(url).rstrip("/")


def _checked_timeout(timeout: Any) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or \
            not 0 < timeout < float("inf"):
        raise InvalidParameterError(
            f"timeout must be None or a positive number of seconds, got {timeout!r}")
    return float(timeout)


class _Server:
    """The HTTP side, shared by a model and its streams: one sync client, one async client per
    event loop, and how answers and transport failures become this package's errors."""

    def __init__(self, base_url: str, api_key: str | None, client_id: str) -> None:
        self.base_url = _checked_url(base_url)
        self.headers = {CLIENT_HEADER: client_id}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None
        # an async client's connections belong to one event loop, and asyncio.run makes a new
        # loop each time: one client per loop, keeping no connection a dead loop would strand
        self._aclients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop,
                                                  httpx.AsyncClient] = weakref.WeakKeyDictionary()

    def client(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(headers=self.headers, timeout=self.timeout(None))
            return self._client

    def aclient(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._aclients.get(loop)
            if client is None:
                client = self._aclients[loop] = httpx.AsyncClient(
                    headers=self.headers, timeout=self.timeout(None),
                    limits=httpx.Limits(max_keepalive_connections=0))
            return client

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
            self._aclients.clear()  # they keep no connection open
        if client is not None:
            client.close()

    def url(self, path: str) -> str:
        return self.base_url + path

    @staticmethod
    def timeout(read: float | None) -> httpx.Timeout:
        return httpx.Timeout(CONNECT_TIMEOUT, read=read, write=read, pool=read)

    # -- answers, the same for both drivers ------------------------------------------------------

    def answer(self, status: int, body: bytes) -> Any:
        """A call's JSON answer, or the error it reports raised."""
        if status >= 300:
            raise self.refusal(status, body)
        try:
            return json.loads(body)
        except ValueError:
            raise self.foreign(status) from None

    def refusal(self, status: int, body: bytes) -> RKLLMError:
        """The error a non-2xx answer reports (the server's class when it names one)."""
        try:
            error = json.loads(body).get("error")
        except (ValueError, AttributeError):
            error = None
        if status == 401:
            message = error.get("message") if isinstance(error, dict) else error
            return RemoteUnavailableError(
                f"the server at {self.base_url} refused this client ({message or 'HTTP 401'}): "
                "pass api_key= (the key given to `rkllm serve --api-key`)")
        if error is None:
            return self.foreign(status)
        return decode_error(error, status)

    def foreign(self, status: int) -> RemoteUnavailableError:
        return RemoteUnavailableError(
            f"{self.base_url} answered HTTP {status} without an rkllm error: is it an "
            "`rkllm serve` of a recent rkllm-py (with the /rkllm/v1 routes)? Check the URL and "
            "port, and update rkllm-py on the server")

    def lost(self, error: httpx.HTTPError, what: str, waited: float | None,
             partial_text: str = "") -> RKLLMError:
        """The error for a request that failed in transport."""
        if isinstance(error, httpx.TimeoutException) and \
                not isinstance(error, httpx.ConnectTimeout):
            return RunTimeoutError(
                f"{what} got no answer from {self.base_url} within {waited} s (its timeout and "
                f"a margin of {REMOTE_MARGIN} s for the server's own verdict)",
                partial_text=partial_text)
        if isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout)):
            return RemoteUnavailableError(
                f"cannot reach the rkllm server at {self.base_url} ({error}): start it there "
                "(`rkllm serve MODEL --host 0.0.0.0` to listen beyond the board itself) and "
                "check the address, the port and any firewall between", partial_text)
        return RemoteUnavailableError(
            f"the connection to {self.base_url} broke during {what} ({type(error).__name__}: "
            f"{error}); the server may have stopped: check it and call again", partial_text)

    # -- plain calls ---------------------------------------------------------------------------

    def call(self, method: str, path: str, body: Any = None, *,
             read: float | None = None, what: str = "the call") -> Any:
        try:
            response = self.client().request(method, self.url(path), json=body,
                                              timeout=self.timeout(read))
        except httpx.HTTPError as exc:
            raise self.lost(exc, what, read) from None
        return self.answer(response.status_code, response.content)

    async def acall(self, method: str, path: str, body: Any = None, *,
                    read: float | None = None, what: str = "the call") -> Any:
        try:
            response = await self.aclient().request(method, self.url(path), json=body,
                                                     timeout=self.timeout(read))
        except httpx.HTTPError as exc:
            raise self.lost(exc, what, read) from None
        return self.answer(response.status_code, response.content)


def _aborted_result() -> GenerationResult:
    return GenerationResult("", [], "abort", PerfStats(None, 0.0, 0, 0.0, 0.0, None))


class _RunReader:
    """What both remote streams share, without I/O (as httpx's own decoders): the run's NDJSON
    lines in; chunks, the result and the errors out, each end of the run handled once."""

    def __init__(self, server: _Server, read: float | None, on_token: OnToken | None) -> None:
        self.server = server
        self.read = read
        self.on_token = on_token
        self.parts: list[str] = []
        self.result: GenerationResult | None = None
        self.finished = False

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def line(self, line: str) -> StreamChunk | None:
        """One line: a chunk to hand out, or None (the result arrived, or a blank line)."""
        if not line.strip():
            return None
        try:
            item = decode_line(line)
        except RKLLMError as exc:
            self.finished = True
            if not getattr(exc, "partial_text", True):
                exc.partial_text = self.text  # type: ignore[attr-defined]
            raise
        if isinstance(item, GenerationResult):
            self.result = item
            self.finished = True
            return None
        self.parts.append(item.text)
        if self.on_token is not None:
            self.on_token(item)
        return item

    def ended(self) -> None:
        """The response ended: fine after the result, a lost run before it."""
        if not self.finished:
            self.finished = True
            raise RemoteUnavailableError(
                f"the server at {self.server.base_url} closed the stream before the run ended; "
                "it may have stopped: check it and call again", self.text)

    def lost(self, error: httpx.HTTPError) -> RKLLMError:
        self.finished = True
        return self.server.lost(error, "the run", self.read, self.text)

    def refused(self, status: int, body: bytes) -> RKLLMError:
        self.finished = True
        return self.server.refusal(status, body)

    def never_started(self) -> None:
        self.result = _aborted_result()
        self.finished = True


class _StreamBase:
    def __init__(self, model: RemoteRKLLM, body: dict[str, Any], read: float | None,
                 on_token: OnToken | None) -> None:
        self._model = model  # keeps the model (and its HTTP clients) open while we stream
        self._server = model._server
        self._body = body
        self._read = read
        self._reader = _RunReader(self._server, read, on_token)
        self._abort_sent = False

    @property
    def result(self) -> GenerationResult:
        """The final result; available once the stream has been consumed (or closed).

        Example: ``stream.result.finish_reason`` (see :class:`RemoteTextStream`).
        """
        if self._reader.result is None:
            raise RKLLMError("the run has not finished: iterate the stream to its end first")
        return self._reader.result

    @property
    def text(self) -> str:
        """The text the run has produced so far (the chunks handed out).

        Example: ``stream.text`` after a few chunks (see :class:`RemoteTextStream`).
        """
        return self._reader.text

    def _abort_path(self) -> str:
        return self._model._path("/abort")


class RemoteTextStream(_StreamBase):
    """The chunks of one run on the server as they arrive; see :meth:`RemoteRKLLM.stream`.

    ``abort()`` asks the server to stop the run (the stream then ends with its result);
    ``close()`` aborts and reads the run's end, keeping the result; ``break``, an exception or
    garbage collection close the connection, which aborts the run on the server.

    Example:
        >>> import tempfile, pathlib
        >>> from rkllm_core import RemoteRKLLM
        >>> from rkllm_core.server import ModelConfig, ServerConfig
        >>> from rkllm_core.server import serving
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "tiny.scripted"
        >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "a b c d"\\n')
        >>> config = ServerConfig(models=[ModelConfig(path=str(path), library="host",
        ...                                           params={"max_context_len": 512})])
        >>> with serving(config) as url, RemoteRKLLM(url) as llm:
        ...     with llm.stream("go") as stream:
        ...         first = next(stream).text      # leaving the block aborts the rest
        ...     again = llm.generate("go").text     # the model is still usable
        >>> first, stream.result.finish_reason in ("abort", "stop"), stream.text[:1], again
        ('a', True, 'a', 'a b c d')
    """

    def __init__(self, model: RemoteRKLLM, body: dict[str, Any], read: float | None,
                 on_token: OnToken | None = None) -> None:
        super().__init__(model, body, read, on_token)
        self._response: httpx.Response | None = None
        self._lines: Iterator[str] | None = None
        client = self._server.client()
        request = client.build_request("POST", self._server.url(model._path("/run")),
                                       json=body, timeout=self._server.timeout(read))
        try:
            response = client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise self._reader.lost(exc) from None
        if response.status_code != 200:
            try:
                raw = response.read()
            finally:
                response.close()
            raise self._reader.refused(response.status_code, raw)
        self._response = response
        self._lines = response.iter_lines()

    def __iter__(self) -> Iterator[StreamChunk]:
        return self

    def __next__(self) -> StreamChunk:
        reader = self._reader
        while not reader.finished and self._lines is not None:
            try:
                line = next(self._lines)
            except StopIteration:
                self._drop()
                reader.ended()
                break
            except httpx.HTTPError as exc:
                self._drop()
                raise reader.lost(exc) from None
            except BaseException:
                self._drop()  # Ctrl-C: closing the connection aborts the run
                raise
            try:
                chunk = reader.line(line)
            except BaseException:
                self._drop()
                raise
            if chunk is not None:
                return chunk
        self._drop()
        raise StopIteration

    def _drop(self) -> None:
        """Close the connection (the server aborts a run whose client went away)."""
        response, self._response = self._response, None
        self._reader.finished = True
        if response is not None:
            response.close()

    def abort(self) -> None:
        """Ask the server to stop the run; does not wait (as :meth:`close` does). The stream
        then ends with what came before the abort.

        Example: ``stream.abort()`` from another thread, or at a stop word.
        """
        if self._reader.finished or self._abort_sent:
            return
        self._abort_sent = True
        try:
            self._server.call("POST", self._abort_path(), {"run_id": self._body["run_id"]},
                              read=ABORT_TIMEOUT, what="abort()")
        except RKLLMError as exc:  # the run still ends: its connection closes with the stream
            logger.warning("aborting a remote run failed: %s", exc)

    def close(self) -> None:
        """Abort the run if it is still going and read its end (its result is kept).

        Example: ``stream.close(); stream.result.finish_reason`` (``"abort"`` or ``"stop"``).
        """
        if self._reader.finished:
            return
        self.abort()
        try:
            for _ in self:
                pass
        except ModelWedgedError:
            raise
        except RKLLMError:
            pass  # what aborting caused
        finally:
            self._drop()

    def __enter__(self) -> RemoteTextStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # a consumer that went away (break, GC) must not leave the run going
        with contextlib.suppress(Exception):
            if getattr(self, "_response", None) is not None:
                self._drop()


class AsyncRemoteTextStream(_StreamBase):
    """The asyncio twin of :class:`RemoteTextStream`: the request goes out when iteration
    starts; cancelling the task that iterates it, ``break`` or ``aclose()`` abort the run.

    Example:
        >>> import asyncio, tempfile, pathlib
        >>> from rkllm_core import RemoteRKLLM
        >>> from rkllm_core.server import ModelConfig, ServerConfig
        >>> from rkllm_core.server import serving
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "tiny.scripted"
        >>> _ = path.write_text('RKLLM-SCRIPTED 1\\ndefault reply "one two"\\n')
        >>> config = ServerConfig(models=[ModelConfig(path=str(path), library="host",
        ...                                           params={"max_context_len": 512})])
        >>> async def main(llm: RemoteRKLLM) -> tuple[list[str], str]:
        ...     async with llm.astream("count") as stream:
        ...         pieces = [chunk.text async for chunk in stream]
        ...     return pieces, stream.result.finish_reason
        >>> with serving(config) as url, RemoteRKLLM(url) as llm:
        ...     asyncio.run(main(llm))
        (['one', ' two'], 'stop')
    """

    def __init__(self, model: RemoteRKLLM, body: dict[str, Any], read: float | None,
                 on_token: OnToken | None = None) -> None:
        super().__init__(model, body, read, on_token)
        self._response: httpx.Response | None = None
        self._lines: AsyncIterator[str] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def __aiter__(self) -> AsyncIterator[StreamChunk]:
        return self

    async def _open(self) -> None:
        client = self._server.aclient()
        request = client.build_request("POST", self._server.url(self._model._path("/run")),
                                       json=self._body, timeout=self._server.timeout(self._read))
        try:
            response = await client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise self._reader.lost(exc) from None
        except BaseException:
            self._reader.finished = True
            raise
        if response.status_code != 200:
            try:
                raw = await response.aread()
            finally:
                await response.aclose()
            raise self._reader.refused(response.status_code, raw)
        self._response = response
        self._lines = response.aiter_lines()

    async def __anext__(self) -> StreamChunk:
        reader = self._reader
        if self._lines is None and not reader.finished:
            await self._open()
        while not reader.finished and self._lines is not None:
            try:
                line = await anext(self._lines)
            except StopAsyncIteration:
                await self._drop()
                reader.ended()
                break
            except httpx.HTTPError as exc:
                await self._drop()
                raise reader.lost(exc) from None
            except BaseException:
                await self._drop()  # a cancelled task: closing the connection aborts the run
                raise
            try:
                chunk = reader.line(line)
            except BaseException:
                await self._drop()
                raise
            if chunk is not None:
                return chunk
        await self._drop()
        raise StopAsyncIteration

    async def _drop(self) -> None:
        response, self._response = self._response, None
        self._reader.finished = True
        if response is not None:
            with contextlib.suppress(Exception):
                await response.aclose()

    def abort(self) -> None:
        """Ask the server to stop the run; does not wait. A stream not started yet never
        starts (its result says ``"abort"``).

        Example: ``stream.abort()`` (then ``await stream.aclose()`` to read its end).
        """
        reader = self._reader
        if reader.finished or self._abort_sent:
            return
        if self._lines is None:
            reader.never_started()
            return
        self._abort_sent = True
        body = {"run_id": self._body["run_id"]}
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # from a thread without a loop: a plain request
            with contextlib.suppress(RKLLMError):
                self._server.call("POST", self._abort_path(), body, read=ABORT_TIMEOUT)
            return
        task = loop.create_task(self._server.acall("POST", self._abort_path(), body,
                                                   read=ABORT_TIMEOUT, what="abort()"))
        self._tasks.add(task)
        task.add_done_callback(self._aborted)

    def _aborted(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("aborting a remote run failed: %s", task.exception())

    async def aclose(self) -> None:
        """Abort the run if it is still going and read its end (its result is kept).

        Example: ``await stream.aclose(); stream.result.finish_reason``.
        """
        if self._reader.finished:
            return
        self.abort()
        try:
            async for _ in self:
                pass
        except ModelWedgedError:
            raise
        except RKLLMError:
            pass  # what aborting caused
        finally:
            await self._drop()

    async def __aenter__(self) -> AsyncRemoteTextStream:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()


__all__ = ["AsyncRemoteTextStream", "RemoteTextStream"]
