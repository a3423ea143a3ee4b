"""The token ids of "yes" and "no" that :meth:`~rkllm_core.RKLLM.rerank` reads from the logits.

The RKLLM runtime has no tokenizer API, so a reranker cannot ask the model which ids its
"yes" and "no" have. :func:`rerank_token_ids` finds them, first way that applies wins:

1. the ids the caller gave (``yes_token_id`` / ``no_token_id``);
2. the model's tokenizer given as ``tokenizer=``: a ``tokenizer.json``, a Hugging Face folder,
   a ``.gguf`` file, a :class:`~rkllm_core.chat.tokenizer.ChatTokenizer` or a
   ``str -> token ids`` function;
3. the vocabulary stored in the model file itself, when it is a GGUF (the host runtime);
4. :data:`KNOWN_VOCABULARIES`: the ids of the reranker conversions users run, matched by the
   model's file name (``Qwen3-Reranker-0.6B-w8a8.rkllm``).

When none applies the error names each way. Vocabularies read from files are cached per file
(path, size, modification time), so asking again costs nothing; :func:`arerank_token_ids`
reads a file not seen before on a worker thread, so an event loop never waits for it.

Example:
    >>> from rkllm_core.rerank_tokens import rerank_token_ids
    >>> rerank_token_ids("Qwen3-Reranker-0.6B-rk3588-w8a8.rkllm")
    (9693, 2152)
    >>> rerank_token_ids("any.rkllm", yes_token_id=10, no_token_id=11)
    (10, 11)
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rkllm_core.errors import InvalidParameterError, RKLLMError, UnsupportedFeatureError

if TYPE_CHECKING:
    from rkllm_core.chat.tokenizer import ChatTokenizer

logger = logging.getLogger("rkllm_core")

WORDS = ("yes", "no")


@dataclass(frozen=True)
class KnownVocabulary:
    """The "yes" / "no" ids of models whose file name matches ``pattern`` (a case-insensitive
    regular expression searched in the name), and where the ids come from.

    Example:
        >>> from rkllm_core.rerank_tokens import KNOWN_VOCABULARIES
        >>> KNOWN_VOCABULARIES[0].matches("Qwen3-Reranker-4B.rkllm")
        True
    """

    name: str
    pattern: str
    yes: int
    no: int
    source: str

    def matches(self, file_name: str) -> bool:
        """True when the model file's name is one of these models."""
        return re.search(self.pattern, file_name, re.IGNORECASE) is not None


#: The table behind way 4. Qwen2, Qwen2.5 and Qwen3 share one byte-level BPE vocabulary
#: (151,643 ordinary tokens), so their chat models used as rerankers have the same ids.
KNOWN_VOCABULARIES: tuple[KnownVocabulary, ...] = (
    KnownVocabulary(
        "Qwen3-Reranker (0.6B, 4B, 8B)", r"qwen3[-_ .]?reranker", 9693, 2152,
        "the model card's tokenizer.convert_tokens_to_ids('yes') / ('no')"),
    KnownVocabulary(
        "Qwen2, Qwen2.5 and Qwen3 models", r"qwen(?:2|2\.5|3)(?![\d.])", 9693, 2152,
        "the vocabulary Qwen3-Reranker shares with them"),
)


def rerank_token_ids(
    model_path: str | os.PathLike[str],
    *,
    tokenizer: Any = None,
    yes_token_id: int | None = None,
    no_token_id: int | None = None,
) -> tuple[int, int]:
    """``(yes_id, no_id)`` for a reranker: given ids, else ``tokenizer``, else the GGUF's own
    vocabulary, else the known conversion the file name matches.

    Args:
        model_path: the model file (``.rkllm``; ``.gguf`` on the host runtime).
        tokenizer: the model's tokenizer, when known: a ``tokenizer.json`` path, a Hugging
            Face folder, a ``.gguf`` file, a ``ChatTokenizer``, or a ``str -> ids`` function
            (without BOS). A path that does not load is an error, not skipped.
        yes_token_id, no_token_id: ids the caller knows; one alone is completed by the other
            ways.

    Raises:
        UnsupportedFeatureError: no way applies; the message says what to pass.
        InvalidParameterError: a given id is not an int >= 0, or the tokenizer cannot be read.

    Example:
        >>> from rkllm_core.rerank_tokens import rerank_token_ids
        >>> rerank_token_ids("m.rkllm", tokenizer=lambda text: [ord(c) for c in text])
        (121, 110)
        >>> rerank_token_ids("my-model.rkllm")
        Traceback (most recent call last):
        ...
        rkllm_core.errors.UnsupportedFeatureError: rerank() needs the token ids of "yes" and ...
    """
    yes = _checked_id(yes_token_id, "yes_token_id")
    no = _checked_id(no_token_id, "no_token_id")
    if yes is not None and no is not None:
        return yes, no
    file = Path(model_path)
    found, gguf_problem = _derived_ids(file, tokenizer)
    if found is None:
        raise UnsupportedFeatureError(_missing_message(file.name, gguf_problem))
    return (found[0] if yes is None else yes), (found[1] if no is None else no)


async def arerank_token_ids(
    model_path: str | os.PathLike[str],
    *,
    tokenizer: Any = None,
    yes_token_id: int | None = None,
    no_token_id: int | None = None,
) -> tuple[int, int]:
    """:func:`rerank_token_ids` for asyncio: a tokenizer file this process has not read yet is
    read on a worker thread (a GGUF vocabulary takes up to seconds), anything else at once.

    Example:
        >>> import asyncio
        >>> from rkllm_core.rerank_tokens import arerank_token_ids
        >>> asyncio.run(arerank_token_ids("Qwen3-Reranker-4B.rkllm"))
        (9693, 2152)
    """
    arguments = {"tokenizer": tokenizer, "yes_token_id": yes_token_id,
                 "no_token_id": no_token_id}
    wanted = yes_token_id is None or no_token_id is None
    file = _vocabulary_file(Path(model_path), tokenizer) if wanted else None
    if file is not None and _file_key(*file) not in _FILE_IDS:
        return await asyncio.to_thread(rerank_token_ids, model_path, **arguments)
    return rerank_token_ids(model_path, **arguments)


def _checked_id(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidParameterError(f"{name} must be a token id (an int >= 0), got {value!r}")
    return int(value)


def _derived_ids(file: Path, tokenizer: Any) -> tuple[tuple[int, int] | None, str | None]:
    """The ids from the first of ways 2-4 that applies, and why the GGUF way did not."""
    vocabulary = _vocabulary_file(file, tokenizer)
    if tokenizer is not None and vocabulary is None:
        return _ids_from_object(tokenizer), None
    problem = None
    if vocabulary is not None:
        try:
            return _ids_from_file(*vocabulary), None
        except RKLLMError as exc:
            if tokenizer is not None:  # the caller named this tokenizer: it must load
                raise
            problem = str(exc)  # no gguf/tokenizers package, or a vocabulary we cannot read
            logger.debug("rerank ids: the GGUF vocabulary of %s was not read: %s", file, exc)
    for known in KNOWN_VOCABULARIES:
        if known.matches(file.name):
            return (known.yes, known.no), None
    return None, problem


def _vocabulary_file(model: Path, tokenizer: Any) -> tuple[Path, str] | None:
    """The tokenizer file the ids would be read from, and its kind: ``tokenizer`` when it is a
    path, else the model itself when it is a GGUF; None when no file is involved."""
    if isinstance(tokenizer, (str, os.PathLike)):
        path = Path(tokenizer).expanduser()
        if not path.exists():
            raise InvalidParameterError(
                f"tokenizer {path} does not exist: give the model's tokenizer.json, its Hugging "
                "Face folder or its .gguf file")
        kind = "folder" if path.is_dir() else "gguf" if path.suffix.lower() == ".gguf" else "json"
        return path, kind
    if tokenizer is None and model.suffix.lower() == ".gguf" and model.is_file():
        return model, "gguf"
    return None


def _ids_from_object(tokenizer: Any) -> tuple[int, int]:
    from rkllm_core.chat.tokenizer import ChatTokenizer

    if isinstance(tokenizer, ChatTokenizer):
        return _word_ids(tokenizer)
    if callable(tokenizer):
        ids = []
        for word in WORDS:
            encoded = list(tokenizer(word))
            if not encoded:
                raise InvalidParameterError(f"the tokenizer returned no tokens for {word!r}")
            ids.append(int(encoded[0]))
        return ids[0], ids[1]
    raise InvalidParameterError(
        f"tokenizer must be a path (tokenizer.json, a Hugging Face folder, a .gguf file), a "
        f"ChatTokenizer or a str -> token ids function, got {type(tokenizer).__name__}")


#: (resolved path, size, modification time) -> ids: a changed file is read again
_FILE_IDS: dict[tuple[str, int, int], tuple[int, int]] = {}
_FILE_IDS_LOCK = threading.Lock()


def _file_key(path: Path, kind: str) -> tuple[str, int, int]:
    stat = path.resolve().stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def _ids_from_file(path: Path, kind: str) -> tuple[int, int]:
    """The ids in a tokenizer file, read once per process."""
    from rkllm_core.chat.tokenizer import ChatTokenizer

    key = _file_key(path, kind)
    with _FILE_IDS_LOCK:  # one reader per file; a second caller waits for its answer
        if key not in _FILE_IDS:
            if kind == "folder":
                loaded = ChatTokenizer.from_pretrained_dir(path)
            elif kind == "gguf":
                loaded = ChatTokenizer.from_gguf(path)
            else:
                loaded = ChatTokenizer.from_file(path)
            _FILE_IDS[key] = _word_ids(loaded)
        return _FILE_IDS[key]


def _word_ids(tokenizer: ChatTokenizer) -> tuple[int, int]:
    """The vocabulary entry of each word (what ``convert_tokens_to_ids`` gives), else the
    first token it encodes to (a SentencePiece vocabulary spells it ``▁yes``)."""
    ids = []
    for word in WORDS:
        found = tokenizer.token_id(word)
        if found is None:
            encoded = tokenizer.encode(word, parse_special=False)
            if not encoded:
                raise InvalidParameterError(f"the tokenizer encodes {word!r} to no tokens")
            found = encoded[0]
        ids.append(int(found))
    return ids[0], ids[1]


def _missing_message(file_name: str, gguf_problem: str | None) -> str:
    known = "; ".join(k.name for k in KNOWN_VOCABULARIES)
    message = (
        'rerank() needs the token ids of "yes" and "no" (the RKLLM runtime has no tokenizer '
        f"API), and none of the ways to find them applies to {file_name}: pass "
        "yes_token_id= and no_token_id= (the ids in the model's vocabulary); or pass "
        "tokenizer= (the tokenizer.json or Hugging Face folder of the model it was converted "
        "from; to rkllm_core.RKLLM, a str -> token ids function); or use a known reranker "
        f"conversion, recognised by its file name ({known})")
    if gguf_problem:
        message += f". The model's GGUF vocabulary could not be read: {gguf_problem}"
    return message
