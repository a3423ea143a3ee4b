"""Local tokenization for "tokens mode": turn a rendered prompt into the ids the model expects.

:class:`ChatTokenizer` wraps a Hugging Face ``tokenizers`` tokenizer, built from a
``tokenizer.json``, a Hugging Face folder, or the vocabulary stored in a GGUF file. Encoding
never adds BOS/EOS: the chat templates write the special tokens they need, and special-token
text in the prompt (``<|im_start|>``) becomes its single id.

``tokenizers`` is an optional dependency (``pip install 'rkllm-py[tokens]'``); it is imported
only when a tokenizer is built.

Example:
    >>> from rkllm_core.chat.tokenizer import ChatTokenizer
    >>> from rkllm_core.host.models import smollm2_path
    >>> tokenizer = ChatTokenizer.from_gguf(smollm2_path())  # doctest: +SKIP
    >>> tokenizer.encode("<|im_start|>user\\nHi<|im_end|>")  # doctest: +SKIP
    [1, 4093, 198, 17258, 2]
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rkllm_core.chat.templates import hf_special_tokens
from rkllm_core.errors import InvalidParameterError, RKLLMError, UnsupportedFeatureError

if TYPE_CHECKING:
    from tokenizers import Tokenizer


class TokenizerUnavailableError(RKLLMError, ImportError):
    """A package that local tokenization needs (``tokenizers``, or ``gguf``) is not installed."""


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


class ChatTokenizer:
    """Encodes rendered prompts to token ids and decodes ids back, on the CPU, without the model.

    Build one with :meth:`from_gguf`, :meth:`from_pretrained_dir` or :meth:`from_file`.
    :meth:`encode` adds no BOS/EOS; special-token text is parsed into its id unless
    ``parse_special=False``.

    Args:
        tokenizer: a ``tokenizers.Tokenizer``.
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
        self, tokenizer: Tokenizer, *, bos_token: str | None = None, eos_token: str | None = None
    ) -> None:
        self.tokenizer = tokenizer
        self.bos_token = bos_token or None
        self.eos_token = eos_token or None
        self._literal: Tokenizer | None = None
        self._literal_lock = threading.Lock()

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
        """A byte-level BPE tokenizer rebuilt from a GGUF file's vocabulary, matching llama.cpp.

        Reads ``tokenizer.ggml.tokens``, ``merges`` and ``token_type`` (control, user-defined and
        unknown tokens become added tokens) and picks llama.cpp's pre-tokenizer regexes from
        ``tokenizer.ggml.pre``. Only ``tokenizer.ggml.model == "gpt2"`` (byte-level BPE: SmolLM,
        Qwen, Llama 3, DeepSeek-R1 distills) is supported.

        Raises:
            UnsupportedFeatureError: another tokenizer model (SentencePiece ``llama``, ...) or a
                pre-tokenizer this module does not know; use :meth:`from_pretrained_dir`.
            TokenizerUnavailableError: ``tokenizers`` or ``gguf`` is not installed.

        Example:
            >>> from rkllm_core.chat.tokenizer import ChatTokenizer
            >>> from rkllm_core.host.models import smollm2_path
            >>> ChatTokenizer.from_gguf(smollm2_path())  # doctest: +SKIP
            <ChatTokenizer vocab_size=49152>
        """
        file = Path(path)
        if not file.is_file():
            raise InvalidParameterError(f"{file} does not exist: expected a GGUF file")
        fields = _GGUFFields(file)
        model = fields.string("tokenizer.ggml.model")
        if model != "gpt2":
            raise UnsupportedFeatureError(
                f"{file} uses the {model!r} tokenizer; only byte-level BPE ('gpt2') vocabularies "
                "are rebuilt from GGUF: use ChatTokenizer.from_pretrained_dir with the model's "
                "Hugging Face folder"
            )
        pre = fields.string("tokenizer.ggml.pre") if fields.has("tokenizer.ggml.pre") else "default"
        if pre not in _PRE_TOKENIZER_REGEXES:
            raise UnsupportedFeatureError(
                f"{file} uses the pre-tokenizer {pre!r}, which is not rebuilt from GGUF (known: "
                f"{', '.join(sorted(_PRE_TOKENIZER_REGEXES))}): use "
                "ChatTokenizer.from_pretrained_dir with the model's Hugging Face folder"
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
        return int(self.tokenizer.get_vocab_size(with_added_tokens=True))

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
        tokenizer = self.tokenizer if parse_special else self._literal_tokenizer()
        return list(tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        """The text of ``ids``; special tokens are kept unless ``skip_special_tokens``."""
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def token_id(self, piece: str) -> int | None:
        """The id of one vocabulary entry (``"<|im_end|>"``, ``"Ġthe"``), or None."""
        found = self.tokenizer.token_to_id(piece)
        return None if found is None else int(found)

    def __repr__(self) -> str:
        return f"<ChatTokenizer vocab_size={self.vocab_size}>"

    def _literal_tokenizer(self) -> Tokenizer:
        # a second tokenizer, so that switching special-token parsing never races another encode
        with self._literal_lock:
            if self._literal is None:
                literal = _tokenizers().Tokenizer.from_str(self.tokenizer.to_str())
                literal.encode_special_tokens = True
                self._literal = literal
            return self._literal


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
