"""Property tests (hypothesis) for the text paths every token goes through: incremental UTF-8
decoding, stop-sequence cutting, tool-call parsing and template rendering round trips."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from rkllm_core.chat.output import OutputParser
from rkllm_core.chat.templates import PRESETS, render_chat
from rkllm_core.streaming import StopMatcher, Utf8Decoder

SETTINGS = settings(max_examples=150, deadline=None)


def splits(data: Any, cuts: list[int]) -> list[Any]:
    """``data`` cut at the (sorted, deduplicated) positions ``cuts``."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return pieces


@SETTINGS
@given(st.text(), st.lists(st.integers(min_value=0, max_value=10_000), max_size=20))
def test_utf8_decoding_of_any_byte_split_gives_the_text_back(text: str,
                                                             cuts: list[int]) -> None:
    data = text.encode("utf-8", "surrogatepass")
    decoder = Utf8Decoder()
    out = "".join(decoder.feed(piece) for piece in splits(data, cuts)) + decoder.flush()
    assert out == data.decode("utf-8", "replace")


@SETTINGS
@given(st.binary(), st.lists(st.integers(min_value=0, max_value=10_000), max_size=20))
def test_utf8_decoding_never_raises_on_arbitrary_bytes(data: bytes, cuts: list[int]) -> None:
    decoder = Utf8Decoder()
    out = "".join(decoder.feed(piece) for piece in splits(data, cuts)) + decoder.flush()
    assert out == data.decode("utf-8", "replace")


@SETTINGS
@given(st.text(alphabet="abc xy\n<>", max_size=60),
       st.lists(st.text(alphabet="abcxy<>\n", min_size=1, max_size=5), min_size=1, max_size=3),
       st.lists(st.integers(min_value=0, max_value=200), max_size=15))
def test_stop_sequences_cut_where_the_first_one_completes_for_any_split(
        text: str, stops: list[str], cuts: list[int]) -> None:
    # the stop that is complete first ends the text (the longer one on a tie), exactly
    # before it starts, however the text arrives
    hits = [(i + len(s), i) for s in stops if (i := text.find(s)) >= 0]
    expected = text[:min(hits)[1]] if hits else text
    matcher = StopMatcher(stops)
    out = ""
    for piece in splits(text, cuts):
        out += matcher.feed(piece)
        if matcher.stopped:
            break
    out += matcher.flush()
    assert out == expected
    parser = OutputParser(stop=stops)
    content = ""
    for piece in splits(text, cuts):
        content += parser.feed(piece).content
        if parser.stopped:
            break
    content += parser.finish().content
    assert content == expected


NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True)
JSON_LEAVES = st.one_of(st.integers(-10**6, 10**6), st.booleans(), st.none(),
                        st.text(max_size=12))
ARGS = st.dictionaries(st.text(min_size=1, max_size=8),
                       st.recursive(JSON_LEAVES, lambda inner: st.lists(inner, max_size=3)
                                    | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                                    max_leaves=6),
                       max_size=4)
PROSE = st.text(alphabet=st.characters(blacklist_characters="<", blacklist_categories=("Cs",)),
                max_size=40)


@SETTINGS
@given(PROSE, st.lists(st.tuples(NAMES, ARGS), min_size=1, max_size=3),
       st.lists(st.integers(min_value=0, max_value=2000), max_size=25))
def test_hermes_tool_calls_parse_back_for_any_split(
        prose: str, calls: list[tuple[str, dict[str, Any]]], cuts: list[int]) -> None:
    text = prose + "".join(
        f"\n<tool_call>\n{json.dumps({'name': n, 'arguments': a}, ensure_ascii=False)}\n"
        "</tool_call>" for n, a in calls)
    parser = OutputParser(tool_format="hermes", think=False)
    deltas = [parser.feed(piece) for piece in splits(text, cuts)]
    deltas.append(parser.finish())
    result = parser.finish_result()
    assert [(c.name, dict(c.arguments)) for c in result.tool_calls] == calls
    assert result.invalid_tool_calls == []
    streamed = "".join(d.content for d in deltas)
    assert streamed == result.content == prose.strip()
    for index, (_, args) in enumerate(calls):
        parts = "".join(t.arguments for d in deltas for t in d.tool_calls if t.index == index)
        assert json.loads(parts) == args


@SETTINGS
@given(st.sampled_from(["chatml", "qwen2", "qwen3", "smollm"]),
       st.lists(st.tuples(NAMES, ARGS), min_size=1, max_size=3))
def test_a_rendered_tool_call_turn_parses_back_to_the_same_calls(
        preset: str, calls: list[tuple[str, dict[str, Any]]]) -> None:
    turn = {"role": "assistant", "content": "",
            "tool_calls": [{"id": f"call_{i}", "type": "function",
                            "function": {"name": n, "arguments": a}}
                           for i, (n, a) in enumerate(calls)]}
    text = render_chat(PRESETS[preset].template, [{"role": "user", "content": "go"}, turn],
                       add_generation_prompt=False)
    reply = text.rsplit("<|im_start|>assistant\n", 1)[1].split("<|im_end|>", 1)[0]
    parser = OutputParser(tool_format="hermes")
    parser.feed(reply)
    result = parser.finish_result()
    assert [(c.name, dict(c.arguments)) for c in result.tool_calls] == calls
