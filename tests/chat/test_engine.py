"""The chat engine on the host runtime's scripted engine: KV-cache reuse measured by the
runtime's own prefill counts, replays, tool round trips, reasoning, stops, structured output."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from rkllm_core import RKLLM
from rkllm_core.chat.engine import ChatEngine
from rkllm_core.chat.messages import ChatMessage, ToolSpec
from rkllm_core.chat.structured import StructuredOutputError

CALL = ('<tool_call>\\n{\\"name\\": \\"get_weather\\", \\"arguments\\": '
        '{\\"city\\": \\"Paris\\"}}\\n</tool_call>')
MODEL = f"""RKLLM-SCRIPTED 1
max_context_limit = 4096
thinking = yes
when contains "what is my name" remembers "alice" reply "Your name is Alice."
when contains "what is my name" contains "alice" reply "Your name is Alice."
when contains "what is my name" reply "I do not know."
when contains "think about it" reply "Done thinking." think "Let me consider."
when contains "broken tool" tools yes reply "<tool_call>{{\\"name\\": \\"get_weather\\", \\"arguments\\": {{city: Paris}}}}</tool_call>"
when contains "weather" tools yes reply "Let me look.\\n{CALL}"
when role tool reply "It is sunny in Paris."
when contains "tool results" contains "sunny" reply "It is sunny in Paris."
when contains "answer with a tool call now" tools yes reply "{CALL}"
when contains "stop test" reply "Hello there. User: this should not be seen"
when contains "corrected json" remembers "json please" reply "{{\\"city\\": \\"Paris\\", \\"days\\": 3}}"
when contains "json please" reply "Sure: {{\\"city\\": \\"Paris\\"}}"
when contains "bad json" reply "no json here"
default reply "OK, noted."
"""  # noqa: E501

WEATHER = ToolSpec("get_weather", "The weather in a city",
                   {"type": "object", "properties": {"city": {"type": "string"}},
                    "required": ["city"]})


@pytest.fixture(params=["1.3.0", "1.2.1"])
def llm(request: pytest.FixtureRequest, tmp_path: Path, load_model: Any) -> RKLLM:
    path = tmp_path / "chat.scripted"
    path.write_text(MODEL)
    model: RKLLM = load_model(path, library="host", runtime_version=request.param,
                              max_context_len=4096)  # every backend, driven alike
    return model


def test_a_ten_turn_chat_prefills_only_the_new_messages(llm: RKLLM) -> None:
    chat = ChatEngine(llm)
    history = [ChatMessage.system("You are terse."), ChatMessage.user("My name is Alice.")]
    first = chat.generate(history)
    assert not first.reused_cache
    prefills = []
    reply = first
    for turn in range(2, 11):
        history += [reply.message, ChatMessage.user(f"Remember fact number {turn}.")]
        reply = chat.generate(history)
        assert reply.reused_cache
        prefills.append(reply.usage.prefill_tokens)
        assert reply.usage.input_tokens == llm.kv_cache_size - reply.usage.output_tokens
    # every later turn prefilled the same few tokens: its own message, never the history
    assert len(set(prefills)) == 1 and prefills[0] < first.usage.prefill_tokens
    history += [reply.message, ChatMessage.user("What is my name?")]
    assert chat.generate(history).message.content == "Your name is Alice."


def test_a_diverged_history_is_replayed_and_answered_correctly(llm: RKLLM) -> None:
    chat = ChatEngine(llm)
    first = chat.generate([ChatMessage.user("My name is Alice.")])
    chat.generate([ChatMessage.user("My name is Alice."), first.message,
                   ChatMessage.user("Hello.")])
    edited = [ChatMessage.user("My name is Alice, really."), first.message,
              ChatMessage.user("What is my name?")]
    replayed = chat.generate(edited)
    assert not replayed.reused_cache
    assert replayed.message.content == "Your name is Alice."
    # the replay is now what the cache holds: the next turn extends it
    nxt = chat.generate([*edited, replayed.message, ChatMessage.user("Thanks.")])
    assert nxt.reused_cache


def test_two_conversations_sharing_one_model_each_get_their_own_history(llm: RKLLM) -> None:
    a, b = ChatEngine(llm), ChatEngine(llm)
    alice = [ChatMessage.user("My name is Alice.")]
    bob = [ChatMessage.user("My name is Bob.")]
    alice.append(a.generate(alice).message)
    bob.append(b.generate(bob).message)
    alice.append(ChatMessage.user("What is my name?"))
    bob.append(ChatMessage.user("What is my name?"))
    assert a.generate(alice).message.content == "Your name is Alice."
    assert b.generate(bob).message.content == "I do not know."


def test_a_tool_call_round_trip_sends_only_the_tool_result(llm: RKLLM) -> None:
    chat = ChatEngine(llm)
    history = [ChatMessage.user("What is the weather in Paris?")]
    chunks = list(chat.stream(history, tools=[WEATHER]))
    content = "".join(c.content for c in chunks)
    assert content == "Let me look."  # no tool markup, and exactly the final content
    deltas = [d for c in chunks for d in c.tool_calls]
    assert deltas[0].name == "get_weather"
    assert json.loads("".join(d.arguments for d in deltas)) == {"city": "Paris"}
    call_turn = chat.stream(history, tools=[WEATHER])
    for _ in call_turn:
        pass
    turn = call_turn.result
    assert turn.finish_reason == "tool_calls"
    [call] = turn.message.tool_calls
    assert (call.name, dict(call.arguments)) == ("get_weather", {"city": "Paris"})
    history += [turn.message, ChatMessage.tool("sunny, 21 C", tool_call_id=call.id,
                                               name="get_weather")]
    answer = chat.generate(history, tools=[WEATHER])
    assert answer.reused_cache and answer.message.content == "It is sunny in Paris."
    assert answer.finish_reason == "stop"


def test_malformed_tool_json_is_an_invalid_call(llm: RKLLM) -> None:
    turn = ChatEngine(llm).generate([ChatMessage.user("broken tool please")], tools=[WEATHER])
    assert turn.message.tool_calls == ()
    [bad] = turn.invalid_tool_calls
    assert bad.name == "get_weather" and "city: Paris" in bad.raw


def test_thinking_is_separated_and_streamed_on_its_own_channel(llm: RKLLM) -> None:
    chat = ChatEngine(llm)
    stream = chat.stream([ChatMessage.user("Please think about it.")], enable_thinking=True)
    chunks = list(stream)
    assert "".join(c.reasoning for c in chunks).strip() == "Let me consider."
    assert "".join(c.content for c in chunks) == "Done thinking."
    assert stream.result.message.reasoning == "Let me consider."
    plain = chat.generate([ChatMessage.user("Please think about it.")], enable_thinking=False)
    assert plain.message.content == "Done thinking." and plain.message.reasoning is None


def test_a_stop_sequence_cuts_exactly_and_the_next_turn_is_still_right(llm: RKLLM) -> None:
    chat = ChatEngine(llm)
    turn = chat.generate([ChatMessage.user("stop test")], stop=["User:"])
    assert turn.message.content == "Hello there. "
    assert turn.stop_sequence == "User:" and turn.finish_reason == "stop"
    history = [ChatMessage.user("My name is Alice."), ChatMessage.assistant("OK, noted."),
               ChatMessage.user("What is my name?")]
    assert chat.generate(history).message.content == "Your name is Alice."


def test_required_tool_choice_retries_once_with_the_instruction(llm: RKLLM) -> None:
    chat = ChatEngine(llm)
    turn = chat.generate([ChatMessage.user("Hello.")], tools=[WEATHER], tool_choice="required")
    assert [c.name for c in turn.message.tool_calls] == ["get_weather"]
    none = chat.generate([ChatMessage.user("What is the weather?")], tools=[WEATHER],
                         tool_choice="none")
    assert none.message.tool_calls == () and none.message.content == "OK, noted."


def test_structured_output_is_validated_and_repaired_once(llm: RKLLM) -> None:
    chat = ChatEngine(llm)
    schema = {"type": "object", "properties": {"city": {"type": "string"},
                                               "days": {"type": "integer"}},
              "required": ["city", "days"]}
    value, _ = chat.generate_structured([ChatMessage.user("json please")], schema)
    assert value == {"city": "Paris", "days": 3}
    with pytest.raises(StructuredOutputError) as info:
        chat.generate_structured([ChatMessage.user("bad json")], schema)
    assert info.value.raw == "OK, noted."  # the repair turn did not help either


def test_async_streaming_and_generate(llm: RKLLM) -> None:
    chat = ChatEngine(llm)

    async def main() -> tuple[str, str, bool]:
        stream = chat.astream([ChatMessage.user("My name is Alice.")])
        text = "".join([c.content async for c in stream])
        follow = await chat.agenerate([ChatMessage.user("My name is Alice."),
                                       stream.result.message,
                                       ChatMessage.user("What is my name?")])
        return text, follow.message.content, follow.reused_cache

    assert asyncio.run(main()) == ("OK, noted.", "Your name is Alice.", True)


def test_breaking_out_of_a_stream_leaves_a_usable_engine(llm: RKLLM) -> None:
    chat = ChatEngine(llm)
    history = [ChatMessage.user("My name is Alice.")]
    for _ in chat.stream(history):
        break
    again = chat.generate([*history, ChatMessage.assistant("OK, noted."),
                           ChatMessage.user("What is my name?")])
    assert not again.reused_cache and again.message.content == "Your name is Alice."


def test_a_conversation_must_end_with_a_user_or_tool_message(llm: RKLLM) -> None:
    from rkllm_core.errors import InvalidParameterError

    with pytest.raises(InvalidParameterError, match="ends with an assistant"):
        ChatEngine(llm).generate([ChatMessage.user("Hi"), ChatMessage.assistant("Hello")])
    with pytest.raises(InvalidParameterError, match="empty"):
        ChatEngine(llm).generate([])


def test_a_cache_cleared_behind_the_engines_back_is_detected_and_replayed(llm: RKLLM) -> None:
    chat = ChatEngine(llm)
    first = chat.generate([ChatMessage.user("My name is Alice.")])
    llm.clear_kv_cache()  # someone else used the model directly
    history = [ChatMessage.user("My name is Alice."), first.message,
               ChatMessage.user("What is my name?")]
    again = chat.generate(history)
    assert again.message.content == "Your name is Alice."
    assert not again.reused_cache  # the engine noticed and replayed


def test_a_conversation_longer_than_the_context_stays_correct(tmp_path: Path) -> None:
    path = tmp_path / "small.scripted"
    path.write_text(MODEL)
    with RKLLM(path, library="host", max_context_len=160) as small:
        chat = ChatEngine(small)
        history = [ChatMessage.user("My name is Alice.")]
        for k in range(12):  # overflows 160 positions: the runtime trims its cache
            turn = chat.generate(history)
            history += [turn.message, ChatMessage.user(f"Here is a rather long fact {k}.")]
            assert small.kv_cache_size <= 160
        # the runtime trimmed its cache as it does on the NPU; the engine kept going with it
        # instead of replaying a history that no longer fits
        assert turn.reused_cache
        history[-1] = ChatMessage.user("What is my name?")
        last = chat.generate(history)
        # the first turn was trimmed out of the cache, as the NPU runtime trims it: the model
        # no longer holds the name, and the engine did not replay a history that cannot fit
        assert last.reused_cache and small.kv_cache_size <= 160
        assert last.message.content == "I do not know."


def test_async_structured_output_and_function_calling_method(llm: RKLLM) -> None:
    chat = ChatEngine(llm)
    schema = {"type": "object", "properties": {"city": {"type": "string"}},
              "required": ["city"]}
    value, _ = asyncio.run(chat.agenerate_structured(
        [ChatMessage.user("What is the weather in Paris?")], schema,
        method="function_calling", name="get_weather"))
    assert value == {"city": "Paris"}


def test_tools_as_dicts_are_accepted_and_bad_tools_are_typed_errors(llm: RKLLM) -> None:
    from rkllm_core.errors import InvalidParameterError

    chat = ChatEngine(llm)
    as_dict = WEATHER.to_openai()
    turn = chat.generate([ChatMessage.user("What is the weather in Paris?")], tools=[as_dict])
    assert turn.message.tool_calls[0].name == "get_weather"
    for bad, match in ((WEATHER, "list"), ([WEATHER, WEATHER], "unique"), (["f"], "ToolSpec"),
                       ([{"type": "function", "function": {"name": ""}}], "name")):
        with pytest.raises(InvalidParameterError, match=match):
            chat.generate([ChatMessage.user("Hi")], tools=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match="JSON"):
        ToolSpec("f", "", {"type": "object", "enum": {1, 2}})
    with pytest.raises(InvalidParameterError, match="role"):
        ChatMessage("robot", "hi")  # type: ignore[arg-type]
    assert chat.generate([ChatMessage.user("My name is Alice.")]).message.content == "OK, noted."
