"""Local tokenization for "tokens mode": turn a rendered prompt into the ids the model expects.

:class:`ChatTokenizer` encodes with one of two engines. For a GGUF file it uses llama.cpp's own
tokenizer (a vocabulary-only load through llama-cpp-python, :class:`LlamaVocabulary`), so the
ids are the host runtime's by construction; where llama-cpp-python is not installed it rebuilds
the GGUF's byte-level BPE vocabulary as a Hugging Face ``tokenizers`` tokenizer with llama.cpp's
pre-tokenizer rules. ``tokenizer.json`` files and Hugging Face folders always use ``tokenizers``.
Encoding never adds BOS/EOS: the chat templates write the special tokens they need, and
special-token text in the prompt (``<|im_start|>``) becomes its single id.

``llama_cpp`` (``pip install 'rkllm-py[host]'``) and ``tokenizers`` (``pip install
'rkllm-py[tokens]'``) are optional; each is imported only when a tokenizer needs it.

Example:
    >>> from rkllm_core.chat.tokenizer import ChatTokenizer
    >>> from rkllm_core.host.models import smollm2_path
    >>> tokenizer = ChatTokenizer.from_gguf(smollm2_path())  # doctest: +SKIP
    >>> tokenizer.encode("<|im_start|>user\\nHi<|im_end|>")  # doctest: +SKIP
    [1, 4093, 198, 26843, 2]
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from rkllm_core.chat.templates import hf_special_tokens
from rkllm_core.errors import InvalidParameterError, RKLLMError, UnsupportedFeatureError

if TYPE_CHECKING:
    from tokenizers import Tokenizer


class TokenizerUnavailableError(RKLLMError, ImportError):
    """A package that local tokenization needs (``tokenizers``, or ``gguf``) is not installed."""


class TokenizerClosedError(RKLLMError):
    """A :class:`LlamaVocabulary` was used after :meth:`LlamaVocabulary.close`."""


def _tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError as exc:
        raise TokenizerUnavailableError(
            "local tokenization needs the tokenizers package: pip install tokenizers "
            "(or pip install 'rkllm-py[tokens]')"
        ) from exc
    return tokenizers


# llama.cpp's pre-tokenizer regexes (llama-vocab.cpp), by the GGUF's tokenizer.ggml.pre. Each
# regex splits what the previous one produced; matches and the text between them are kept.
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = _LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")
_PRE_TOKENIZER_REGEXES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("gpt-2", "phi-2", "mpt", "olmo", "jais"), (_GPT2,)),
    **dict.fromkeys(
        ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"),
        (r"\p{N}", _GPT2),
    ),
    **dict.fromkeys(
        ("llama3", "llama-v3", "llama-bpe", "falcon3", "dbrx", "smaug-bpe"), (_LLAMA3,)
    ),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "stablelm2", "hunyuan"), (_QWEN2,)),
    "chatglm-bpe": (_LLAMA3,),
    "default": (r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"),
}
# llama.cpp looks a whole word up in the vocabulary before merging for these (ignore_merges).
_WHOLE_WORD_FIRST = frozenset({"llama3", "llama-v3", "llama-bpe", "falcon3"})

# tokenizer.ggml.token_type values (llama.cpp's llama_token_type)
_UNKNOWN, _CONTROL, _USER_DEFINED = 2, 3, 4


def _gguf_reader(path: Path) -> Any:
    try:
        from gguf import GGUFReader
    except ImportError as exc:
        raise TokenizerUnavailableError(
            "reading a GGUF file needs the gguf package: pip install gguf "
            "(or pip install 'rkllm-py[host]')"
        ) from exc
    return GGUFReader(path)


class _GGUFFields:
    """Typed access to a GGUF file's metadata values."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fields = _gguf_reader(path).fields

    def has(self, key: str) -> bool:
        return key in self._fields

    def _field(self, key: str) -> Any:
        if key not in self._fields:
            raise InvalidParameterError(f"{self.path} has no {key} in its metadata")
        return self._fields[key]

    def string(self, key: str) -> str:
        field = self._field(key)
        return bytes(field.parts[field.data[0]]).decode("utf-8")

    def integer(self, key: str) -> int:
        field = self._field(key)
        return int(field.parts[field.data[0]][0])

    def strings(self, key: str) -> list[str]:
        field = self._field(key)
        return [bytes(field.parts[index]).decode("utf-8") for index in field.data]

    def integers(self, key: str) -> list[int]:
        field = self._field(key)
        return [int(field.parts[index][0]) for index in field.data]


class _Engine(Protocol):
    """What :class:`ChatTokenizer` needs from the tokenizer it wraps."""

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str, *, parse_special: bool) -> list[int]: ...

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool) -> str: ...

    def token_id(self, piece: str) -> int | None: ...


class ChatTokenizer:
    """Encodes rendered prompts to token ids and decodes ids back, on the CPU, without the model.

    Build one with :meth:`from_gguf`, :meth:`from_pretrained_dir` or :meth:`from_file`.
    :meth:`encode` adds no BOS/EOS; special-token text is parsed into its id unless
    ``parse_special=False``.

    Args:
        tokenizer: a ``tokenizers.Tokenizer``, or a :class:`LlamaVocabulary`.
        bos_token, eos_token: the model's special tokens, when known.

    Example:
        >>> from rkllm_core.chat.tokenizer import ChatTokenizer
        >>> from rkllm_core.host.models import smollm2_path
        >>> tokenizer = ChatTokenizer.from_gguf(smollm2_path())  # doctest: +SKIP
        >>> ids = tokenizer.encode("<|im_start|>assistant\\n")  # doctest: +SKIP
        >>> ids[0] == tokenizer.token_id("<|im_start|>"), tokenizer.decode(ids)  # doctest: +SKIP
        (True, '<|im_start|>assistant\\n')
    """

    def __init__(
        self,
        tokenizer: Tokenizer | LlamaVocabulary,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.bos_token = bos_token or None
        self.eos_token = eos_token or None
        self._engine: _Engine = (
            tokenizer if isinstance(tokenizer, LlamaVocabulary) else _HuggingFaceEngine(tokenizer)
        )

    # ---- constructors ----
    @classmethod
    def from_file(cls, path: str | Path) -> ChatTokenizer:
        """A tokenizer from a Hugging Face ``tokenizer.json`` file.

        Example:
            >>> from rkllm_core.chat.tokenizer import ChatTokenizer
            >>> ChatTokenizer.from_file("Qwen2.5-0.5B-Instruct/tokenizer.json")  # doctest: +SKIP
            <ChatTokenizer vocab_size=151665>
        """
        file = Path(path)
        if not file.is_file():
            raise InvalidParameterError(f"{file} does not exist: expected a tokenizer.json file")
        return cls(_tokenizers().Tokenizer.from_file(str(file)))

    @classmethod
    def from_pretrained_dir(cls, folder: str | Path) -> ChatTokenizer:
        """A tokenizer from a Hugging Face model folder: ``tokenizer.json`` for the vocabulary,
        ``tokenizer_config.json`` for the BOS/EOS tokens.

        Example:
            >>> from rkllm_core.chat.tokenizer import ChatTokenizer
            >>> folder = "SmolLM2-135M-Instruct"
            >>> ChatTokenizer.from_pretrained_dir(folder).eos_token  # doctest: +SKIP
            '<|im_end|>'
        """
        directory = Path(folder)
        file = directory / "tokenizer.json"
        if not file.is_file():
            raise InvalidParameterError(
                f"{directory} has no tokenizer.json: pass the Hugging Face folder the model was "
                "converted from, or use ChatTokenizer.from_gguf"
            )
        tokens = hf_special_tokens(directory)
        tokenizer = _tokenizers().Tokenizer.from_file(str(file))
        return cls(tokenizer, bos_token=tokens["bos_token"], eos_token=tokens["eos_token"])

    @classmethod
    def from_gguf(cls, path: str | Path) -> ChatTokenizer:
        """The tokenizer of a GGUF file's vocabulary, giving exactly llama.cpp's ids.

        With llama-cpp-python installed this is llama.cpp's own tokenizer on a vocabulary-only
        load (:class:`LlamaVocabulary`, well under a second). Without it, the vocabulary is
        read with ``gguf`` and rebuilt as a ``tokenizers`` BPE tokenizer with llama.cpp's
        pre-tokenizer regexes for ``tokenizer.ggml.pre`` (several seconds for a 50k
        vocabulary). Both give the same ids and the same text back. Only
        ``tokenizer.ggml.model == "gpt2"`` (byte-level BPE: SmolLM, Qwen, Llama 3, DeepSeek-R1
        distills) is supported.

        Raises:
            UnsupportedFeatureError: another tokenizer model (SentencePiece ``llama``, ...) or a
                pre-tokenizer the engine does not know; use :meth:`from_pretrained_dir`.
            TokenizerUnavailableError: neither llama-cpp-python nor ``tokenizers`` and ``gguf``
                are installed.

        Example:
            >>> from rkllm_core.chat.tokenizer import ChatTokenizer
            >>> from rkllm_core.host.models import smollm2_path
            >>> ChatTokenizer.from_gguf(smollm2_path())  # doctest: +SKIP
            <ChatTokenizer vocab_size=49152>
        """
        file = Path(path)
        if not file.is_file():
            raise InvalidParameterError(f"{file} does not exist: expected a GGUF file")
        try:
            vocabulary = LlamaVocabulary(file)
        except TokenizerUnavailableError:
            try:
                return cls._rebuilt_from_gguf(file)
            except TokenizerUnavailableError as exc:
                raise TokenizerUnavailableError(
                    "a GGUF file's tokenizer runs on llama-cpp-python (pip install "
                    f"'rkllm-py[host]'), or without it: {exc}"
                ) from exc
        model = vocabulary.metadata("tokenizer.ggml.model")
        if model != "gpt2":
            vocabulary.close()
            raise _not_byte_level_bpe(file, model)

        def special(key: str) -> str | None:
            value = vocabulary.metadata(key)
            index = int(value) if value is not None else -1
            return vocabulary.text(index) if 0 <= index < vocabulary.vocab_size else None

        return cls(
            vocabulary,
            bos_token=special("tokenizer.ggml.bos_token_id"),
            eos_token=special("tokenizer.ggml.eos_token_id"),
        )

    @classmethod
    def _rebuilt_from_gguf(cls, file: Path) -> ChatTokenizer:
        """:meth:`from_gguf` without llama.cpp: the vocabulary rebuilt with ``tokenizers``."""
        fields = _GGUFFields(file)
        model = fields.string("tokenizer.ggml.model")
        if model != "gpt2":
            raise _not_byte_level_bpe(file, model)
        pre = fields.string("tokenizer.ggml.pre") if fields.has("tokenizer.ggml.pre") else "default"
        if pre not in _PRE_TOKENIZER_REGEXES:
            raise UnsupportedFeatureError(
                f"{file} uses the pre-tokenizer {pre!r}, which is not rebuilt from GGUF (known: "
                f"{', '.join(sorted(_PRE_TOKENIZER_REGEXES))}): install llama-cpp-python "
                "(pip install 'rkllm-py[host]') or use ChatTokenizer.from_pretrained_dir with "
                "the model's Hugging Face folder"
            )
        tokens = fields.strings("tokenizer.ggml.tokens")
        types = (
            fields.integers("tokenizer.ggml.token_type")
            if fields.has("tokenizer.ggml.token_type")
            else [1] * len(tokens)
        )
        merges = fields.strings("tokenizer.ggml.merges")
        tokenizer = _byte_level_bpe(tokens, types, merges, pre)

        def special(key: str) -> str | None:
            if not fields.has(key):
                return None
            index = fields.integer(key)
            return tokens[index] if 0 <= index < len(tokens) else None

        return cls(
            tokenizer,
            bos_token=special("tokenizer.ggml.bos_token_id"),
            eos_token=special("tokenizer.ggml.eos_token_id"),
        )

    # ---- use ----
    @property
    def vocab_size(self) -> int:
        """The number of ids, added tokens included."""
        return self._engine.vocab_size

    @property
    def bos_token_id(self) -> int | None:
        """The id of :attr:`bos_token`, or None."""
        return self.token_id(self.bos_token) if self.bos_token else None

    @property
    def eos_token_id(self) -> int | None:
        """The id of :attr:`eos_token`, or None."""
        return self.token_id(self.eos_token) if self.eos_token else None

    def encode(self, text: str, *, parse_special: bool = True) -> list[int]:
        """The token ids of ``text``; no BOS/EOS is added.

        With ``parse_special`` (the default, what a rendered chat prompt needs) the text of a
        control token such as ``<|im_end|>`` becomes its id; without it, such text is
        tokenized as ordinary characters (use this for untrusted user text).
        """
        return self._engine.encode(text, parse_special=parse_special)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        """The text of ``ids``; special tokens are kept unless ``skip_special_tokens``.

        Bytes that are not valid UTF-8 (a character cut between ids) become U+FFFD.

        Raises:
            InvalidParameterError: an id outside ``0 .. vocab_size - 1``.
        """
        ids = [int(i) for i in ids]
        size = self.vocab_size
        outside = [i for i in ids if not 0 <= i < size]
        if outside:
            raise InvalidParameterError(
                f"token ids {outside[:5]} are outside the vocabulary (0..{size - 1}): were they "
                "made by another model's tokenizer?"
            )
        return self._engine.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_id(self, piece: str) -> int | None:
        """The id of one vocabulary entry (``"<|im_end|>"``, ``"Ġthe"``), or None."""
        return self._engine.token_id(piece)

    def __repr__(self) -> str:
        return f"<ChatTokenizer vocab_size={self.vocab_size}>"


def _not_byte_level_bpe(file: Path, model: str | None) -> UnsupportedFeatureError:
    return UnsupportedFeatureError(
        f"{file} uses the {model!r} tokenizer; only byte-level BPE ('gpt2') vocabularies "
        "are read from GGUF: use ChatTokenizer.from_pretrained_dir with the model's "
        "Hugging Face folder"
    )


class _HuggingFaceEngine:
    """A ``tokenizers.Tokenizer`` as :class:`ChatTokenizer`'s engine."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._literal: Tokenizer | None = None
        self._literal_lock = threading.Lock()

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str, *, parse_special: bool) -> list[int]:
        tokenizer = self.tokenizer if parse_special else self._literal_tokenizer()
        return list(tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def token_id(self, piece: str) -> int | None:
        found = self.tokenizer.token_to_id(piece)
        return None if found is None else int(found)

    def _literal_tokenizer(self) -> Tokenizer:
        # a second tokenizer, so that switching special-token parsing never races another encode
        with self._literal_lock:
            if self._literal is None:
                literal = _tokenizers().Tokenizer.from_str(self.tokenizer.to_str())
                literal.encode_special_tokens = True
                self._literal = literal
            return self._literal


_LLAMA_LOGGER = "llama-cpp-python"  # the logger llama-cpp-python prints llama.cpp's log through
_LOAD_LOCK = threading.Lock()


@contextmanager
def _llama_log_errors_only() -> Iterator[None]:
    # a vocabulary load prints ~80 info lines; errors (why a file was refused) still show
    logger = logging.getLogger(_LLAMA_LOGGER)
    with _LOAD_LOCK:
        previous = logger.level
        logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            logger.setLevel(previous)


class LlamaVocabulary:
    """A GGUF file's vocabulary loaded by llama.cpp without its weights: llama.cpp's tokenizer.

    The one owner of a vocabulary-only ``llama_model`` (llama-cpp-python's low-level API):
    :meth:`close` frees it, and so does garbage collection; ``close()`` is idempotent. Encoding
    and decoding are llama.cpp's ``llama_tokenize`` and ``llama_token_to_piece``, safe from
    several threads. Usually reached through :meth:`ChatTokenizer.from_gguf`.

    Raises:
        TokenizerUnavailableError: llama-cpp-python is not installed.
        UnsupportedFeatureError: llama.cpp cannot read the file's vocabulary (its log on stderr
            says why, e.g. an unknown pre-tokenizer).

    Example:
        >>> from rkllm_core.chat.tokenizer import LlamaVocabulary
        >>> from rkllm_core.host.models import smollm2_path
        >>> vocabulary = LlamaVocabulary(smollm2_path())  # doctest: +SKIP
        >>> ids = vocabulary.encode("Hi<|im_end|>", parse_special=True)  # doctest: +SKIP
        >>> ids, vocabulary.text(ids[-1]), vocabulary.decode(ids, skip_special_tokens=True)
        ... # doctest: +SKIP
        ([26843, 2], '<|im_end|>', 'Hi')
        >>> vocabulary.metadata("tokenizer.ggml.pre"), vocabulary.vocab_size  # doctest: +SKIP
        ('smollm', 49152)
        >>> vocabulary.token_id("<|im_end|>")  # doctest: +SKIP
        2
        >>> vocabulary.close()  # doctest: +SKIP
    """

    def __init__(self, path: str | Path) -> None:
        try:
            import llama_cpp
        except ImportError as exc:
            raise TokenizerUnavailableError(
                "llama.cpp's tokenizer needs llama-cpp-python: pip install 'rkllm-py[host]'"
            ) from exc
        self.path = Path(path)
        self._llama: Any = llama_cpp
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        with _llama_log_errors_only():
            model = llama_cpp.llama_model_load_from_file(os.fsencode(self.path), params)
        if not model:
            raise UnsupportedFeatureError(
                f"llama.cpp could not read the vocabulary of {self.path} (its log above says "
                "why): use ChatTokenizer.from_pretrained_dir with the model's Hugging Face "
                "folder"
            )
        self._model = model
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        self._release = weakref.finalize(self, llama_cpp.llama_model_free, model)
        self._ids: dict[str, int] | None = None
        self._ids_lock = threading.Lock()

    def close(self) -> None:
        """Free the vocabulary; later calls raise :class:`TokenizerClosedError`."""
        self._release()

    def _live_vocab(self) -> Any:
        if not self._release.alive:
            raise TokenizerClosedError(f"the vocabulary of {self.path} was closed: load it again")
        return self._vocab

    @property
    def vocab_size(self) -> int:
        """The number of ids."""
        return int(self._llama.llama_vocab_n_tokens(self._live_vocab()))

    def metadata(self, key: str) -> str | None:
        """A GGUF metadata value as text (``"tokenizer.ggml.pre"``), or None without it."""
        self._live_vocab()
        size = 256
        while True:
            buffer = ctypes.create_string_buffer(size)
            n = int(self._llama.llama_model_meta_val_str(self._model, key.encode(), buffer, size))
            if n < 0:
                return None
            if n < size:
                return buffer.value.decode("utf-8")
            size = n + 1

    def text(self, token: int) -> str:
        """The vocabulary entry of ``token`` as stored (``"Ġthe"``, ``"<|im_end|>"``)."""
        vocab = self._live_vocab()
        if not 0 <= token < self.vocab_size:
            raise InvalidParameterError(f"token id {token} is outside the vocabulary")
        return bytes(self._llama.llama_vocab_get_text(vocab, token)).decode("utf-8")

    def encode(self, text: str, *, parse_special: bool) -> list[int]:
        """``llama_tokenize`` without BOS/EOS; ``parse_special`` turns control-token text into
        its id."""
        vocab = self._live_vocab()
        data = text.encode("utf-8")
        capacity = len(data) + 1  # a byte-level BPE token covers at least one byte
        while True:
            ids = (self._llama.llama_token * capacity)()
            n = int(
                self._llama.llama_tokenize(
                    vocab, data, len(data), ids, capacity, False, parse_special
                )
            )
            if n >= 0:
                return list(ids[:n])
            if n == -(2**31):
                raise InvalidParameterError("the text has more tokens than llama.cpp can count")
            capacity = -n

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool) -> str:
        """The pieces of ``ids`` joined (``llama_token_to_piece``), as UTF-8 text.

        Control tokens are written out unless ``skip_special_tokens``. The pieces are joined
        as they are: ``llama_detokenize`` would also remove spaces before punctuation for
        some vocabularies, which is not the text the ids stand for.
        """
        vocab = self._live_vocab()
        size = self.vocab_size
        buffer = ctypes.create_string_buffer(256)
        pieces = []
        for token in ids:
            if not 0 <= token < size:
                raise InvalidParameterError(f"token id {token} is outside the vocabulary")
            n = int(
                self._llama.llama_token_to_piece(
                    vocab, token, buffer, len(buffer), 0, not skip_special_tokens
                )
            )
            if n < 0:
                buffer = ctypes.create_string_buffer(-n)
                n = int(
                    self._llama.llama_token_to_piece(
                        vocab, token, buffer, len(buffer), 0, not skip_special_tokens
                    )
                )
            pieces.append(buffer.raw[:n])
        return b"".join(pieces).decode("utf-8", errors="replace")

    def token_id(self, piece: str) -> int | None:
        """The id of one vocabulary entry, or None (the first call indexes the vocabulary)."""
        with self._ids_lock:
            if self._ids is None:
                vocab, get_text = self._live_vocab(), self._llama.llama_vocab_get_text
                ids: dict[str, int] = {}
                for token in range(self.vocab_size):
                    ids.setdefault(bytes(get_text(vocab, token)).decode("utf-8"), token)
                self._ids = ids
        return self._ids.get(piece)

    def __repr__(self) -> str:
        state = "open" if self._release.alive else "closed"
        return f"<LlamaVocabulary {self.path.name} {state}>"


def _byte_level_bpe(
    tokens: Sequence[str], types: Sequence[int], merges: Sequence[str], pre: str
) -> Tokenizer:
    """A ``tokenizers`` BPE tokenizer equivalent to llama.cpp's for this vocabulary."""
    tk = _tokenizers()
    vocab: dict[str, int] = {}
    for index, token in enumerate(tokens):
        vocab.setdefault(token, index)
    pairs = []
    for merge in merges:
        # llama.cpp splits at the first space after the first character
        at = merge.find(" ", 1)
        if at < 0:
            raise InvalidParameterError(f"malformed merge {merge!r} in the GGUF vocabulary")
        pairs.append((merge[:at], merge[at + 1 :]))
    model = tk.models.BPE(
        vocab=vocab, merges=pairs, ignore_merges=pre in _WHOLE_WORD_FIRST, fuse_unk=False
    )
    tokenizer = tk.Tokenizer(model)
    tokenizer.pre_tokenizer = tk.pre_tokenizers.Sequence(
        [
            tk.pre_tokenizers.Split(tk.Regex(regex), behavior="isolated")
            for regex in _PRE_TOKENIZER_REGEXES[pre]
        ]
        + [tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tokenizer.decoder = tk.decoders.ByteLevel()
    # llama.cpp parses control and unknown tokens only when asked to (parse_special), and
    # user-defined tokens always: exactly tokenizers' special / non-special added tokens.
    special = [
        tk.AddedToken(tokens[i], special=True, normalized=False)
        for i, kind in enumerate(types)
        if kind in (_CONTROL, _UNKNOWN)
    ]
    user_defined = [
        tk.AddedToken(tokens[i], special=False, normalized=False)
        for i, kind in enumerate(types)
        if kind == _USER_DEFINED
    ]
    tokenizer.add_special_tokens(special)
    tokenizer.add_tokens(user_defined)
    return tokenizer  # type: ignore[no-any-return]
