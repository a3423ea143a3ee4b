"""The messages between :class:`~rkllm_core.IsolatedRKLLM` and its child process.

Two pipes, one message type per thing said, each a frozen dataclass that pickles by value.

Parent to child: :class:`Init` once (RKLLM's arguments), then :class:`Run`, :class:`Abort`,
:class:`Call`, :class:`AsyncCall`, :class:`Cancel` and finally :class:`Close`.
Child to parent: :class:`Ready` or :class:`Failed` once (the answer to ``Init``), then, naming
the request they answer by its ``rid``: for a run, :class:`Chunk` s then :class:`Done` or
:class:`Error`; for a call, :class:`Value` or :class:`Error`.

:func:`send` and :func:`receive` put a message on a pipe with the plain pickler
(``Connection.send`` would build a ``ForkingPickler`` per message: too slow for one per token).

Example:
    >>> import os, pickle
    >>> from multiprocessing.connection import Connection
    >>> from rkllm_core.isolated_protocol import Chunk, Run, receive, send
    >>> read_fd, write_fd = os.pipe()
    >>> reader, writer = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    >>> send(writer, Run(1, {"prompt": "Hi"})); send(writer, Chunk(1, " word", 1234))
    >>> receive(reader), receive(reader)
    (Run(rid=1, kwargs={'prompt': 'Hi'}), Chunk(rid=1, text=' word', token_id=1234))
    >>> reader.close(); writer.close()
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, ClassVar

from rkllm_core.errors import RKLLMError

if TYPE_CHECKING:
    from rkllm_core.params import ModelParams
    from rkllm_core.results import GenerationResult, RuntimeInfo


class _Message:
    """Pickles as its class and its fields' values: cheaper than the default, and Python 3.10
    cannot unpickle frozen dataclasses with slots otherwise (CPython issue 90055)."""

    __slots__ = ()
    __match_args__: ClassVar[tuple[str, ...]] = ()  # the fields, in order (set by @dataclass)

    def __reduce__(self) -> tuple[type, tuple[Any, ...]]:
        return type(self), tuple([getattr(self, name) for name in self.__match_args__])


# -- parent to child -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Init(_Message):
    """Load the model: ``RKLLM(**kwargs)``."""

    kwargs: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Run(_Message):
    """Queue a run: ``RKLLM.stream(**kwargs)``; answered by chunks, then done or error."""

    rid: int
    kwargs: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Abort(_Message):
    """Abort run ``rid`` (or take it off the queue); nothing if it has ended."""

    rid: int


@dataclass(frozen=True, slots=True)
class Call(_Message):
    """``RKLLM.<method>(*args, **kwargs)`` on a thread of its own; answered by value or error."""

    rid: int
    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AsyncCall(_Message):
    """``await RKLLM.<method>(*args, **kwargs)`` on the child's event loop, so that
    :class:`Cancel` cancels it as a cancelled task would (aborting its runs)."""

    rid: int
    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Cancel(_Message):
    """Cancel async call ``rid``; it answers with an error."""

    rid: int


@dataclass(frozen=True, slots=True)
class Close(_Message):
    """Close the model (aborting what runs, failing what waits) and exit."""


# -- child to parent -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ready(_Message):
    """The model is loaded: what the parent reports about it without asking."""

    info: RuntimeInfo
    pid: int
    params: ModelParams


@dataclass(frozen=True, slots=True)
class Failed(_Message):
    """Loading the model failed with ``error``; the child exits."""

    error: BaseException


@dataclass(frozen=True, slots=True)
class Chunk(_Message):
    """One streamed piece of run ``rid``: a :class:`~rkllm_core.results.StreamChunk`'s fields."""

    rid: int
    text: str
    token_id: int | None


@dataclass(frozen=True, slots=True)
class Done(_Message):
    """Run ``rid`` ended with ``result``."""

    rid: int
    result: GenerationResult


@dataclass(frozen=True, slots=True)
class Value(_Message):
    """Call ``rid`` returned ``value``."""

    rid: int
    value: Any


@dataclass(frozen=True, slots=True)
class Error(_Message):
    """Run or call ``rid`` raised ``error``."""

    rid: int
    error: BaseException


ToChild = Init | Run | Abort | Call | AsyncCall | Cancel | Close
FromChild = Ready | Failed | Chunk | Done | Value | Error


def send(connection: Connection, message: ToChild | FromChild) -> None:
    """Write one message; ``OSError`` / ``ValueError`` if the other side is gone."""
    connection.send_bytes(pickle.dumps(message, pickle.HIGHEST_PROTOCOL))


def receive(connection: Connection) -> Any:
    """Read one message (blocking); ``EOFError`` / ``OSError`` once the other side is gone."""
    return pickle.loads(connection.recv_bytes())


def picklable(error: BaseException) -> BaseException:
    """``error`` if it survives the pipe, else an :class:`~rkllm_core.errors.RKLLMError` that
    names it (an exception with unpicklable arguments must still reach the caller).

    Example:
        >>> from rkllm_core.isolated_protocol import picklable
        >>> class Odd(Exception):
        ...     def __init__(self, a: int, b: int) -> None:
        ...         super().__init__(f"{a}/{b}")
        >>> picklable(Odd(1, 2)), picklable(ValueError("x"))
        (RKLLMError('Odd: 1/2'), ValueError('x'))
    """
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return RKLLMError(f"{type(error).__name__}: {error}")
    return error
