"""The streaming output parser: content, reasoning and tool calls split exactly, however the
text is cut into pieces, with no markup leaking into the content stream."""

from __future__ import annotations

import json
import random

import pytest

from rkllm_core.chat.output import Delta, OutputParser, ParsedOutput


def run(text: str, pieces: list[int] | None = None, **kwargs: object) -> tuple[list[Delta],
                                                                             ParsedOutput]:
    parser = OutputParser(**kwargs)  # type: ignore[arg-type]
    deltas = []
    at = 0
    for size in pieces or [1] * len(text):
        if at >= len(text):
            break
        deltas.append(parser.feed(text[at:at + size]))
        at += size
    if at < len(text):
        deltas.append(parser.feed(text[at:]))
    deltas.append(parser.finish())
    return deltas, parser.finish_result()


def chunkings(text: str, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[1] * len(text), [len(text)]] + [
        [rng.randint(1, 7) for _ in range(len(text))] for _ in range(20)]


TURN = ("<think>\nThe user wants weather.\n</think>\n\nLet me check that.\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n</tool_call>\n'
        "<tool_call>\n"
        '{"name": "get_time", "arguments": {"tz": "Europe/Paris"}}\n</tool_call>')


@pytest.mark.parametrize("pieces", chunkings(TURN))
def test_reasoning_content_and_two_calls_are_separated_for_any_chunking(pieces: list[int]) -> None:
    deltas, result = run(TURN, pieces, tool_format="hermes", think=True)
    content = "".join(d.content for d in deltas)
    assert content == "Let me check that." == result.content
    assert "<" not in content
    assert "".join(d.reasoning for d in deltas) == "The user wants weather."  # as streamed
    assert result.reasoning == "The user wants weather."
    assert [c.name for c in result.tool_calls] == ["get_weather", "get_time"]
    assert dict(result.tool_calls[0].arguments) == {"city": "Paris", "unit": "c"}
    assert result.invalid_tool_calls == []
    # streamed deltas: ids and names once, arguments concatenate to the JSON of the call
    for index, call in enumerate(result.tool_calls):
        parts = [t for d in deltas for t in d.tool_calls if t.index == index]
        assert [t.name for t in parts if t.name] == [call.name]
        assert {t.id for t in parts if t.id} == {call.id}
        assert json.loads("".join(t.arguments for t in parts)) == dict(call.arguments)


def test_arguments_stream_before_the_block_closes() -> None:
    parser = OutputParser(tool_format="hermes")
    parser.feed('<tool_call>\n{"name": "search", "arguments": {"query": "rock')
    early = parser.feed("chip npu")
    assert [t.arguments for t in early.tool_calls] == ["chip npu"]


def test_malformed_tool_json_is_an_invalid_call_with_the_raw_text() -> None:
    _, result = run('<tool_call>\n{"name": "get_weather", "arguments": {"city": Paris}}\n'
                    "</tool_call>", tool_format="hermes")
    assert result.tool_calls == []
    [bad] = result.invalid_tool_calls
    assert bad.name == "get_weather" and '"city": Paris' in bad.raw
    assert "does not parse" in bad.error


def test_double_encoded_arguments_and_parameters_key_are_accepted() -> None:
    text = ('<tool_call>{"name": "a", "arguments": "{\\"x\\": 1}"}</tool_call>'
            '<tool_call>{"name": "b", "parameters": {"y": 2}}</tool_call>')
    _, result = run(text, tool_format="hermes")
    assert [(c.name, dict(c.arguments)) for c in result.tool_calls] == [("a", {"x": 1}),
                                                                        ("b", {"y": 2})]


def test_an_unclosed_block_at_the_end_is_still_parsed() -> None:
    _, result = run('<tool_call>\n{"name": "a", "arguments": {}}', tool_format="hermes")
    assert [c.name for c in result.tool_calls] == ["a"]


def test_without_tools_markup_is_plain_content() -> None:
    text = "Use <tool_call> tags like this."
    deltas, result = run(text)
    assert "".join(d.content for d in deltas) == text and result.tool_calls == []


def test_text_that_only_looks_like_a_marker_start_is_released() -> None:
    deltas, _ = run("a < b and <tool is fine", tool_format="hermes")
    assert "".join(d.content for d in deltas) == "a < b and <tool is fine"


@pytest.mark.parametrize("pieces", chunkings("Hello there.\nUser: hi\nAssistant:", 3))
def test_a_stop_sequence_cuts_exactly_before_it(pieces: list[int]) -> None:
    text = "Hello there.\nUser: hi\nAssistant:"
    parser = OutputParser(stop=["\nUser:", "never"])
    out = ""
    at = 0
    for size in pieces:
        out += parser.feed(text[at:at + size]).content
        at += size
        if parser.stopped:
            break
    out += parser.finish().content
    assert out == "Hello there."
    assert parser.finish_result().stop_sequence == "\nUser:"


def test_a_stop_sequence_held_back_at_the_end_is_released_when_not_completed() -> None:
    deltas, result = run("ends with \nUs", [4] * 5, stop=["\nUser:"])
    assert "".join(d.content for d in deltas) == "ends with \nUs"
    assert result.stop_sequence is None


def test_deepseek_style_output_starts_inside_reasoning() -> None:
    _, result = run("Let me think.\n</think>\n\nThe answer is 4.", starts_in_reasoning=True)
    assert (result.reasoning, result.content) == ("Let me think.", "The answer is 4.")


def test_a_think_tag_later_in_the_text_is_content() -> None:
    _, result = run("Answer: use <think> tags.", think=True)
    assert result.content == "Answer: use <think> tags." and result.reasoning == ""


def test_unfinished_reasoning_stays_reasoning() -> None:
    _, result = run("<think>still thinking", think=True)
    assert result.reasoning == "still thinking" and result.content == ""


@pytest.mark.parametrize("text,calls", [
    ('{"name": "get_weather", "parameters": {"city": "Paris"}}', [("get_weather",
                                                                    {"city": "Paris"})]),
    ('<|python_tag|>{"name": "a", "parameters": {}}; {"name": "b", "parameters": {"k": 1}}',
     [("a", {}), ("b", {"k": 1})]),
])
def test_llama3_json_calls(text: str, calls: list[tuple[str, dict[str, object]]]) -> None:
    deltas, result = run(text, tool_format="llama3_json")
    assert [(c.name, dict(c.arguments)) for c in result.tool_calls] == calls
    assert "".join(d.content for d in deltas) == ""


def test_llama3_plain_answers_stream_as_content() -> None:
    deltas, result = run("Paris is sunny.", tool_format="llama3_json")
    assert next(d.content for d in deltas if d.content) == "P"
    assert result.content == "Paris is sunny." and result.tool_calls == []


def test_internlm2_plugin_calls() -> None:
    text = ('Checking.<|action_start|><|plugin|>\n{"name": "get_weather", "parameters": '
            '{"city": "Paris"}}<|action_end|>')
    for pieces in chunkings(text, 5):
        deltas, result = run(text, pieces, tool_format="internlm2")
        assert "".join(d.content for d in deltas) == "Checking."
        assert [(c.name, dict(c.arguments)) for c in result.tool_calls] == [
            ("get_weather", {"city": "Paris"})]


def test_deepseek_r1_calls_with_fenced_arguments() -> None:
    text = ("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n"
            '```json\n{"city": "Paris"}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function'
            '<｜tool▁sep｜>get_time\n```json\n{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>')
    for pieces in chunkings(text, 6):
        deltas, result = run(text, pieces, tool_format="deepseek_r1")
        assert "".join(d.content for d in deltas) == ""
        assert [(c.name, dict(c.arguments)) for c in result.tool_calls] == [
            ("get_weather", {"city": "Paris"}), ("get_time", {})]
        streamed = [d for d in deltas for d in d.tool_calls]
        assert [d.name for d in streamed] == ["get_weather", "get_time"]
