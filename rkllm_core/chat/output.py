"""Turn the model's streamed text into content, reasoning and tool calls, with stop sequences.

The runtime hands over plain text. :class:`OutputParser` takes it piece by piece and returns what
each piece adds to three channels: visible content, reasoning (``<think>...</think>``) and
tool-call deltas. Text that might be the start of a marker (``<tool_call>``, ``</think>``, a stop
sequence) is held back until it is known not to be one, so markup never leaks into the content
stream. Stop sequences cut the text exactly where they start; the caller aborts the run.

Example:
    >>> from rkllm_core.chat.output import OutputParser
    >>> p = OutputParser(tool_format="hermes", think=True, stop=["\\nUser:"])
    >>> chunks = ["<think>sun", "ny?</think>\\n\\nLet me", " check.<tool", "_call>\\n{\\"name\\": ",
    ...           "\\"weather\\", \\"arguments\\": {\\"city\\": \\"Paris\\"}}\\n</tool_call>"]
    >>> deltas = [p.feed(c) for c in chunks]
    >>> "".join(d.content for d in deltas), "".join(d.reasoning for d in deltas)
    ('Let me check.', 'sunny?')
    >>> result = p.finish_result()
    >>> result.tool_calls[0].name, dict(result.tool_calls[0].arguments)
    ('weather', {'city': 'Paris'})
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from rkllm_core.chat.messages import InvalidToolCall, ToolCall, new_call_id
from rkllm_core.streaming import StopMatcher, held_prefix

ToolFormat = Literal["hermes", "llama3_json", "internlm2", "deepseek_r1"]

THINK_START, THINK_END = "<think>", "</think>"
TOOL_START, TOOL_END = "<tool_call>", "</tool_call>"
_DS_CALLS_BEGIN, _DS_CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
_DS_CALL_BEGIN, _DS_CALL_END = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>"
_DS_SEP = "<｜tool▁sep｜>"


@dataclass(frozen=True)
class _BlockFormat:
    """A tool-call format written as marked blocks: where calls start and end, and markers
    around the blocks that are neither content nor calls."""

    starts: tuple[str, ...]
    end: str
    ignorable: tuple[str, ...] = ()
    body: Literal["json", "deepseek"] = "json"


_BLOCK_FORMATS: dict[str, _BlockFormat] = {
    "hermes": _BlockFormat((TOOL_START,), TOOL_END),
    "internlm2": _BlockFormat(("<|action_start|><|plugin|>",), "<|action_end|>"),
    "deepseek_r1": _BlockFormat((_DS_CALLS_BEGIN + _DS_CALL_BEGIN, _DS_CALL_BEGIN),
                                _DS_CALL_END, (_DS_CALLS_END,), body="deepseek"),
}
_FENCE_RE = re.compile(r"```(?:json)?\s*(.*?)\s*```", re.S)
_NAME_RE = re.compile(r'"name"\s*:\s*"((?:[^"\\]|\\.)*)"')
_ARGS_RE = re.compile(r'"(?:arguments|parameters)"\s*:\s*')


@dataclass
class ToolCallDelta:
    """A piece of the ``index``-th tool call: its id and name once known, argument text as it
    streams. Concatenating ``arguments`` of one index gives the call's arguments JSON.

    Example:
        >>> from rkllm_core.chat import OutputParser
        >>> parser = OutputParser(tool_format="hermes")
        >>> pieces = ['<tool_call>{"name": "f", "argu', 'ments": {"x": 1}}</tool_call>']
        >>> deltas = [d for p in pieces for d in parser.feed(p).tool_calls]
        >>> deltas += parser.finish().tool_calls
        >>> deltas[0].index, deltas[0].name, "".join(d.arguments for d in deltas)
        (0, 'f', '{"x": 1}')
    """

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass
class Delta:
    """What one piece of model output adds to each channel.

    Example:
        >>> from rkllm_core.chat import Delta
        >>> total = Delta(reasoning="Paris? ")
        >>> total.extend(Delta(content="Paris."))
        >>> total.content, total.reasoning, bool(Delta())
        ('Paris.', 'Paris? ', False)
    """

    content: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCallDelta] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.content or self.reasoning or self.tool_calls)

    def extend(self, other: Delta) -> None:
        """Append ``other`` to this delta."""
        self.content += other.content
        self.reasoning += other.reasoning
        self.tool_calls.extend(other.tool_calls)


@dataclass
class ParsedOutput:
    """The whole turn: content, reasoning, parsed and unparsable tool calls, the stop hit.

    Example:
        >>> from rkllm_core.chat import OutputParser
        >>> parser = OutputParser(stop=["\\nUser:"])
        >>> _ = parser.feed("<think>easy</think>Hi!\\nUser: more")
        >>> turn = parser.finish_result()
        >>> turn.content, turn.reasoning, turn.stop_sequence, parser.stopped
        ('Hi!', 'easy', '\\nUser:', True)
    """

    content: str
    reasoning: str
    tool_calls: list[ToolCall]
    invalid_tool_calls: list[InvalidToolCall]
    stop_sequence: str | None = None


class _ArgsScanner:
    """Finds where a JSON value that starts at a given offset ends, incrementally."""

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.escape = False
        self.started = False
        self.done = False

    def scan(self, text: str, start: int) -> int:
        """Scan ``text[start:]``; return the offset just past what belongs to the value."""
        i = start
        while i < len(text) and not self.done:
            ch = text[i]
            if not self.started:
                if ch.isspace():
                    i += 1
                    continue
                if ch not in "{[":
                    return start  # not an object: leave it to the final parse
                self.started = True
            if self.in_string:
                if self.escape:
                    self.escape = False
                elif ch == "\\":
                    self.escape = True
                elif ch == '"':
                    self.in_string = False
            elif ch == '"':
                self.in_string = True
            elif ch in "{[":
                self.depth += 1
            elif ch in "}]":
                self.depth -= 1
                if self.depth == 0:
                    self.done = True
            i += 1
        return i


class _ToolBlock:
    """One tool-call block being received."""

    def __init__(self, index: int, body: str = "json") -> None:
        self.body = body
        self.index = index
        self.id = new_call_id()
        self.text = ""
        self.name: str | None = None
        self.args_start: int | None = None
        self.args_sent = 0
        self.scanner = _ArgsScanner()

    def feed(self, piece: str) -> list[ToolCallDelta]:
        self.text += piece
        out: list[ToolCallDelta] = []
        if self.body == "deepseek":
            return out  # name and fenced arguments are read whole at the block's end
        if self.name is None:
            m = _NAME_RE.search(self.text)
            if m is None:
                return out
            try:
                self.name = json.loads(f'"{m.group(1)}"')
            except ValueError:
                self.name = m.group(1)
            out.append(ToolCallDelta(self.index, self.id, self.name))
        if self.args_start is None:
            a = _ARGS_RE.search(self.text)
            if a is None:
                return out
            self.args_start = a.end()
        if self.scanner.started or not self.scanner.done:
            begin = self.args_start + self.args_sent
            end = self.scanner.scan(self.text, begin)
            if self.scanner.started and end > begin:
                fragment = self.text[begin:end]
                if self.args_sent == 0:
                    fragment = fragment.lstrip()
                if fragment:
                    out.append(ToolCallDelta(self.index, arguments=fragment))
                self.args_sent = end - self.args_start
        return out

    def result(self) -> ToolCall | InvalidToolCall:
        if self.body == "deepseek":
            return parse_deepseek_call(self.text, self.id)
        return parse_tool_json(self.text, self.id)

    def closing_deltas(self) -> list[ToolCallDelta]:
        """Deltas for a format whose calls are only known whole (sent when the block ends)."""
        if self.body != "deepseek":
            return []
        parsed = self.result()
        if isinstance(parsed, ToolCall):
            return [ToolCallDelta(self.index, self.id, parsed.name, parsed.arguments_json())]
        return [ToolCallDelta(self.index, self.id, parsed.name, parsed.raw)]


def parse_deepseek_call(text: str, call_id: str | None = None) -> ToolCall | InvalidToolCall:
    """``function<sep>NAME`` then a fenced JSON block of arguments (DeepSeek-R1's format)."""
    call_id = call_id or new_call_id()
    raw = text.strip()
    _, sep, rest = raw.partition(_DS_SEP)
    if not sep:
        return InvalidToolCall(raw, "no tool-sep marker in the DeepSeek tool call", None, call_id)
    name = rest.split("\n", 1)[0].strip()
    fence = _FENCE_RE.search(rest)
    body = fence.group(1) if fence else rest[len(name):].strip()
    try:
        args = json.loads(body) if body else {}
    except ValueError as exc:
        return InvalidToolCall(raw, f"tool-call JSON does not parse: {exc}", name or None, call_id)
    if not name or not isinstance(args, dict):
        return InvalidToolCall(raw, "a tool call needs a name and an object of arguments",
                               name or None, call_id)
    return ToolCall(name, args, call_id)


def parse_tool_json(text: str, call_id: str | None = None) -> ToolCall | InvalidToolCall:
    """Parse ``{"name": ..., "arguments"|"parameters": {...}}``; bad text gives InvalidToolCall."""
    call_id = call_id or new_call_id()
    raw = text.strip()
    try:
        data: Any = json.loads(raw)
    except ValueError as exc:
        m = _NAME_RE.search(raw)
        return InvalidToolCall(raw, f"tool-call JSON does not parse: {exc}",
                               m.group(1) if m else None, call_id)
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return InvalidToolCall(raw, "a tool call must be an object with a string 'name'",
                               None, call_id)
    args = data.get("arguments", data.get("parameters", {}))
    if isinstance(args, str):  # some models double-encode
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError as exc:
            return InvalidToolCall(raw, f"'arguments' is a string that is not JSON: {exc}",
                                   data["name"], call_id)
    if not isinstance(args, dict):
        return InvalidToolCall(raw, "'arguments' must be a JSON object", data["name"], call_id)
    return ToolCall(data["name"], args, call_id)


class OutputParser:
    """Splits streamed model text into content, reasoning and tool calls; applies stops.

    Args:
        tool_format: ``"hermes"`` (``<tool_call>{json}</tool_call>`` blocks: Qwen, SmolLM,
            most RKLLM chat models), ``"llama3_json"`` (a turn that is one JSON object or
            several separated by ``;``), ``"internlm2"`` (``<|action_start|><|plugin|>`` JSON
            ``<|action_end|>``), ``"deepseek_r1"`` (DeepSeek's tool-call tokens with a fenced
            JSON block), or None (no tools bound: everything is content).
        think: separate ``<think>...</think>`` at the start of the turn.
        starts_in_reasoning: the prompt ended inside ``<think>`` (DeepSeek-R1 distills), so the
            text is reasoning until ``</think>``.
        stop: stop sequences; the first one seen ends the turn exactly before it.

    Example:
        >>> from rkllm_core.chat import OutputParser
        >>> parser = OutputParser(think=True)
        >>> [parser.feed(p).content for p in ["<think>hm</think>", "Hello", " there"]]
        ['', 'Hello', ' there']
        >>> parser.finish().content, parser.finish_result().reasoning, parser.stopped
        ('', 'hm', False)
    """

    def __init__(self, *, tool_format: ToolFormat | None = None, think: bool = True,
                 starts_in_reasoning: bool = False, stop: Sequence[str] = ()) -> None:
        self.tool_format = tool_format
        self._stop_matcher = StopMatcher(stop)
        self.stop_hit: str | None = None
        # reasoning stage
        self._think = think or starts_in_reasoning
        self._in_reasoning = starts_in_reasoning
        self._think_decided = starts_in_reasoning or not self._think
        self._think_buf = ""
        self._after_think = False
        # tool stage
        self._tool_buf = ""
        self._block: _ToolBlock | None = None
        self._blocks: list[_ToolBlock] = []
        self._json_turn: bool | None = None  # llama3_json: is this turn a JSON call?
        self.content = ""
        self.reasoning = ""
        self._held_space = ""

    @property
    def stopped(self) -> bool:
        """True once a stop sequence was seen: the caller should abort the run."""
        return self.stop_hit is not None

    # ---- stage 1: stop sequences ----
    def feed(self, text: str) -> Delta:
        """Take the next piece of model text; return what it adds to each channel."""
        if self.stopped or not text:
            return Delta()
        released = self._stop_matcher.feed(text)
        self.stop_hit = self._stop_matcher.hit
        return self._reason(released)

    # ---- stage 2: reasoning ----
    def _reason(self, text: str) -> Delta:
        if not text:
            return Delta()
        if not self._think:
            return self._tools(text)
        out = Delta()
        buf = self._think_buf + text
        self._think_buf = ""
        if not self._think_decided:
            stripped = buf.lstrip()
            if stripped.startswith(THINK_START):
                self._in_reasoning = True
                self._think_decided = True
                buf = stripped[len(THINK_START):]
            elif THINK_START.startswith(stripped):
                self._think_buf = buf  # maybe the start of <think>
                return out
            else:
                self._think_decided = True
        if self._in_reasoning:
            end = buf.find(THINK_END)
            if end < 0:
                keep = held_prefix(buf, [THINK_END])
                # newlines right before </think> are not reasoning: hold them until text follows
                keep += len(buf[:len(buf) - keep]) - len(buf[:len(buf) - keep].rstrip())
                self._think_buf = buf[len(buf) - keep:] if keep else ""
                piece = buf[:len(buf) - keep]
                if not self.reasoning:
                    piece = piece.lstrip()
                self.reasoning += piece
                out.reasoning = piece
                return out
            piece = buf[:end]
            if not self.reasoning:
                piece = piece.lstrip()
            piece = piece.rstrip()
            self.reasoning += piece
            out.reasoning = piece
            self._in_reasoning = False
            self._after_think = True
            buf = buf[end + len(THINK_END):]
        if self._after_think:
            buf = buf.lstrip("\n")
            if not buf:
                return out
            self._after_think = False
        out.extend(self._tools(buf))
        return out

    # ---- stage 3: tool calls ----
    def _tools(self, text: str) -> Delta:
        if self.tool_format is None:
            self.content += text
            return Delta(content=text)
        if self.tool_format == "llama3_json":
            return self._llama3(text)
        fmt = _BLOCK_FORMATS[self.tool_format]
        out = Delta()
        buf = self._tool_buf + text
        self._tool_buf = ""
        while buf:
            if self._block is None:
                found = [(buf.find(m), -len(m), m) for m in fmt.starts if m in buf]
                if not found:
                    keep = held_prefix(buf, [*fmt.starts, *fmt.ignorable])
                    self._tool_buf = buf[len(buf) - keep:] if keep else ""
                    self._emit_content(out, buf[:len(buf) - keep], fmt)
                    return out
                at, _, marker = min(found)
                self._emit_content(out, buf[:at], fmt)
                self._held_space = ""  # whitespace before a call is not content
                self._block = _ToolBlock(len(self._blocks), fmt.body)
                self._blocks.append(self._block)
                buf = buf[at + len(marker):]
            else:
                end = buf.find(fmt.end)
                if end < 0:
                    keep = held_prefix(buf, [fmt.end])
                    self._tool_buf = buf[len(buf) - keep:] if keep else ""
                    out.tool_calls.extend(self._block.feed(buf[:len(buf) - keep]))
                    return out
                out.tool_calls.extend(self._block.feed(buf[:end]))
                out.tool_calls.extend(self._block.closing_deltas())
                self._block = None
                buf = buf[end + len(fmt.end):]
        return out

    def _emit_content(self, out: Delta, text: str, fmt: _BlockFormat | None = None) -> None:
        """Content around tool calls: whitespace at either end of the content, and between
        calls, is not content; it is held until text follows, so the streamed pieces add up
        exactly to the turn's final content."""
        for marker in fmt.ignorable if fmt else ():
            text = text.replace(marker, "")
        if not self.content or (self._blocks and not self._held_space):
            text = text.lstrip()  # the start of the content, or text after a call
            if text and self.content:
                text = "\n" + text
        text = self._held_space + text
        body = text.rstrip()
        self._held_space = text[len(body):]
        if body:
            self.content += body
            out.content += body

    def _llama3(self, text: str) -> Delta:
        self._tool_buf += text
        if self._json_turn is None:
            head = self._tool_buf.lstrip()
            if head and "<|python_tag|>".startswith(head):
                return Delta()  # maybe the start of the tag
            if head.startswith("<|python_tag|>"):
                head = head[len("<|python_tag|>"):].lstrip()
            if not head:
                return Delta()
            self._json_turn = head.startswith("{")
            if not self._json_turn:
                text, self._tool_buf = self._tool_buf, ""
                self.content += text
                return Delta(content=text)
        if self._json_turn:
            return Delta()  # parsed whole at the end
        self._tool_buf = ""
        self.content += text
        return Delta(content=text)

    # ---- the end ----
    def finish(self) -> Delta:
        """Flush what was held back; call once when the run ended."""
        out = Delta()
        rest = self._stop_matcher.flush()
        if rest:
            out.extend(self._reason(rest))
        if self._think_buf:
            rest, self._think_buf = self._think_buf, ""
            if self._in_reasoning:
                rest = rest.rstrip() if self.reasoning else rest.strip()
                self.reasoning += rest
                out.reasoning += rest
            else:
                self._think_decided = True
                out.extend(self._tools(rest))
        if self.tool_format == "llama3_json" and self._json_turn:
            body = self._tool_buf.strip().removeprefix("<|python_tag|>")
            self._tool_buf = ""
            for i, part in enumerate(p for p in body.split(";") if p.strip()):
                block = _ToolBlock(i)
                self._blocks.append(block)
                out.tool_calls.extend(block.feed(part))
        elif self._tool_buf:
            rest, self._tool_buf = self._tool_buf, ""
            fmt = _BLOCK_FORMATS.get(self.tool_format or "")
            if self._block is not None:
                out.tool_calls.extend(self._block.feed(rest))
                out.tool_calls.extend(self._block.closing_deltas())
            else:
                self._emit_content(out, rest, fmt)
        elif self._block is not None:
            out.tool_calls.extend(self._block.closing_deltas())
        self._block = None
        return out

    def finish_result(self) -> ParsedOutput:
        """:meth:`finish`, then the whole turn."""
        self.finish()
        calls: list[ToolCall] = []
        invalid: list[InvalidToolCall] = []
        for block in self._blocks:
            parsed = block.result()
            if isinstance(parsed, ToolCall):
                calls.append(parsed)
            else:
                invalid.append(parsed)
        # the streamed deltas add up to exactly these texts
        return ParsedOutput(self.content, self.reasoning, calls, invalid, self.stop_hit)
