"""Validated parameters for :class:`rkllm_core.RKLLM`: pydantic models mirroring ``RKLLMParam``.

:class:`ModelParams` holds what ``rkllm_init`` takes (sampling defaults included),
:class:`ExtendParams` the board options of ``RKLLMExtendParam``, and :class:`SamplingParams`
a per-run override (native on runtime 1.3.0). Defaults are Rockchip's documented ones. Ranges
are checked here, before anything reaches C; a field the loaded runtime family lacks is refused
by :meth:`ModelParams.fill_native` with the release that added it.

Example:
    >>> from rkllm_core.params import ExtendParams, SamplingParams
    >>> SamplingParams().top_k, SamplingParams(temperature=0.2).temperature
    (40, 0.2)
    >>> ExtendParams(enabled_cpus_mask=[4, 5, 6, 7]).enabled_cpus_mask == 0xF0
    True
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rkllm_core.errors import UnsupportedFeatureError

#: The first release whose ``RKLLMParam`` / ``RKLLMExtendParam`` has each field.
FIELD_ADDED_IN: dict[str, str] = {
    "n_keep": "1.2.0",
    "embed_flash": "1.2.0",
    "enabled_cpus_num": "1.2.0",
    "enabled_cpus_mask": "1.2.0",
    "n_batch": "1.2.1",
    "use_cross_attn": "1.2.1",
    "ignore_eos_token": "1.3.0",
}

SAMPLING_FIELDS = (
    "top_k", "top_p", "temperature", "repeat_penalty", "frequency_penalty", "presence_penalty",
    "mirostat", "mirostat_tau", "mirostat_eta",
)


class _Sampling(BaseModel):
    """The sampling block shared by ``RKLLMParam`` and 1.3.0's ``RKLLMSamplingParam``."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    top_k: int = Field(default=40, ge=0,
        description="Sample from the k most likely tokens (1 = greedy).")
    top_p: float = Field(
        default=0.9, ge=0.0, le=1.0,
        description="Nucleus sampling: keep the smallest token set whose "
        "probabilities add up to top_p (0-1).")
    temperature: float = Field(
        default=0.8, ge=0.0, description="Softmax temperature; 0 picks the most likely token.")
    repeat_penalty: float = Field(
        default=1.1, gt=0.0, description="Penalty for repeating recent tokens (1.0 = none).")
    frequency_penalty: float = Field(
        default=0.0, ge=-2.0, le=2.0, description="Penalty growing with how often a token already "
        "appeared (-2.0 to 2.0).")
    presence_penalty: float = Field(
        default=0.0, ge=-2.0, le=2.0, description="Penalty for any token that already appeared "
        "(-2.0 to 2.0).")
    mirostat: Literal[0, 1, 2] = Field(
        default=0, description="Mirostat sampling: 0 off, 1 Mirostat, 2 Mirostat 2.0.")
    mirostat_tau: float = Field(default=5.0, gt=0.0, description="Mirostat target entropy (tau).")
    mirostat_eta: float = Field(default=0.1, gt=0.0, description="Mirostat learning rate (eta).")


class SamplingParams(_Sampling):
    """Sampling settings for one run, overriding the model's (native on runtime 1.3.0).

    On older runtimes sampling is fixed at load time; passing a SamplingParams that differs from
    the model's raises :class:`~rkllm_core.errors.UnsupportedFeatureError` naming the fields.

    Example:
        >>> from rkllm_core.params import SamplingParams
        >>> greedy = SamplingParams(top_k=1, temperature=0.0)
        >>> greedy.top_k, greedy.top_p
        (1, 0.9)
    """

    def fill_native(self, sampling: Any) -> None:
        """Copy the values into a 1.3.0 ``RKLLMSamplingParam`` struct.

        Example:
            >>> from rkllm_core.abi.v1_3_0 import RKLLMSamplingParam
            >>> native = RKLLMSamplingParam()
            >>> SamplingParams(top_k=1).fill_native(native)
            >>> native.top_k
            1
        """
        for name in SAMPLING_FIELDS:
            setattr(sampling, name, getattr(self, name))

    def differences(self, other: _Sampling) -> list[str]:
        """Names of the fields whose value differs from ``other``'s.

        Example:
            >>> SamplingParams(top_k=1).differences(SamplingParams())
            ['top_k']
        """
        return [name for name in SAMPLING_FIELDS if getattr(self, name) != getattr(other, name)]


class ExtendParams(BaseModel):
    """Board options (``RKLLMExtendParam``): NPU domain, CPU selection, batching, cross attention.

    ``enabled_cpus_mask`` takes an int bitmask or a list of CPU indices 0-7 (``[4, 5, 6, 7]`` is
    0xF0, the RK3588's big cores); it is checked for form only, never against this machine (the
    host runtime records board settings without applying them). ``None`` keeps the runtime's
    default.

    Example:
        >>> from rkllm_core.params import ExtendParams
        >>> ext = ExtendParams(enabled_cpus_mask=[4, 5, 6, 7], base_domain_id=1)
        >>> hex(ext.enabled_cpus_mask), ext.enabled_cpus_num
        ('0xf0', 4)
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    base_domain_id: int = Field(
        default=0, ge=0,
        description="NPU domain the model starts from; give each concurrently loaded "
        "model its own id to avoid 'failed to malloc npu memory'.")
    embed_flash: bool | None = Field(
        default=None, description="Keep the vocabulary embedding table in flash instead of RAM "
        "(runtime 1.2.0+); None keeps the runtime default.")
    enabled_cpus_num: int | None = Field(
        default=None, ge=1, le=8, description="How many CPU cores the runtime uses, 1-8 (1.2.0+). "
        "Defaults to the number of cores in enabled_cpus_mask, else the runtime's default (4).")
    # list[int] only as input: the validator turns it into the int mask
    enabled_cpus_mask: int | list[int] | None = Field(
        default=None,
        description="CPU cores to use (1.2.0+): an int bitmask (CPUn = 1 << n) or a list of "
        "core indices 0-7.")
    n_batch: int = Field(default=1, ge=1, le=8,
        description="Sequences per run, 1-8 (runtime 1.2.1+).")
    use_cross_attn: bool = Field(
        default=False, description="Enable cross attention for models converted with it (1.2.1+).")

    @field_validator("enabled_cpus_mask", mode="before")
    @classmethod
    def _cpu_list_to_mask(cls, value: Any) -> Any:
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            if value is not None and not 0 < value <= 0xFF:
                raise ValueError(
                    f"enabled_cpus_mask {value:#x} is not a mask of CPU0-CPU7: use a value from "
                    "0x01 to 0xFF, e.g. 0xF0 for cores 4-7")
            return value
        if isinstance(value, (list, tuple, set, frozenset)):
            cores = list(value)
            if not cores:
                raise ValueError("enabled_cpus_mask must name at least one CPU core")
            mask = 0
            for core in cores:
                if isinstance(core, bool) or not isinstance(core, int) or not 0 <= core <= 7:
                    raise ValueError(
                        f"enabled_cpus_mask: {core!r} is not a CPU index; use integers 0-7")
                if mask & (1 << core):
                    raise ValueError(f"enabled_cpus_mask lists CPU {core} twice")
                mask |= 1 << core
            return mask
        raise ValueError("enabled_cpus_mask must be an int bitmask or a list of CPU indices 0-7, "
                         "e.g. [4, 5, 6, 7]")

    @model_validator(mode="after")
    def _cpus_num_from_mask(self) -> ExtendParams:
        mask = self.enabled_cpus_mask if isinstance(self.enabled_cpus_mask, int) else None
        if mask is not None and self.enabled_cpus_num is None:
            object.__setattr__(self, "enabled_cpus_num", bin(mask).count("1"))
        elif mask is not None and self.enabled_cpus_num is not None \
                and self.enabled_cpus_num > bin(mask).count("1"):
            raise ValueError(
                f"enabled_cpus_num {self.enabled_cpus_num} is more than the "
                f"{bin(mask).count('1')} cores in enabled_cpus_mask {mask:#x}")
        return self

    def fill_native(self, extend: Any, release: str) -> None:
        """Write into an ``RKLLMExtendParam``; a field its family lacks raises if it was set.

        Example:
            >>> from rkllm_core.abi import v1_1, v1_3_0
            >>> native = v1_3_0.RKLLMExtendParam()
            >>> ExtendParams(enabled_cpus_mask=[4, 5]).fill_native(native, "1.3.0")
            >>> native.enabled_cpus_mask, native.enabled_cpus_num
            (48, 2)
            >>> ExtendParams(n_batch=2).fill_native(v1_1.RKLLMExtendParam(), "1.1.4")
            Traceback (most recent call last):
            ...
            rkllm_core.errors.UnsupportedFeatureError: ExtendParams.n_batch needs runtime 1.2.1 ...
        """
        defaults = ExtendParams()
        for name in ("base_domain_id", "embed_flash", "enabled_cpus_num", "enabled_cpus_mask",
                     "n_batch", "use_cross_attn"):
            value = getattr(self, name)
            if value is None:
                continue
            if not hasattr(extend, name):
                if value != getattr(defaults, name):
                    raise UnsupportedFeatureError(
                        f"ExtendParams.{name} needs runtime {FIELD_ADDED_IN[name]} or newer; this "
                        f"library is runtime {release}. Leave it unset on this runtime.")
                continue
            setattr(extend, name, int(value))


class ModelParams(_Sampling):
    """What ``rkllm_init`` takes (``RKLLMParam``), validated.

    Sampling fields are the model's defaults for every run. Fields newer than the loaded
    runtime must keep their defaults: ``n_keep`` (1.2.0), ``ignore_eos_token`` (1.3.0);
    ``img_start``/``img_end``/``img_content`` exist only before 1.3.0 (1.3.0 takes image tags
    with each image).

    Example:
        >>> import tempfile, pathlib
        >>> from rkllm_core.params import ModelParams
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.rkllm"
        >>> _ = path.write_bytes(b"x")
        >>> p = ModelParams(model_path=path, max_context_len=1024, temperature=0.3)
        >>> p.max_context_len, p.top_k, p.temperature
        (1024, 40, 0.3)
        >>> ModelParams(model_path=path, max_context_len=256, n_keep=300)
        Traceback (most recent call last):
        ...
        pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelParams
        ...
    """

    model_path: Path = Field(
        description="The model file: a .rkllm model (on a board), or a .gguf / scripted model "
        "for the host runtime. Must exist.")
    max_context_len: int = Field(
        default=4096, gt=0,
        description="Context window in tokens (prompt + history + reply); must not "
        "exceed the limit the model was converted with.")
    max_new_tokens: int = Field(
        default=2048, ge=-1,
        description="Most tokens one reply may have; -1 leaves it to the runtime.")
    n_keep: int = Field(
        default=-1, ge=-1,
        description="KV entries kept at the start when the context shifts (1.2.0+); "
        "-1 keeps the runtime's choice. At least the system prompt's length for chat.")
    skip_special_token: bool = Field(
        default=True, description="Do not output special tokens such as EOS.")
    ignore_eos_token: bool = Field(
        default=False, description="Keep generating past EOS (runtime 1.3.0+).")
    img_start: str = Field(
        default="",
        description="Text before an image's tokens, e.g. '<|vision_start|>' (before 1.3.0; "
        "1.3.0 takes it per image).")
    img_end: str = Field(default="", description="Text after an image's tokens (before 1.3.0).")
    img_content: str = Field(
        default="", description="The image placeholder token, e.g. '<|image_pad|>' (before 1.3.0).")

    @field_validator("model_path")
    @classmethod
    def _model_exists(cls, value: Path) -> Path:
        value = value.expanduser()
        if not value.is_file():
            raise ValueError(
                f"model file {value} does not exist (or is not a file): check the path; models "
                "are .rkllm files converted with rkllm-toolkit (the host runtime also takes .gguf "
                "and scripted models)")
        return value

    @model_validator(mode="after")
    def _n_keep_fits(self) -> ModelParams:
        if self.n_keep >= self.max_context_len:
            raise ValueError(
                f"n_keep ({self.n_keep}) must be smaller than max_context_len "
                f"({self.max_context_len}): it is how many tokens stay when the context shifts")
        return self

    @property
    def sampling(self) -> SamplingParams:
        """The model's sampling settings as a :class:`SamplingParams`.

        Example:
            >>> from rkllm_core.params import ModelParams
            >>> ModelParams.model_construct(top_k=7).sampling.top_k
            7
        """
        return SamplingParams(**{name: getattr(self, name) for name in SAMPLING_FIELDS})

    def fill_native(self, param: Any, release: str, extend: ExtendParams | None = None) -> None:
        """Fill a ctypes ``RKLLMParam`` of the loaded family in place.

        Start from ``rkllm_createDefaultParam()`` so fields this class does not know keep the
        runtime's values. Raises UnsupportedFeatureError for a field the family lacks when its
        value is not the default.

        Example:
            >>> from rkllm_core.abi import v1_1
            >>> p = ModelParams.model_construct(model_path="m.rkllm", n_keep=16)
            >>> p.fill_native(v1_1.RKLLMParam(), "1.1.4")
            Traceback (most recent call last):
            ...
            rkllm_core.errors.UnsupportedFeatureError: ModelParams.n_keep needs runtime 1.2.0 ...
        """
        defaults = {name: info.default for name, info in type(self).model_fields.items()}
        param.model_path = str(self.model_path).encode()
        for name in ("max_context_len", "max_new_tokens", *SAMPLING_FIELDS, "skip_special_token",
                     "n_keep", "ignore_eos_token"):
            value = getattr(self, name)
            if hasattr(param, name):
                setattr(param, name, value)
            elif value != defaults[name]:
                raise UnsupportedFeatureError(
                    f"ModelParams.{name} needs runtime {FIELD_ADDED_IN[name]} or newer; this "
                    f"library is runtime {release}. Leave it at its default ({defaults[name]!r}).")
        for name in ("img_start", "img_end", "img_content"):
            value = getattr(self, name)
            if hasattr(param, name):
                # "" rather than NULL for text-only models, as Rockchip's server does
                setattr(param, name, value.encode())
            elif value:
                raise UnsupportedFeatureError(
                    f"ModelParams.{name} exists only before runtime 1.3.0; runtime {release} takes "
                    "image tags with each image: pass ImageInput(start=..., end=..., content=...)")
        param.is_async = False  # runs are synchronous rkllm_run calls on our worker thread
        if extend is not None:
            extend.fill_native(param.extend_param, release)

