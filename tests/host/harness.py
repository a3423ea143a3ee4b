"""Drive a runtime through the raw ctypes layer, recording every callback as plain data.

Everything a callback points at is copied inside the callback: the runtime frees hidden-state
and logits buffers when it returns.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rkllm_core.library import RuntimeLibrary, load_library
from rkllm_core.native import NativeModel

FAMILIES = ["1.1", "1.2.0", "1.2.1", "1.2.3", "1.3.0"]
MODELS = Path(__file__).resolve().parent.parent / "models"


@dataclass
class Event:
    state: int
    texts: list[bytes | None]
    token_ids: list[int]
    thread: int
    hidden: np.ndarray | None = None
    logits: np.ndarray | None = None
    perf: list[dict[str, float]] = field(default_factory=list)


@dataclass
class Run:
    code: int
    events: list[Event]

    @property
    def states(self) -> list[int]:
        return [e.state for e in self.events]

    def text(self, lane: int = 0) -> str:
        return b"".join(e.texts[lane] or b"" for e in self.events if e.state in (0, 1)).decode()

    @property
    def finish(self) -> Event:
        assert self.events and self.events[-1].state == 2, self.states
        return self.events[-1]

    @property
    def perf(self) -> dict[str, float]:
        return self.finish.perf[0]


class Session:
    """One model on one library, with a recording callback."""

    def __init__(self, family: str, model: str | Path = "assistant.scripted", **param: Any):
        self.lib: RuntimeLibrary = load_library("host", runtime_version=family)
        self.family = self.lib.family
        self.param = self.lib.create_default_param()
        path = model if isinstance(model, Path) else MODELS / model
        self.param.model_path = str(path).encode()
        self.param.max_context_len = 512
        for key, value in param.items():
            target = self.param.extend_param if hasattr(self.param.extend_param, key) and \
                not hasattr(self.param, key) else self.param
            setattr(target, key, value)
        self.n_batch = max(1, getattr(self.param.extend_param, "n_batch", 1))
        self.events: list[Event] = []
        self.reply: int | list[int] = 0  # what the callback returns (a list: one per call)
        self.on_event: Any = None
        self.model = NativeModel(self.lib, self.param, self._handle, **self._extra_callbacks())

    def _extra_callbacks(self) -> dict[str, Any]:
        return {}

    def _handle(self, result: Any, userdata: Any, state: int) -> int:
        results = ctypes.cast(result, ctypes.POINTER(self.family.struct("RKLLMResult")))
        texts, ids, perf = [], [], []
        hidden = logits = None
        for lane in range(self.n_batch):
            r = results[lane]
            texts.append(ctypes.string_at(r.text) if r.text else None)
            ids.append(r.token_id)
            hl = r.last_hidden_layer
            if hl.hidden_states and hl.num_tokens > 0:
                hidden = np.ctypeslib.as_array(hl.hidden_states,
                                               (hl.num_tokens, hl.embd_size)).copy()
            if hasattr(r, "logits") and r.logits.logits and r.logits.num_tokens > 0:
                lg = r.logits
                logits = np.ctypeslib.as_array(lg.logits, (lg.num_tokens, lg.vocab_size)).copy()
            if hasattr(r, "perf"):
                perf.append({k: getattr(r.perf, k) for k, _ in r.perf._fields_})
        event = Event(state, texts, ids, threading.get_ident(), hidden, logits, perf)
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)
        if isinstance(self.reply, list):
            return self.reply.pop(0) if self.reply else 0
        return self.reply

    def make_input(self, prompt: str | None = None, *, role: str = "user",
                   enable_thinking: bool = False, tokens: list[int] | None = None,
                   embed: np.ndarray | None = None) -> Any:
        inp = self.family.struct("RKLLMInput")()
        keep: list[Any] = []
        if hasattr(inp, "role"):
            inp.role = role.encode()
            inp.enable_thinking = enable_thinking
        if tokens is not None:
            arr = (ctypes.c_int32 * len(tokens))(*tokens)
            keep.append(arr)
            inp.input_type = 1
            inp.token_input.input_ids = arr
            inp.token_input.n_tokens = len(tokens)
        elif embed is not None:
            data = np.ascontiguousarray(embed, dtype=np.float32)
            keep.append(data)
            inp.input_type = 2
            inp.embed_input.embed = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            inp.embed_input.n_tokens = data.shape[0]
        else:
            inp.input_type = 0
            inp.prompt_input = (prompt or "").encode()
        inp._keep = keep  # type: ignore[attr-defined]
        return inp

    def make_infer(self, *, mode: int = 0, keep_history: int = 0, lora: str | None = None,
                   save_cache: str | None = None, max_new_tokens: int = 0,
                   sampling: dict[str, float] | None = None) -> Any:
        ip = self.family.struct("RKLLMInferParam")()
        ip.mode = mode
        keep: list[Any] = []
        if hasattr(ip, "keep_history"):
            ip.keep_history = keep_history
        if lora:
            lp = self.family.struct("RKLLMLoraParam")(lora.encode())
            keep.append(lp)
            ip.lora_params = ctypes.pointer(lp)
        if save_cache:
            cp = self.family.struct("RKLLMPromptCacheParam")(1, save_cache.encode())
            keep.append(cp)
            ip.prompt_cache_params = ctypes.pointer(cp)
        if max_new_tokens:
            ip.max_new_tokens = max_new_tokens
        if sampling is not None:
            sp = self.family.struct("RKLLMSamplingParam")(**sampling)
            keep.append(sp)
            ip.sampling_params = ctypes.pointer(sp)
        ip._keep = keep  # type: ignore[attr-defined]
        return ip

    def run(self, prompt: str | None = None, *, inputs: list[Any] | None = None,
            infer: Any = None, **kwargs: Any) -> Run:
        infer_keys = {"mode", "keep_history", "lora", "save_cache", "max_new_tokens", "sampling"}
        infer = infer or self.make_infer(**{k: v for k, v in kwargs.items() if k in infer_keys})
        input_kwargs = {k: v for k, v in kwargs.items() if k not in infer_keys}
        if inputs is None:
            inputs = [self.make_input(prompt, **input_kwargs)]
        array = (self.family.struct("RKLLMInput") * len(inputs))(*inputs)
        self.events = []
        code = self.lib.run(self.model.handle, array, ctypes.byref(infer), None)
        return Run(code, self.events)

    def clear_kv_cache(self) -> None:
        """Empty the KV cache, system prompt included."""
        assert self.lib.clear_kv_cache(self.model.handle, False) == 0

    def kv_cache_size(self) -> list[int]:
        sizes = (ctypes.c_int * self.n_batch)()
        assert self.lib.get_kv_cache_size(self.model.handle, sizes) == 0
        return list(sizes)

    def close(self) -> None:
        self.model.close()
