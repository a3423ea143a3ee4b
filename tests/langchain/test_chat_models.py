"""ChatRKLLM's behaviour, exactly, on the host runtime's scripted engine: streaming and token
callbacks, streamed tool calls, tool_choice, structured output, usage and response metadata,
reasoning, stop sequences, disable_streaming and tool-message histories."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.exceptions import OutputParserException
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from pydantic import BaseModel

from langchain_rkllm import ChatRKLLM
from rkllm_core.errors import InvalidParameterError


def get_weather(city: str) -> str:
    """The weather in a city."""
    return "sunny"


def get_time(city: str) -> str:
    """The local time in a city."""
    return "noon"


class City(BaseModel):
    """A city and its country."""

    name: str
    country: str


class Tokens(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.chunks: list[Any] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)
        self.chunks.append(kwargs.get("chunk"))


class AsyncTokens(AsyncCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    async def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


@pytest.fixture
def llm(assistant_file: Path, place: Any) -> ChatRKLLM:
    return ChatRKLLM(**place(model_path=str(assistant_file), library="host",
                             max_context_len=2048))


def _join(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    full = chunks[0]
    for chunk in chunks[1:]:
        full = full + chunk
    return full


# -- streaming and callbacks ---------------------------------------------------------------


def test_stream_gives_a_chunk_per_token_and_a_token_callback_for_each(llm: ChatRKLLM) -> None:
    handler = Tokens()
    chunks = list(llm.stream("unicode please", config={"callbacks": [handler]}))
    texts = [c.content for c in chunks]
    assert "".join(texts) == "Grüße 你好 🙂!"
    assert len(chunks) > 4
    assert handler.tokens == texts  # the closing chunk's token is ""
    assert all(c.message.content == t for c, t in zip(handler.chunks, handler.tokens,
                                                      strict=True))
    last = chunks[-1]
    assert last.content == "" and last.chunk_position == "last"
    assert last.usage_metadata is not None and last.usage_metadata["output_tokens"] > 0
    assert all(c.usage_metadata is None for c in chunks[:-1])


def test_astream_gives_the_same_chunks_and_awaits_async_callbacks(llm: ChatRKLLM) -> None:
    sync_texts = [c.content for c in llm.stream("unicode please")]

    async def main() -> tuple[list[str], list[str]]:
        handler = AsyncTokens()
        texts = [c.content async for c in llm.astream("unicode please",
                                                       config={"callbacks": [handler]})]
        return texts, handler.tokens

    texts, tokens = asyncio.run(main())
    assert texts == sync_texts
    assert tokens == texts


def test_astream_does_not_block_the_event_loop(make_file: Any) -> None:
    path = make_file("slow.scripted", 'RKLLM-SCRIPTED 1\ndecode_tokens_per_second = 50\n'
                     'default reply "one two three four five six seven eight nine ten"\n')
    llm = ChatRKLLM(model_path=str(path), library="host", max_context_len=512)

    async def main() -> tuple[int, str]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        task = asyncio.create_task(ticker())
        text = "".join([str(c.content) async for c in llm.astream("go")])
        task.cancel()
        return ticks, text

    ticks, text = asyncio.run(main())
    assert text == "one two three four five six seven eight nine ten"
    assert ticks > 10  # ~200 ms of decoding; the loop kept running


def test_invoke_fires_a_token_callback_per_chunk_too(llm: ChatRKLLM) -> None:
    handler = Tokens()
    ai = llm.invoke("unicode please", config={"callbacks": [handler]})
    assert "".join(handler.tokens) == ai.content == "Grüße 你好 🙂!"
    assert len(handler.tokens) > 4


def test_streaming_true_makes_invoke_stream(assistant_file: Path) -> None:
    llm = ChatRKLLM(model_path=str(assistant_file), library="host", max_context_len=512,
                    streaming=True)
    handler = Tokens()
    assert llm.invoke("unicode please", config={"callbacks": [handler]}).content == \
        "Grüße 你好 🙂!"
    assert "".join(handler.tokens) == "Grüße 你好 🙂!"


def test_disable_streaming_gives_one_whole_chunk(assistant_file: Path) -> None:
    llm = ChatRKLLM(model_path=str(assistant_file), library="host", max_context_len=512,
                    disable_streaming=True)
    chunks = list(llm.stream("unicode please"))
    assert [c.content for c in chunks] == ["Grüße 你好 🙂!"]
    assert chunks[0].usage_metadata is not None


def test_disable_streaming_for_tool_calling_only_streams_without_tools(
        assistant_file: Path) -> None:
    llm = ChatRKLLM(model_path=str(assistant_file), library="host", max_context_len=512,
                    disable_streaming="tool_calling")
    assert len(list(llm.stream("unicode please"))) > 2
    chunks = list(llm.bind_tools([get_weather]).stream("What is the weather in Paris?"))
    assert len(chunks) == 1
    assert chunks[0].tool_calls[0]["args"] == {"city": "Paris"}


# -- tool calls ------------------------------------------------------------------------------


def test_tool_calls_stream_as_chunks_and_land_on_the_final_message(llm: ChatRKLLM) -> None:
    chunks = list(llm.bind_tools([get_weather]).stream("What is the weather in Paris?"))
    with_calls = [c for c in chunks if c.tool_call_chunks]
    assert len(with_calls) > 1  # the arguments arrive as deltas
    first = with_calls[0].tool_call_chunks[0]
    assert first["name"] == "get_weather" and first["id"] and first["index"] == 0
    args = "".join(c.tool_call_chunks[0]["args"] or "" for c in with_calls)
    assert json.loads(args) == {"city": "Paris"}
    full = _join(chunks)
    assert full.content == "Let me look."  # the newline before <tool_call> is not content
    assert [(c["name"], c["args"]) for c in full.tool_calls] == [("get_weather",
                                                                  {"city": "Paris"})]
    assert full.response_metadata["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("prompt", ["What is the weather in Paris?", "Think about it",
                                    "Weather for two cities please", "stop test"])
def test_a_streamed_message_adds_up_to_the_invoked_one(llm: ChatRKLLM, prompt: str) -> None:
    bound = llm.bind_tools([get_weather], reasoning=True, stop=[" User:"])
    invoked = bound.invoke(prompt)
    streamed = _join(list(bound.stream(prompt)))
    assert streamed.content == invoked.content
    assert streamed.additional_kwargs == invoked.additional_kwargs
    assert [(c["name"], c["args"]) for c in streamed.tool_calls] == [
        (c["name"], c["args"]) for c in invoked.tool_calls]
    assert streamed.usage_metadata == invoked.usage_metadata


def test_invoke_returns_tool_calls_with_ids(llm: ChatRKLLM) -> None:
    ai = llm.bind_tools([get_weather]).invoke("Weather for two cities please")
    assert [(c["name"], c["args"]) for c in ai.tool_calls] == [
        ("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Lyon"})]
    assert len({c["id"] for c in ai.tool_calls}) == 2
    assert ai.response_metadata["finish_reason"] == "tool_calls"
    assert ai.invalid_tool_calls == []


def test_a_malformed_call_is_an_invalid_tool_call_not_an_error(llm: ChatRKLLM) -> None:
    ai = llm.bind_tools([get_weather]).invoke("Use the broken tool")
    assert ai.tool_calls == []
    assert len(ai.invalid_tool_calls) == 1
    invalid = ai.invalid_tool_calls[0]
    assert invalid["name"] == "get_weather" and "city: Paris" in (invalid["args"] or "")
    assert invalid["error"]


def test_tool_choice_auto_lets_the_model_answer_in_text(llm: ChatRKLLM) -> None:
    ai = llm.bind_tools([get_weather], tool_choice="auto").invoke("Hello")
    assert ai.tool_calls == [] and ai.content == "OK, noted."


def test_tool_choice_none_hides_the_tools(llm: ChatRKLLM) -> None:
    ai = llm.bind_tools([get_weather], tool_choice="none").invoke("What is the weather?")
    assert ai.tool_calls == [] and ai.content == "I cannot look up the weather."


@pytest.mark.parametrize("choice", ["any", "required", True])
def test_tool_choice_any_or_required_gets_a_call(llm: ChatRKLLM, choice: Any) -> None:
    ai = llm.bind_tools([get_weather], tool_choice=choice).invoke("Hello")
    assert [c["name"] for c in ai.tool_calls] == ["get_weather"]


@pytest.mark.parametrize("choice", ["get_time", {"type": "function",
                                                 "function": {"name": "get_time"}}])
def test_tool_choice_by_name_gets_that_tool(llm: ChatRKLLM, choice: Any) -> None:
    ai = llm.bind_tools([get_weather, get_time], tool_choice=choice).invoke("Hello")
    assert [(c["name"], c["args"]) for c in ai.tool_calls] == [("get_time", {"city": "Paris"})]


def test_tool_choice_naming_an_unbound_tool_is_refused_at_bind(llm: ChatRKLLM) -> None:
    with pytest.raises(InvalidParameterError, match="names no bound tool"):
        llm.bind_tools([get_weather], tool_choice="get_time")


def test_tools_given_as_dicts_pydantic_models_and_langchain_tools_all_bind(
        llm: ChatRKLLM) -> None:
    from langchain_core.tools import tool

    as_dict = {"type": "function", "function": {
        "name": "get_weather", "description": "Weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
    for tools in ([as_dict], [tool(get_weather)], [City, get_weather]):
        ai = llm.bind_tools(tools).invoke("What is the weather in Paris?")
        assert ai.tool_calls[0]["name"] == "get_weather"


# -- tool-message histories ----------------------------------------------------------------


def _history(tool_message: ToolMessage) -> list[BaseMessage]:
    return [HumanMessage("What is the weather in Paris?"),
            AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "Paris"},
                                       "id": "call_1", "type": "tool_call"}]),
            tool_message]


def test_a_tool_message_with_string_content_is_answered(llm: ChatRKLLM) -> None:
    ai = llm.bind_tools([get_weather]).invoke(_history(
        ToolMessage("sunny, 24 C", tool_call_id="call_1", name="get_weather")))
    assert ai.content == "It is sunny in Paris."


def test_a_tool_message_with_list_content_is_answered(llm: ChatRKLLM) -> None:
    ai = llm.bind_tools([get_weather]).invoke(_history(
        ToolMessage([{"type": "text", "text": "sunny, 24 C"}], tool_call_id="call_1")))
    assert ai.content == "It is sunny in Paris."


def test_a_tool_error_reaches_the_model_as_an_error(llm: ChatRKLLM) -> None:
    ai = llm.bind_tools([get_weather]).invoke(_history(
        ToolMessage("city not found", tool_call_id="call_1", status="error")))
    assert ai.content == "The tool failed; I will not retry."


def test_a_tool_round_trip_reuses_the_kv_cache(llm: ChatRKLLM) -> None:
    bound = llm.bind_tools([get_weather])
    question = HumanMessage("What is the weather in Paris?")
    first = bound.invoke([question])
    assert first.response_metadata["kv_cache_reused"] is False
    result = ToolMessage("sunny", tool_call_id=first.tool_calls[0]["id"])
    second = bound.invoke([question, first, result])
    assert second.content == "It is sunny in Paris."
    assert second.response_metadata["kv_cache_reused"] is True
    assert second.response_metadata["prefill_tokens"] < first.response_metadata[
        "prefill_tokens"]
    assert second.usage_metadata is not None and first.usage_metadata is not None
    assert second.usage_metadata["input_tokens"] > first.usage_metadata["total_tokens"]


def test_content_blocks_and_system_messages_are_accepted(llm: ChatRKLLM) -> None:
    ai = llm.invoke([SystemMessage([{"type": "text", "text": "Be brief."}]),
                     HumanMessage([{"type": "text", "text": "unicode"},
                                   {"type": "text", "text": " please"}])])
    assert ai.content == "Grüße 你好 🙂!"


def test_an_image_url_block_is_refused_with_the_fix(llm: ChatRKLLM) -> None:
    with pytest.raises(InvalidParameterError, match="image_embedding"):
        llm.invoke([HumanMessage([{"type": "image_url",
                                   "image_url": {"url": "data:image/png;base64,AAAA"}}])])


# -- structured output -----------------------------------------------------------------------


@pytest.mark.parametrize("method", ["function_calling", "json_schema"])
def test_structured_output_gives_the_pydantic_object(llm: ChatRKLLM, method: Any) -> None:
    chat = llm.with_structured_output(City, method=method)
    assert chat.invoke("city json please") == City(name="Paris", country="France")
    assert list(chat.stream("city json please"))[-1] == City(name="Paris", country="France")


def test_structured_output_with_a_json_schema_gives_a_dict(llm: ChatRKLLM) -> None:
    schema = City.model_json_schema()
    for method in ("function_calling", "json_schema"):
        chat = llm.with_structured_output(schema, method=method)  # type: ignore[arg-type]
        assert chat.invoke("city json please") == {"name": "Paris", "country": "France"}


def test_json_mode_gives_a_dict_or_the_model(llm: ChatRKLLM) -> None:
    assert llm.with_structured_output(method="json_mode").invoke("city json please") == {
        "name": "Paris", "country": "France"}
    assert llm.with_structured_output(City, method="json_mode").invoke(
        "city json please") == City(name="Paris", country="France")


def test_include_raw_gives_raw_parsed_and_no_error(llm: ChatRKLLM) -> None:
    for method in ("function_calling", "json_schema", "json_mode"):
        out = llm.with_structured_output(City, method=method,  # type: ignore[arg-type]
                                         include_raw=True).invoke("city json please")
        assert isinstance(out, dict)
        assert isinstance(out["raw"], AIMessage)
        assert out["parsed"] == City(name="Paris", country="France")
        assert out["parsing_error"] is None


def test_a_reply_that_is_not_json_is_repaired_once(llm: ChatRKLLM) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"},
                                               "days": {"type": "integer"}},
              "required": ["city", "days"]}
    out = llm.with_structured_output(schema, method="json_schema").invoke("bad json")
    assert out == {"city": "Paris", "days": 3}


def test_include_raw_reports_a_reply_that_stays_invalid(make_file: Any) -> None:
    path = make_file("stubborn.scripted", 'RKLLM-SCRIPTED 1\ndefault reply "no json"\n')
    llm = ChatRKLLM(model_path=str(path), library="host", max_context_len=512)
    out = llm.with_structured_output(City, method="json_schema", include_raw=True).invoke("x")
    assert isinstance(out, dict)
    assert out["parsed"] is None and out["parsing_error"] is not None
    assert out["raw"].content == "no json"
    with pytest.raises(OutputParserException, match="no json"):
        llm.with_structured_output(City, method="json_schema").invoke("x")


def test_structured_output_traces_its_schema(llm: ChatRKLLM) -> None:
    options: list[Any] = []

    class Options(BaseCallbackHandler):
        def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
            options.append(kwargs.get("options"))

    llm.with_structured_output(City, method="json_schema").invoke(
        "city json please", config={"callbacks": [Options()]})
    assert options[0]["ls_structured_output_format"]["schema"]["title"] == "City"


def test_async_structured_output(llm: ChatRKLLM) -> None:
    chat = llm.with_structured_output(City, method="json_schema")
    assert asyncio.run(chat.ainvoke("city json please")) == City(name="Paris",
                                                                 country="France")


# -- metadata ---------------------------------------------------------------------------------


def test_usage_and_response_metadata(llm: ChatRKLLM, assistant_file: Path, backend: str) -> None:
    ai = llm.invoke("unicode please")
    usage = ai.usage_metadata
    assert usage is not None
    meta = ai.response_metadata
    assert usage["input_tokens"] == meta["prefill_tokens"] > 0  # nothing was cached yet
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert usage["output_tokens"] >= len(["Grüße", "你好", "🙂!"])
    # a model on a board's server is named by the id it is served under
    assert meta["model_name"] == (llm.client.model if backend == "remote" else
                                  assistant_file.name)
    assert meta["model_provider"] == "rkllm"
    assert meta["finish_reason"] == "stop"
    assert meta["runtime_release"] == "1.3.0"
    assert meta["chat_mode"] == "native"
    # the runtime's own timings: positive, and the rate is the decoded tokens over the decode time
    assert meta["prefill_ms"] > 0 and meta["decode_ms"] > 0
    assert meta["tokens_per_second"] == pytest.approx(
        usage["output_tokens"] * 1000 / meta["decode_ms"], rel=1e-3)


def test_streamed_usage_equals_invoked_usage(assistant_file: Path, make_file: Any) -> None:
    a = ChatRKLLM(model_path=str(assistant_file), library="host", max_context_len=512)
    invoked = a.invoke("unicode please").usage_metadata
    a.invoke("Hello")  # diverge, so the next call starts from an empty cache too
    second = ChatRKLLM(model_path=str(make_file("copy.scripted", assistant_file.read_text())),
                       library="host", max_context_len=512)
    streamed = _join(list(second.stream("unicode please"))).usage_metadata
    assert streamed == invoked


def test_max_tokens_cuts_the_reply_with_finish_reason_length(llm: ChatRKLLM) -> None:
    ai = llm.invoke("unicode please", max_tokens=2)
    assert ai.response_metadata["finish_reason"] == "length"
    assert ai.usage_metadata is not None and ai.usage_metadata["output_tokens"] == 2


def test_ls_params_for_tracing(assistant_file: Path) -> None:
    llm = ChatRKLLM(model_path=str(assistant_file), library="host", max_context_len=512,
                    temperature=0.2, max_tokens=7, stop=["x"])
    params = llm._get_ls_params()
    assert params == {"ls_provider": "rkllm", "ls_model_type": "chat",
                      "ls_model_name": "assistant.scripted", "ls_temperature": 0.2,
                      "ls_max_tokens": 7, "ls_stop": ["x"]}


def test_a_call_may_name_another_model_file(llm: ChatRKLLM, make_file: Any, backend: str) -> None:
    if backend == "remote":
        pytest.skip("a server names its models by id, not by file: tests/remote covers model=")
    other = make_file("other.scripted", 'RKLLM-SCRIPTED 1\ndefault reply "Other model."\n')
    ai = llm.invoke("Hello", model=str(other))
    assert ai.content == "Other model."
    assert ai.response_metadata["model_name"] == "other.scripted"
    assert llm.invoke("Hello").content == "OK, noted."


# -- reasoning and stop sequences ------------------------------------------------------------


def test_reasoning_goes_to_reasoning_content_never_to_content(llm: ChatRKLLM) -> None:
    ai = llm.invoke("Think about it", reasoning=True)
    assert ai.content == "Done thinking."
    assert ai.additional_kwargs["reasoning_content"] == "Let me see."
    chunks = list(llm.stream("Think about it", reasoning=True))
    streamed = "".join(c.additional_kwargs.get("reasoning_content", "") for c in chunks)
    assert streamed == "Let me see."
    assert "".join(str(c.content) for c in chunks) == "Done thinking."


def test_the_reasoning_switch_maps_to_enable_thinking(assistant_file: Path) -> None:
    thinking = ChatRKLLM(model_path=str(assistant_file), library="host", max_context_len=512,
                         reasoning=True)
    assert thinking.invoke("Think about it").additional_kwargs == {
        "reasoning_content": "Let me see."}
    quiet = ChatRKLLM(model_path=str(assistant_file), library="host", max_context_len=512,
                      reasoning=False)
    ai = quiet.invoke("Think about it")
    assert ai.content == "Done thinking." and "reasoning_content" not in ai.additional_kwargs


def test_a_stop_sequence_cuts_the_reply_exactly(llm: ChatRKLLM) -> None:
    ai = llm.invoke("stop test", stop=[" User:"])
    assert ai.content == "Hello there."
    assert ai.response_metadata["finish_reason"] == "stop"
    assert ai.response_metadata["stop_sequence"] == " User:"
    streamed = "".join(str(c.content) for c in llm.stream("stop test", stop=[" User:"]))
    assert streamed == "Hello there."


def test_a_stop_sequence_set_at_init_applies_and_a_call_overrides_it(
        assistant_file: Path) -> None:
    llm = ChatRKLLM(model_path=str(assistant_file), library="host", max_context_len=512,
                    stop=[" User:"])
    assert llm.invoke("stop test").content == "Hello there."
    assert llm.invoke("stop test", stop=["there"]).content == "Hello "
