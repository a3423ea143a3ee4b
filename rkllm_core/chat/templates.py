"""Chat templates: render a conversation into the prompt text a model family was trained on.

:func:`render_chat` renders any Hugging Face style Jinja chat template the way ``transformers``
does (sandboxed, ``trim_blocks``/``lstrip_blocks``, ``raise_exception``, ``tojson``,
``strftime_now``). :data:`PRESETS` holds our own templates for the families RKLLM runs, each
with its special tokens, stop strings, tool-call format and reasoning markers;
:func:`preset_for` picks one from a model file name, and :func:`load_hf_template` reads a
model's own template from its Hugging Face folder.

Messages are OpenAI-style dicts (``role``, ``content``, ``tool_calls``, ``tool_call_id``); tools
are OpenAI-style ``{"type": "function", "function": {...}}`` dicts.

Example:
    >>> from rkllm_core.chat.templates import preset_for
    >>> preset = preset_for("Qwen2.5-1.5B-Instruct_W8A8_RK3588.rkllm")
    >>> print(preset.render([{"role": "user", "content": "Hi"}]))
    <|im_start|>system
    You are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>
    <|im_start|>user
    Hi<|im_end|>
    <|im_start|>assistant
    <BLANKLINE>
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, NoReturn, TypedDict

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

from rkllm_core.errors import InvalidParameterError

#: How a family writes tool calls (what the output parser must look for):
#: ``hermes`` ``<tool_call>{"name", "arguments"}</tool_call>``; ``llama3_json`` a bare
#: ``{"name", "parameters"}`` object; ``internlm2`` ``<|action_start|><|plugin|>`` +
#: ``{"name", "parameters"}`` + ``<|action_end|>``; ``deepseek_r1`` DeepSeek's tool-call-begin
#: token, ``function``, the tool-sep token, the name and a fenced JSON block of arguments.
ToolCallFormat = Literal["hermes", "llama3_json", "internlm2", "deepseek_r1"]


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def _raise_exception(message: str) -> NoReturn:
    raise InvalidParameterError(f"the chat template refused the conversation: {message}")


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # transformers' filter: plain json.dumps, unlike Jinja's HTML-escaping built-in
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(date_format: str) -> str:
    return datetime.now().strftime(date_format)


class _GenerationBlock(Extension):
    """``{% generation %}...{% endgeneration %}``: transformers marks assistant spans with it;
    rendering only needs the body."""

    tags = {"generation"}  # noqa: RUF012 - Jinja's Extension API declares tags as a class set

    def parse(self, parser: Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        call = self.call_method("_render_body")
        return nodes.CallBlock(call, [], [], body).set_lineno(lineno)

    def _render_body(self, caller: Callable[[], str]) -> str:
        return caller()


@functools.lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationBlock, "jinja2.ext.loopcontrols"],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@functools.lru_cache(maxsize=32)
def _compile(template: str) -> jinja2.Template:
    try:
        return _environment().from_string(template)
    except jinja2.TemplateSyntaxError as exc:
        raise InvalidParameterError(
            f"the chat template does not parse (line {exc.lineno}): {exc.message}"
        ) from exc


def _flatten_content(content: Any) -> Any:
    """``None`` becomes ``""``; a list of text parts becomes one string; anything else stays."""
    if content is None:
        return ""
    if isinstance(content, list) and all(
        isinstance(part, Mapping) and part.get("type") == "text" for part in content
    ):
        return "".join(str(part.get("text", "")) for part in content)
    return content


def _prepare(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    prepared = []
    for message in messages:
        if "role" not in message:
            raise InvalidParameterError(f"a chat message needs a 'role': {dict(message)!r}")
        copy = dict(message)
        copy["content"] = _flatten_content(copy.get("content"))
        prepared.append(copy)
    return prepared


def render_chat(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    enable_thinking: bool | None = None,
    bos_token: str = "",
    eos_token: str = "",
    **extra: Any,
) -> str:
    """Render a Hugging Face style Jinja chat template for ``messages``.

    The environment matches ``transformers``' ``apply_chat_template``: an immutable sandbox with
    ``trim_blocks`` and ``lstrip_blocks``, the ``loopcontrols`` extension, ``{% generation %}``
    blocks, ``raise_exception``, ``strftime_now`` and a ``tojson`` that keeps non-ASCII text and
    takes ``indent``. A ``content`` of ``None`` is rendered as ``""`` and a list of text parts as
    one string, so templates can concatenate it.

    Args:
        template: the Jinja source (a preset's ``template`` or one from :func:`load_hf_template`).
        messages: OpenAI-style message dicts.
        tools: OpenAI-style tool dicts, or None when no tools are bound.
        add_generation_prompt: end with the opening of an assistant turn.
        enable_thinking: passed to templates that switch reasoning (Qwen3); left undefined when
            None, so a template's own default applies.
        bos_token, eos_token: the model's special tokens, for templates that write them.
        **extra: further template variables (for example ``date_string`` for Llama 3).

    Raises:
        InvalidParameterError: the template does not parse, fails while rendering (an unsafe
            or undefined operation), or refuses the conversation through ``raise_exception``.

    Example:
        >>> from rkllm_core.chat.templates import render_chat
        >>> template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\\n{% endfor %}"
        >>> print(render_chat(template, [{"role": "user", "content": "Grüß dich"}]), end="")
        [user] Grüß dich
    """
    variables: dict[str, Any] = dict(extra)
    variables.update(
        messages=_prepare(messages),
        tools=[dict(tool) for tool in tools] if tools is not None else None,
        add_generation_prompt=add_generation_prompt,
        bos_token=bos_token,
        eos_token=eos_token,
    )
    if enable_thinking is not None:
        variables["enable_thinking"] = enable_thinking
    compiled = _compile(template)
    try:
        return compiled.render(**variables)
    except jinja2.TemplateError as exc:
        raise InvalidParameterError(f"the chat template failed to render: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatPreset:
    """A model family's chat format: its template, special tokens, stops, tools and reasoning.

    Attributes:
        name: the key in :data:`PRESETS`.
        template: Jinja source, rendered by :func:`render_chat`.
        bos_token, eos_token: the family's begin/end-of-sequence tokens (passed to the template;
            the templates that start with BOS write it themselves).
        stop: strings that end the assistant's turn (end-of-turn markers).
        tool_call_format: how the family writes tool calls; see :data:`ToolCallFormat`.
        supports_thinking: the family reasons inside ``think_start``/``think_end``.
        think_start, think_end: the reasoning markers.
        prompt_ends_in_thinking: the generation prompt already opens ``think_start`` (DeepSeek-R1
            distills), so the model's text is reasoning until ``think_end``.

    Example:
        >>> from rkllm_core.chat.templates import PRESETS
        >>> preset = PRESETS["qwen3"]
        >>> preset.stop, preset.tool_call_format, preset.supports_thinking
        (('<|im_end|>', '<|endoftext|>'), 'hermes', True)
        >>> prompt = preset.render([{"role": "user", "content": "Hi"}], enable_thinking=False)
        >>> prompt.endswith("<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n")
        True
    """

    name: str
    template: str
    bos_token: str = ""
    eos_token: str = ""
    stop: tuple[str, ...] = ()
    tool_call_format: ToolCallFormat = "hermes"
    supports_thinking: bool = False
    think_start: str = "<think>"
    think_end: str = "</think>"
    prompt_ends_in_thinking: bool = False

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        enable_thinking: bool | None = None,
        **extra: Any,
    ) -> str:
        """:func:`render_chat` with this preset's template and special tokens.

        Example:
            >>> from rkllm_core.chat.templates import PRESETS
            >>> PRESETS["gemma"].render([{"role": "user", "content": "Hi"}])
            '<bos><start_of_turn>user\\nHi<end_of_turn>\\n<start_of_turn>model\\n'
        """
        return render_chat(
            self.template,
            messages,
            tools=tools,
            add_generation_prompt=add_generation_prompt,
            enable_thinking=enable_thinking,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
            **extra,
        )


def _literal(text: str) -> str:
    """``text`` as a Jinja string literal."""
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
    return f"'{escaped}'"


def _fill(template: str, values: Mapping[str, str]) -> str:
    """Replace each ``@NAME`` placeholder in ``template`` by ``values["NAME"]``, in one pass."""
    return re.sub(r"@([A-Z_]+)", lambda match: values.get(match.group(1), match.group(0)), template)


# Macros every template below starts with. ``text`` prints a value that may be structured (tool
# results) as JSON; ``fname`` names the function an OpenAI call targets; ``args`` prints call
# arguments given either as a dict or as the JSON string OpenAI's wire format carries.
_COMMON_MACROS = r"""
{%- macro text(value) -%}
{{- value if value is string else value | tojson -}}
{%- endmacro -%}
{%- macro args(call) -%}
{%- set f = call.function if call.function is defined else call -%}
{{- f.arguments if f.arguments is string else f.arguments | tojson -}}
{%- endmacro -%}
{%- macro fname(call) -%}
{{- (call.function if call.function is defined else call).name -}}
{%- endmacro -%}
"""

# The Hermes tool protocol, in the words Qwen2.5 and Qwen3 were trained on.
_HERMES_MACROS = r"""
{%- macro hermes_tools(tools) -%}
{{- '# Tools\n\nYou may call one or more functions to assist with the user query.\n\n' -}}
{{- 'You are provided with function signatures within <tools></tools> XML tags:\n<tools>' -}}
{%- for tool in tools -%}
{{- '\n' + tool | tojson -}}
{%- endfor -%}
{{- '\n</tools>\n\nFor each function call, return a json object with function name and ' -}}
{{- 'arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n' -}}
{{- '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>' -}}
{%- endmacro -%}
{%- macro hermes_call(call) -%}
{{- '<tool_call>\n{"name": "' + fname(call) + '", "arguments": ' + args(call) -}}
{{- '}\n</tool_call>' -}}
{%- endmacro -%}
"""

# Split an assistant message into reasoning and answer (Qwen3): ``reasoning_content`` when
# given, else whatever precedes ``</think>`` in the content.
_SPLIT_REASONING = r"""
{%- set content = m.content if m.content is string else '' -%}
{%- set reasoning = '' -%}
{%- if m.reasoning_content is string -%}
{%- set reasoning = m.reasoning_content -%}
{%- elif '</think>' in content -%}
{%- set reasoning = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') -%}
{%- set content = content.split('</think>')[-1].lstrip('\n') -%}
{%- endif -%}
"""


def _hermes_template(
    *, turn_start: str, turn_end: str, default_system: str = "", thinking: bool = False
) -> str:
    """A template for a family that marks turns with ``turn_start``/``turn_end`` and takes tools
    the Hermes way: listed in the system turn, results in ``<tool_response>`` inside user turns.

    ``turn_start`` is a Jinja expression of ``role`` that opens a turn, without the newline that
    follows the role; ``turn_end`` closes one. With ``thinking`` the template renders Qwen3's
    reasoning rules: ``<think>`` blocks kept only after the last user query, and an empty one
    at the generation prompt when ``enable_thinking`` is false.
    """
    end = _literal(turn_end)
    if thinking:
        assistant = (
            _SPLIT_REASONING
            + r"""
{%- if loop.index0 > ns.last_query and (loop.last or reasoning) -%}
{{- open('assistant') + '\n<think>\n' + reasoning.strip('\n') + '\n</think>\n\n' -}}
{{- content.lstrip('\n') -}}
{%- else -%}
{{- open('assistant') + '\n' + content -}}
{%- endif -%}
"""
        )
        think_off = r"""
{%- if enable_thinking is defined and enable_thinking is false -%}
{{- '<think>\n\n</think>\n\n' -}}
{%- endif -%}
"""
    else:
        assistant = r"""
{%- set content = text(m.content) -%}
{{- open('assistant') + '\n' + content -}}
"""
        think_off = ""
    body = (
        _COMMON_MACROS
        + _HERMES_MACROS
        + "{%- macro open(role) -%}{{- "
        + turn_start
        + " -}}{%- endmacro -%}\n"
        + "{%- set default_system = "
        + _literal(default_system)
        + " -%}\n"
        + r"""
{%- if messages and messages[0].role == 'system' -%}
{%- set system_text = messages[0].content -%}
{%- set first = 1 -%}
{%- else -%}
{%- set system_text = default_system -%}
{%- set first = 0 -%}
{%- endif -%}
{%- if tools -%}
{{- open('system') + '\n' -}}
{%- if system_text -%}
{{- system_text + '\n\n' -}}
{%- endif -%}
{{- hermes_tools(tools) + @END -}}
{%- elif system_text -%}
{{- open('system') + '\n' + system_text + @END -}}
{%- endif -%}
{%- set ns = namespace(last_query=messages | length - 1, searching=true) -%}
{%- for m in messages[::-1] -%}
{%- set index = messages | length - 1 - loop.index0 -%}
{%- if ns.searching and m.role == 'user' and not (m.content is string
      and m.content.startswith('<tool_response>') and m.content.endswith('</tool_response>')) -%}
{%- set ns.searching = false -%}
{%- set ns.last_query = index -%}
{%- endif -%}
{%- endfor -%}
{%- for m in messages -%}
{%- if loop.index0 < first -%}
{%- elif m.role == 'assistant' -%}
@ASSISTANT
{%- for call in m.tool_calls or [] -%}
{%- if not loop.first or content -%}
{{- '\n' -}}
{%- endif -%}
{{- hermes_call(call) -}}
{%- endfor -%}
{{- @END -}}
{%- elif m.role == 'tool' -%}
{%- if loop.index0 == first or loop.previtem.role != 'tool' -%}
{{- open('user') -}}
{%- endif -%}
{{- '\n<tool_response>\n' + text(m.content) + '\n</tool_response>' -}}
{%- if loop.last or loop.nextitem.role != 'tool' -%}
{{- @END -}}
{%- endif -%}
{%- else -%}
{{- open(m.role) + '\n' + text(m.content) + @END -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- open('assistant') + '\n' -}}
@THINK_OFF
{%- endif -%}
"""
    )
    return _fill(body, {"ASSISTANT": assistant.strip(), "THINK_OFF": think_off.strip(), "END": end})


_CHATML_START = "'<|im_start|>' + role"
_CHATML_END = "<|im_end|>\n"
_CHATML_STOP = ("<|im_end|>", "<|endoftext|>")

_LLAMA3_TEMPLATE = (
    _COMMON_MACROS
    + r"""
{{- bos_token -}}
{%- if messages and messages[0].role == 'system' -%}
{%- set system_text = messages[0].content | trim -%}
{%- set turns = messages[1:] -%}
{%- else -%}
{%- set system_text = '' -%}
{%- set turns = messages -%}
{%- endif -%}
{%- if date_string is not defined -%}
{%- set date_string = strftime_now('%d %b %Y') if strftime_now is defined else '26 Jul 2024' -%}
{%- endif -%}
{{- '<|start_header_id|>system<|end_header_id|>\n\n' -}}
{%- if tools -%}
{{- 'Environment: ipython\n' -}}
{%- endif -%}
{{- 'Cutting Knowledge Date: December 2023\nToday Date: ' + date_string + '\n\n' -}}
{{- system_text + '<|eot_id|>' -}}
{%- for m in turns -%}
{%- if m.role == 'assistant' and m.tool_calls -%}
{%- if m.tool_calls | length != 1 -%}
{{- raise_exception('Llama 3 takes one tool call per assistant turn') -}}
{%- endif -%}
{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
{{- '{"name": "' + fname(m.tool_calls[0]) + '", "parameters": ' + args(m.tool_calls[0]) + '}' -}}
{{- '<|eot_id|>' -}}
{%- elif m.role == 'tool' -%}
{{- '<|start_header_id|>ipython<|end_header_id|>\n\n' + text(m.content) + '<|eot_id|>' -}}
{%- else -%}
{{- '<|start_header_id|>' + m.role + '<|end_header_id|>\n\n' -}}
{%- if tools and loop.first -%}
{%- if m.role != 'user' -%}
{{- raise_exception('Llama 3 puts the tools in the first user message: there is none') -}}
{%- endif -%}
{{- 'Given the following functions, please respond with a JSON for a function call with its ' -}}
{{- 'proper arguments that best answers the given prompt.\n\n' -}}
{{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name ' -}}
{{- 'and its value}.Do not use variables.\n\n' -}}
{%- for tool in tools -%}
{{- tool | tojson(indent=4) + '\n\n' -}}
{%- endfor -%}
{%- endif -%}
{{- text(m.content) | trim + '<|eot_id|>' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
{%- endif -%}
"""
)

# Gemma has no system or tool role: the system prompt and the tool list open the first user
# turn, tool results join the user turn that follows them, so roles still alternate.
_GEMMA_TEMPLATE = (
    _COMMON_MACROS
    + _HERMES_MACROS
    + r"""
{{- bos_token -}}
{%- if messages and messages[0].role == 'system' -%}
{%- set system_text = text(messages[0].content) | trim -%}
{%- set turns = messages[1:] -%}
{%- else -%}
{%- set system_text = '' -%}
{%- set turns = messages -%}
{%- endif -%}
{%- set prefix = system_text + '\n\n' if system_text else '' -%}
{%- if tools -%}
{%- set prefix = prefix + hermes_tools(tools) + '\n\n' -%}
{%- endif -%}
{%- for m in turns -%}
{%- set by_model = m.role == 'assistant' -%}
{%- if loop.first or (loop.previtem.role == 'assistant') != by_model -%}
{{- '<start_of_turn>' + ('model' if by_model else 'user') + '\n' -}}
{%- else -%}
{{- '\n' -}}
{%- endif -%}
{%- if loop.first -%}
{{- prefix -}}
{%- endif -%}
{%- if m.role == 'tool' -%}
{{- '<tool_response>\n' + text(m.content) + '\n</tool_response>' -}}
{%- else -%}
{%- set content = text(m.content) | trim -%}
{{- content -}}
{%- for call in m.tool_calls or [] -%}
{%- if not loop.first or content -%}
{{- '\n' -}}
{%- endif -%}
{{- hermes_call(call) -}}
{%- endfor -%}
{%- endif -%}
{%- if loop.last or (loop.nextitem.role == 'assistant') != by_model -%}
{{- '<end_of_turn>\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<start_of_turn>model\n' -}}
{%- endif -%}
"""
)

# InternLM2's documented agent format: tools in a second system turn named <|plugin|>, calls
# between <|action_start|><|plugin|> and <|action_end|>, results from the "environment".
_INTERNLM2_TEMPLATE = (
    _COMMON_MACROS
    + r"""
{{- bos_token -}}
{%- if messages and messages[0].role == 'system' -%}
{{- '<|im_start|>system\n' + text(messages[0].content) + '<|im_end|>\n' -}}
{%- set turns = messages[1:] -%}
{%- else -%}
{%- set turns = messages -%}
{%- endif -%}
{%- if tools -%}
{%- set ns = namespace(functions=[]) -%}
{%- for tool in tools -%}
{%- set ns.functions = ns.functions + [tool.function if tool.function is defined else tool] -%}
{%- endfor -%}
{{- '<|im_start|>system name=<|plugin|>\n' + ns.functions | tojson + '<|im_end|>\n' -}}
{%- endif -%}
{%- for m in turns -%}
{%- if m.role == 'assistant' -%}
{{- '<|im_start|>assistant\n' + text(m.content) -}}
{%- for call in m.tool_calls or [] -%}
{{- '<|action_start|><|plugin|>\n{"name": "' + fname(call) + '", "parameters": ' -}}
{{- args(call) + '}<|action_end|>' -}}
{%- endfor -%}
{{- '<|im_end|>\n' -}}
{%- elif m.role == 'tool' -%}
{{- '<|im_start|>environment name=<|plugin|>\n' + text(m.content) + '<|im_end|>\n' -}}
{%- else -%}
{{- '<|im_start|>' + m.role + '\n' + text(m.content) + '<|im_end|>\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|im_start|>assistant\n' -}}
{%- endif -%}
"""
)

# DeepSeek's markers use FULLWIDTH VERTICAL LINE and LOWER ONE EIGHTH BLOCK; spelled as escapes
# so the source stays ASCII.
_BAR, _SPACE = "\uff5c", "\u2581"


def _ds(name: str) -> str:
    return "<" + _BAR + name.replace(" ", _SPACE) + _BAR + ">"


DEEPSEEK_BOS = _ds("begin of sentence")
DEEPSEEK_EOS = _ds("end of sentence")

# The R1 distills' template with two repairs: a single tool call's block is closed, and every
# assistant turn (the generation prompt too) opens with the Assistant tag and so with <think>.
# The distill template never lists tools; we describe them in the system prompt.
_DEEPSEEK_R1_SOURCE = (
    _COMMON_MACROS
    + r"""
{{- bos_token -}}
{%- if messages and messages[0].role == 'system' -%}
{%- set system_text = text(messages[0].content) -%}
{%- else -%}
{%- set system_text = '' -%}
{%- endif -%}
{{- system_text -}}
{%- if tools -%}
{%- if system_text -%}
{{- '\n\n' -}}
{%- endif -%}
{{- 'You have access to the following tools:\n' -}}
{%- for tool in tools -%}
{%- set f = tool.function if tool.function is defined else tool -%}
{{- '\n### ' + f.name + '\nDescription: ' + (f.description or '') -}}
{{- '\nParameters: ' + (f.parameters or {}) | tojson + '\n' -}}
{%- endfor -%}
{{- '\nTo call tools, answer in exactly this format:\n' + @CALLS_BEGIN + @CALL_BEGIN -}}
{{- 'function' + @SEP + '<tool name>\n```json\n<arguments as a JSON object>\n```' -}}
{{- @CALL_END + @CALLS_END -}}
{%- endif -%}
{%- for m in messages -%}
{%- if m.role == 'user' -%}
{{- @USER + text(m.content) -}}
{%- elif m.role == 'assistant' -%}
{{- @ASSISTANT + text(m.content).split('</think>')[-1] -}}
{%- if m.tool_calls -%}
{{- @CALLS_BEGIN -}}
{%- for call in m.tool_calls -%}
{%- if not loop.first -%}
{{- '\n' -}}
{%- endif -%}
{{- @CALL_BEGIN + 'function' + @SEP + fname(call) + '\n```json\n' + args(call) + '\n```' -}}
{{- @CALL_END -}}
{%- endfor -%}
{{- @CALLS_END -}}
{%- endif -%}
{{- @EOS -}}
{%- elif m.role == 'tool' -%}
{%- if loop.first or loop.previtem.role != 'tool' -%}
{{- @OUTPUTS_BEGIN -}}
{%- else -%}
{{- '\n' -}}
{%- endif -%}
{{- @OUTPUT_BEGIN + text(m.content) + @OUTPUT_END -}}
{%- if loop.last or loop.nextitem.role != 'tool' -%}
{{- @OUTPUTS_END -}}
{%- endif -%}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- @ASSISTANT + '<think>\n' -}}
{%- endif -%}
"""
)
_DEEPSEEK_R1_TEMPLATE = _fill(
    _DEEPSEEK_R1_SOURCE,
    {
        "CALLS_BEGIN": _literal(_ds("tool calls begin")),
        "CALLS_END": _literal(_ds("tool calls end")),
        "CALL_BEGIN": _literal(_ds("tool call begin")),
        "CALL_END": _literal(_ds("tool call end")),
        "OUTPUTS_BEGIN": _literal(_ds("tool outputs begin")),
        "OUTPUTS_END": _literal(_ds("tool outputs end")),
        "OUTPUT_BEGIN": _literal(_ds("tool output begin")),
        "OUTPUT_END": _literal(_ds("tool output end")),
        "SEP": _literal(_ds("tool sep")),
        "USER": _literal(_ds("User")),
        "ASSISTANT": _literal(_ds("Assistant")),
        "EOS": "eos_token",
    },
)

QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
SMOLLM_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

#: The built-in presets, by name.
PRESETS: dict[str, ChatPreset] = {
    preset.name: preset
    for preset in (
        ChatPreset(
            name="chatml",
            template=_hermes_template(turn_start=_CHATML_START, turn_end=_CHATML_END),
            eos_token="<|im_end|>",
            stop=_CHATML_STOP,
        ),
        ChatPreset(
            name="qwen2",
            template=_hermes_template(
                turn_start=_CHATML_START, turn_end=_CHATML_END, default_system=QWEN_DEFAULT_SYSTEM
            ),
            eos_token="<|im_end|>",
            stop=_CHATML_STOP,
        ),
        ChatPreset(
            name="qwen3",
            template=_hermes_template(
                turn_start=_CHATML_START, turn_end=_CHATML_END, thinking=True
            ),
            eos_token="<|im_end|>",
            stop=_CHATML_STOP,
            supports_thinking=True,
        ),
        ChatPreset(
            name="llama3",
            template=_LLAMA3_TEMPLATE,
            bos_token="<|begin_of_text|>",
            eos_token="<|eot_id|>",
            stop=("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"),
            tool_call_format="llama3_json",
        ),
        ChatPreset(
            name="gemma",
            template=_GEMMA_TEMPLATE,
            bos_token="<bos>",
            eos_token="<eos>",
            stop=("<end_of_turn>", "<eos>"),
        ),
        ChatPreset(
            name="deepseek_r1",
            template=_DEEPSEEK_R1_TEMPLATE,
            bos_token=DEEPSEEK_BOS,
            eos_token=DEEPSEEK_EOS,
            stop=(DEEPSEEK_EOS,),
            tool_call_format="deepseek_r1",
            supports_thinking=True,
            prompt_ends_in_thinking=True,
        ),
        ChatPreset(
            name="phi3",
            template=_hermes_template(turn_start="'<|' + role + '|>'", turn_end="<|end|>\n"),
            bos_token="<s>",
            eos_token="<|endoftext|>",
            stop=("<|end|>", "<|endoftext|>"),
        ),
        ChatPreset(
            name="minicpm",
            template=_hermes_template(turn_start=_CHATML_START, turn_end=_CHATML_END),
            bos_token="<s>",
            eos_token="<|im_end|>",
            stop=("<|im_end|>", "</s>"),
        ),
        ChatPreset(
            name="internlm2",
            template=_INTERNLM2_TEMPLATE,
            bos_token="<s>",
            eos_token="</s>",
            stop=("<|im_end|>", "</s>"),
            tool_call_format="internlm2",
        ),
        ChatPreset(
            name="smollm",
            template=_hermes_template(
                turn_start=_CHATML_START,
                turn_end=_CHATML_END,
                default_system=SMOLLM_DEFAULT_SYSTEM,
            ),
            bos_token="<|im_start|>",
            eos_token="<|im_end|>",
            stop=_CHATML_STOP,
        ),
    )
}

# Most specific first: a DeepSeek-R1 distill names its Qwen or Llama base, Qwen3 contains "qwen".
_FAMILY_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"deepseek[-_ ]?r1", "deepseek_r1"),
    (r"qwen[-_ ]?3", "qwen3"),
    (r"qwen", "qwen2"),
    (r"smollm", "smollm"),
    (r"llama[-_ ]?3", "llama3"),
    (r"gemma", "gemma"),
    (r"phi[-_ ]?3", "phi3"),
    (r"minicpm", "minicpm"),
    (r"internlm[-_ ]?2", "internlm2"),
    (r"chatml", "chatml"),
)


def preset_for(name_or_model_path: str) -> ChatPreset:
    """The preset for a preset name or a model file name such as
    ``Qwen2.5-1.5B-Instruct_W8A8_RK3588.rkllm``.

    Raises:
        InvalidParameterError: the family cannot be told from the name; the message lists the
            presets to choose from.

    Example:
        >>> from rkllm_core.chat.templates import preset_for
        >>> preset_for("/models/DeepSeek-R1-Distill-Qwen-1.5B_W8A8_RK3588.rkllm").name
        'deepseek_r1'
        >>> preset_for("gemma-3-1b-it.rkllm").name, preset_for("qwen3").name
        ('gemma', 'qwen3')
    """
    if name_or_model_path in PRESETS:
        return PRESETS[name_or_model_path]
    name = Path(name_or_model_path).name.lower()
    for pattern, preset in _FAMILY_PATTERNS:
        if re.search(pattern, name):
            return PRESETS[preset]
    raise InvalidParameterError(
        f"cannot tell the chat format of {name_or_model_path!r} from its name: pass one of the "
        f"presets {', '.join(sorted(PRESETS))}, or the model's own template (load_hf_template)"
    )


# ---------------------------------------------------------------------------------------------
# Hugging Face folders
# ---------------------------------------------------------------------------------------------


def _token_text(value: Any) -> str:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, Mapping):
        return str(value.get("content", ""))
    return value if isinstance(value, str) else ""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InvalidParameterError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidParameterError(f"{path} does not hold a JSON object")
    return data


class SpecialTokens(TypedDict):
    """The special tokens a chat template may write; keyword arguments of :func:`render_chat`."""

    bos_token: str
    eos_token: str


def hf_special_tokens(folder: str | Path) -> SpecialTokens:
    """``{"bos_token": ..., "eos_token": ...}`` from a Hugging Face folder's
    ``tokenizer_config.json`` (``""`` for a token it does not set or a missing file).

    Example:
        >>> import json, tempfile, pathlib
        >>> from rkllm_core.chat.templates import hf_special_tokens
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (folder / "tokenizer_config.json").write_text(
        ...     json.dumps({"eos_token": {"content": "<|im_end|>"}}))
        >>> hf_special_tokens(folder)
        {'bos_token': '', 'eos_token': '<|im_end|>'}
    """
    path = Path(folder) / "tokenizer_config.json"
    config = _read_json(path) if path.is_file() else {}
    return SpecialTokens(
        bos_token=_token_text(config.get("bos_token")),
        eos_token=_token_text(config.get("eos_token")),
    )


def load_hf_template(path: str | Path, *, name: str = "default") -> tuple[str, SpecialTokens]:
    """A model's own chat template and special tokens, from its Hugging Face folder.

    ``chat_template.jinja`` wins when present; otherwise ``chat_template`` of
    ``tokenizer_config.json`` (or of ``chat_template.json``). When that is a list of named
    templates, ``name`` picks one (``"default"``, ``"tool_use"``, ...). ``path`` may also be
    the ``tokenizer_config.json`` file itself.

    Returns:
        ``(template, {"bos_token": ..., "eos_token": ...})``; the dict can be passed straight
        to :func:`render_chat` as keyword arguments.

    Raises:
        InvalidParameterError: no template is found, or no template has that ``name``.

    Example:
        >>> import json, tempfile, pathlib
        >>> from rkllm_core.chat.templates import load_hf_template, render_chat
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (folder / "tokenizer_config.json").write_text(json.dumps(
        ...     {"chat_template": "{{ bos_token }}{{ messages[0].content }}", "bos_token": "<s>"}))
        >>> template, tokens = load_hf_template(folder)
        >>> render_chat(template, [{"role": "user", "content": "Hi"}], **tokens)
        '<s>Hi'
    """
    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    tokens = hf_special_tokens(folder)
    jinja_file = folder / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8"), tokens
    found: Any = None
    for candidate in ("tokenizer_config.json", "chat_template.json"):
        file = folder / candidate
        if file.is_file():
            found = _read_json(file).get("chat_template")
            if found:
                break
    if isinstance(found, str) and found:
        return found, tokens
    if isinstance(found, list):
        named = {
            str(item.get("name")): str(item.get("template"))
            for item in found
            if isinstance(item, Mapping)
        }
        if name in named:
            return named[name], tokens
        raise InvalidParameterError(
            f"{folder} has no chat template named {name!r}; it has {', '.join(sorted(named))}"
        )
    raise InvalidParameterError(
        f"no chat template in {folder}: expected chat_template.jinja or a 'chat_template' in "
        "tokenizer_config.json; use a preset instead (PRESETS, preset_for)"
    )
