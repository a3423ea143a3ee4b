"""What the KV cache of a model holds, and how a turn is planned against it.

Every :class:`~rkllm_core.chat.ChatEngine` over one model shares one ``_CacheState`` (the
conversation, token ids or text the cache holds, and how the runtime was set up for it). A
``_Plan`` is one turn worked out against that state: what to send, the runtime setup to carry
out first (plain :mod:`rkllm_core.backend` data the model runs on its worker), how much of the
cache it reuses, and how to record what the cache holds once the run ends. ``_plan_native``
plans the native mode, ``_plan_rendered`` the tokens and raw modes.

Example:
    >>> from rkllm_core.chat.plans import _state_of
    >>> class Model:
    ...     pass
    >>> model = Model()
    >>> _state_of(model) is _state_of(model), _state_of(model).valid
    (True, False)
"""

from __future__ import annotations

import json
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rkllm_core.backend import ClearKVCache, RunSetup, SetChatTemplate, SetFunctionTools
from rkllm_core.chat.conversation import (
    _tool_results_text,
    _trailing_inputs,
    _transcript,
    hermes_tool_instructions,
)
from rkllm_core.chat.messages import ChatMessage, ToolSpec
from rkllm_core.chat.results import Mode

TOOL_RESPONSE = "tool_response"

# ---------------------------------------------------------------------------------------------
# What the KV cache of one model holds (shared by every ChatEngine over that model)


@dataclass
class _CacheState:
    lock: threading.Lock = field(default_factory=threading.Lock)
    epoch: int = 0            # bumped by every plan; a finishing run records only its own epoch
    valid: bool = False
    key: tuple[Any, ...] | None = None   # how the cache was set up (mode, system, tools)
    turns: tuple[ChatMessage, ...] = ()  # native: non-system messages in the cache
    tokens: list[int] = field(default_factory=list)  # tokens mode: ids in the cache
    text: str = ""            # raw mode: text in the cache
    size: int | None = None   # kv_cache_size after the last recorded run (1.2.1+)
    setup: tuple[Any, ...] | None = None  # what set_function_tools / set_chat_template last got


_states: weakref.WeakKeyDictionary[Any, _CacheState] = weakref.WeakKeyDictionary()
_states_lock = threading.Lock()


def _state_of(model: Any) -> _CacheState:
    with _states_lock:
        state = _states.get(model)
        if state is None:
            state = _states[model] = _CacheState()
        return state


# ---------------------------------------------------------------------------------------------
# Plans


@dataclass
class _Plan:
    run_kwargs: dict[str, Any]
    setup: list[RunSetup]  # done by the model on its worker right before the run
    epoch: int
    reused: bool
    reused_tokens: int
    record: Callable[[_CacheState, list[int], ChatMessage | None, str], None]
    parser_kwargs: dict[str, Any]
    sent_tokens: int | None = None  # tokens mode: how many ids this run sends


def _forget(state: _CacheState, generated: list[int], reply: ChatMessage | None,
            raw: str) -> None:
    state.valid = False


def _plan_native(state: _CacheState, system: str | None, rest: list[ChatMessage],
                 tools: list[ToolSpec], enable_thinking: bool, base: dict[str, Any], *,
                 capabilities: Any, stateful: bool) -> _Plan:
    """Native mode: the new user or tool turn as text with its role, the runtime's template
    applied; a history the cache does not hold is replayed as a transcript in that turn."""
    history, inputs = _trailing_inputs(rest)
    can_set_tools = capabilities.function_tools
    tools_json = json.dumps([t.to_openai() for t in tools], ensure_ascii=False)
    key = ("native", system, tools_json)
    reused = (state.valid and state.key == key and len(state.turns) == len(history)
              and all(a.same_turn(b) for a, b in zip(state.turns, history, strict=True)))
    steps: list[RunSetup] = []
    fold_system = ""
    if not reused:
        setup = (system, tools_json)
        if can_set_tools and (system is not None or tools or state.setup is not None):
            if state.setup != setup:
                steps.append(SetFunctionTools(system or "", tools_json, TOOL_RESPONSE))
                state.setup = setup
        elif system is not None or tools:
            # no runtime call for a system prompt: write it (and the tools) into the turn
            parts = [system or ""] + ([hermes_tool_instructions(tools)] if tools else [])
            fold_system = "\n\n".join(p for p in parts if p)
        if stateful:
            steps.append(ClearKVCache())
    if reused:
        role = inputs[0].role
        text = _tool_results_text(inputs) if role == "tool" else inputs[0].content
    elif history or fold_system:
        role = "user"
        parts = [fold_system] if fold_system else []
        if history:
            parts.append("Earlier in this conversation:\n" + _transcript(history))
        if inputs[0].role == "tool":
            parts.append("Tool results:\n" + _tool_results_text(inputs))
        else:
            parts.append(inputs[0].content if not history
                         else "Now the user says: " + inputs[0].content)
        text = "\n\n".join(parts)
    else:
        role = inputs[0].role
        text = _tool_results_text(inputs) if role == "tool" else inputs[0].content
    if role == "tool" and not capabilities.function_tools:
        role, text = "user", "Tool results:\n" + text
    images = inputs[0].images if inputs[0].role == "user" else ()
    run_kwargs = dict(base, prompt=text, role=role, enable_thinking=enable_thinking)
    if images:
        run_kwargs["image"] = _image_input(images)
    reused_tokens = (state.size or 0) if reused else 0
    turns_before = tuple(rest)

    def record(state: _CacheState, _ids: list[int], reply: ChatMessage | None,
               _raw: str) -> None:
        if reply is None:
            state.valid = False
            return
        state.key = key
        state.turns = (*turns_before, reply)
        state.valid = True

    return _Plan(run_kwargs, steps, 0, reused, reused_tokens, record, {})


def _image_input(images: Sequence[Any]) -> Any:
    """A user turn's images as one :class:`~rkllm_core.results.ImageInput` (their embeddings
    stacked)."""
    import numpy as np

    from rkllm_core.results import ImageInput

    arrays = [np.asarray(i, dtype=np.float32) for i in images]
    return ImageInput(np.concatenate(arrays, axis=0), n_images=len(arrays),
                      n_image_tokens=arrays[0].shape[0])


def _plan_rendered(state: _CacheState, text: str, mode: Mode, tokenizer: Any,
                   base: dict[str, Any], *, capabilities: Any, stateful: bool) -> _Plan:
    """Tokens and raw modes: ``text`` is the whole conversation rendered with the chat template;
    send what the cache does not hold yet (tokens: from the longest common prefix of ids)."""
    setup: list[RunSetup] = []
    key: tuple[Any, ...] = (mode,)
    same_setup = state.valid and state.key == key
    if mode == "tokens":
        assert tokenizer is not None
        cached = state.tokens if same_setup else []
        if cached and state.text and text.startswith(state.text):
            # the conversation extends what the cache holds: keep the model's own reply
            # tokens (re-tokenizing its text may split it differently) and add the rest
            ids = cached + list(tokenizer.encode(text[len(state.text):], parse_special=True))
        else:
            ids = list(tokenizer.encode(text, parse_special=True))
        common = 0
        for a, b in zip(cached, ids, strict=False):
            if a != b:
                break
            common += 1
        if common == len(ids):  # nothing new: recompute the last token for its logits
            common -= 1
        can_cut = capabilities.kv_cache_size
        if common < len(cached) and not (can_cut and common > 0):
            common = 0
        if common == 0 and stateful:
            setup.append(ClearKVCache())
        elif 0 < common < len(cached):
            setup.append(ClearKVCache(start=common, end=len(cached)))
        run_kwargs = dict(base, tokens=ids[common:])
        reused, reused_tokens = common > 0, common
        sent: int | None = len(ids) - common

        def record(state: _CacheState, generated: list[int], reply: ChatMessage | None,
                   raw: str) -> None:
            state.key = key
            state.tokens = ids + [t for t in generated if t >= 0]
            state.text = text + raw
            state.valid = True
    else:
        cached_text = state.text if same_setup else ""
        if cached_text and text.startswith(cached_text) and len(text) > len(cached_text):
            new_text, reused, reused_tokens = text[len(cached_text):], True, state.size or 0
        else:
            new_text, reused, reused_tokens = text, False, 0
            if state.setup != ("raw",) and capabilities.chat_template:
                setup.append(SetChatTemplate("", "", ""))
                state.setup = ("raw",)
            if stateful:
                setup.append(ClearKVCache())
        # thinking is in the rendered text; the runtime's flag is off after
        # rkllm_set_chat_template anyway (and absent before 1.2.1)
        run_kwargs = dict(base, prompt=new_text, role="user")
        sent = None

        def record(state: _CacheState, generated: list[int], reply: ChatMessage | None,
                   raw: str) -> None:
            if reply is None:
                state.valid = False
                return
            state.key = key
            state.text = text + raw
            state.valid = True
    return _Plan(run_kwargs, setup, 0, reused, reused_tokens, record, {}, sent)
