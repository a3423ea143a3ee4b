"""RKLLM as a LlamaIndex FunctionCallingLLM on the host runtime's scripted engine."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from llama_index.core.base.llms.types import ThinkingBlock, ToolCallBlock
from llama_index.core.callbacks import (
    CallbackManager,
    CBEventType,
    LlamaDebugHandler,
    TokenCountingHandler,
)
from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.llms import ChatMessage
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool
from pydantic import BaseModel, Field

from llama_index_rkllm import RKLLM, RKLLMEmbedding
from llama_index_rkllm._convert import to_chat_messages
from rkllm_core import RKLLM as CoreRKLLM
from rkllm_core.errors import UnsupportedFeatureError


class City(BaseModel):
    """A city."""

    name: str
    country: str
    population_millions: int


def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def user(text: str) -> list[ChatMessage]:
    return [ChatMessage(role="user", content=text)]


@pytest.fixture
def paced_file(tmp_path: Path) -> Path:
    """A model that decodes 25 tokens a second, as a small model on an NPU might."""
    path = tmp_path / "paced.scripted"
    path.write_text('RKLLM-SCRIPTED 1\ndecode_tokens_per_second = 25\n'
                    'default reply "One two three four five six seven eight."\n')
    return path


def test_metadata_comes_from_the_loaded_model(model_file: Path) -> None:
    llm = RKLLM(model_path=str(model_file), library="host", max_context_len=2048)
    meta = llm.metadata
    assert (meta.context_window, meta.num_output) == (2048, llm.client.params.max_new_tokens)
    assert meta.is_chat_model and meta.is_function_calling_model
    assert meta.model_name == "assistant.scripted"
    assert RKLLM(model_path=str(model_file), library="host", max_context_len=2048,
                 max_tokens=64).metadata.num_output == 64


def test_objects_with_the_same_file_and_settings_share_one_model(model_file: Path) -> None:
    a = RKLLM(model_path=str(model_file), library="host", max_context_len=1024)
    b = RKLLM(model_path=str(model_file), library="host", max_context_len=1024)
    embed = RKLLMEmbedding(model_path=str(model_file), library="host", max_context_len=1024)
    assert a.client is b.client is embed.client
    with CoreRKLLM(model_file, library="host", max_context_len=1024) as core:
        wrapped = RKLLM(client=core)
        assert wrapped.client is core and wrapped.model_path == str(model_file)
        assert wrapped.complete("Hello").text == "I do not know."


def test_chat_puts_usage_in_raw_and_additional_kwargs(llm: RKLLM) -> None:
    response = llm.chat(user("How much RAM has the Rock 5B with 16 GB?"))
    assert response.message.content == "The Rock 5B has 16 GB of RAM."
    assert isinstance(response.raw, dict)
    usage = response.raw["usage"]
    assert usage["completion_tokens"] > 0 and usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert response.additional_kwargs == usage
    assert response.raw["finish_reason"] == "stop" and response.raw["runtime_release"]


def test_stream_chat_delivers_deltas_as_the_runtime_emits_them(paced_file: Path) -> None:
    llm = RKLLM(model_path=str(paced_file), library="host", max_context_len=1024)
    start = time.monotonic()
    arrivals, deltas, last = [], [], None
    for response in llm.stream_chat(user("Count")):
        arrivals.append(time.monotonic() - start)
        deltas.append(response.delta)
        last = response
    assert deltas == ["One", " two", " three", " four", " five", " six", " seven", " eight",
                      ".", ""]
    assert last is not None and last.message.content == "One two three four five six seven eight."
    # at 25 tokens/s the first word arrives long before the last one
    assert arrivals[-1] - arrivals[0] > 0.2
    assert isinstance(last.raw, dict) and last.raw["usage"]["completion_tokens"] == 9


def test_async_calls_never_block_the_event_loop(paced_file: Path) -> None:
    llm = RKLLM(model_path=str(paced_file), library="host", max_context_len=1024)
    embed = RKLLMEmbedding(client=llm.client)

    async def main() -> tuple[int, str, str, int]:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        chat = await llm.achat(user("Count"))
        streamed = "".join([r.delta or "" async for r in await llm.astream_chat(user("Go"))])
        completion = await llm.acomplete("Count")
        vectors = await embed.aget_text_embedding_batch(["a", "b"])
        done.set()
        await task
        assert completion.text == chat.message.content
        return ticks, chat.message.content or "", streamed, len(vectors)

    ticks, text, streamed, n_vectors = asyncio.run(main())
    assert text == streamed == "One two three four five six seven eight."
    assert n_vectors == 2
    assert ticks > 20  # ~0.7 s of decoding: the loop kept running throughout


def test_complete_and_stream_complete_apply_completion_to_prompt(model_file: Path) -> None:
    llm = RKLLM(model_path=str(model_file), library="host", max_context_len=1024,
                completion_to_prompt=lambda p: f"Rock 5B question: {p}")
    assert llm.complete("does it have 16 GB?").text == "The Rock 5B has 16 GB of RAM."
    assert llm.complete("does it have 16 GB?", formatted=True).text == "I do not know."
    chunks = list(llm.stream_complete("16 GB?"))
    assert "".join(c.delta or "" for c in chunks) == "The Rock 5B has 16 GB of RAM."
    assert chunks[-1].text == "The Rock 5B has 16 GB of RAM."
    assert isinstance(chunks[-1].raw, dict) and chunks[-1].raw["usage"]["completion_tokens"]


def test_messages_to_prompt_sends_the_conversation_as_one_formatted_turn(
        model_file: Path) -> None:
    seen: list[int] = []

    def to_prompt(messages: Any) -> str:
        seen.append(len(messages))
        return "\n".join(f"{m.role.value}> {m.content}" for m in messages)

    llm = RKLLM(model_path=str(model_file), library="host", max_context_len=1024,
                messages_to_prompt=to_prompt)
    history = [ChatMessage(role="user", content="My name is Alice."),
               ChatMessage(role="assistant", content="Hello Alice."),
               ChatMessage(role="user", content="What is my name?")]
    assert llm.chat(history).message.content == "Your name is Alice."
    assert seen == [3]


def test_reasoning_goes_to_a_thinking_block_never_into_content(model_file: Path) -> None:
    llm = RKLLM(model_path=str(model_file), library="host", max_context_len=1024,
                reasoning=True)
    response = llm.chat(user("Think about it"))
    assert response.message.content == "Done thinking."
    thinking = [b for b in response.message.blocks if isinstance(b, ThinkingBlock)]
    assert [b.content for b in thinking] == ["Let me consider."]
    streamed = list(llm.stream_chat(user("Think about it")))
    thought = "".join(r.additional_kwargs.get("thinking_delta", "") for r in streamed)
    assert thought.strip() == "Let me consider."
    assert "".join(r.delta or "" for r in streamed) == "Done thinking."


def test_chat_with_tools_returns_tool_call_blocks(llm: RKLLM) -> None:
    tool = FunctionTool.from_defaults(get_weather)
    response = llm.chat_with_tools([tool], user_msg="What is the weather in Paris?")
    [block] = [b for b in response.message.blocks if isinstance(b, ToolCallBlock)]
    assert (block.tool_name, block.tool_kwargs) == ("get_weather", {"city": "Paris"})
    assert response.message.content == "Let me check."
    assert response.message.additional_kwargs["tool_calls"][0]["function"]["name"] == \
        "get_weather"
    [call] = llm.get_tool_calls_from_response(response)
    assert (call.tool_id, call.tool_name, call.tool_kwargs) == (
        block.tool_call_id, "get_weather", {"city": "Paris"})
    assert call.tool_id.startswith("call_")
    assert isinstance(response.raw, dict) and response.raw["finish_reason"] == "tool_calls"
    # the assistant turn converts back into the chat layer's tool call
    [core] = to_chat_messages([response.message])
    assert core.tool_calls[0].name == "get_weather" and core.content == "Let me check."


def test_no_tool_call_raises_only_when_asked_to(llm: RKLLM) -> None:
    response = llm.chat_with_tools([FunctionTool.from_defaults(get_weather)], user_msg="Hi")
    assert llm.get_tool_calls_from_response(response, error_on_no_tool_call=False) == []
    with pytest.raises(ValueError, match="Expected at least one tool call"):
        llm.get_tool_calls_from_response(response)


def test_stream_chat_with_tools_streams_argument_deltas(llm: RKLLM) -> None:
    tool = FunctionTool.from_defaults(get_weather)
    responses = list(llm.stream_chat_with_tools([tool], user_msg="Weather in Paris?"))
    partial = [r for r in responses[:-1]
               if any(isinstance(b, ToolCallBlock) for b in r.message.blocks)]
    arguments = [next(b for b in r.message.blocks if isinstance(b, ToolCallBlock)).tool_kwargs
                 for r in partial]
    # the arguments grow piece by piece as a string, then the final turn holds the dict
    texts = [a for a in arguments if isinstance(a, str)]
    assert len(texts) == len(arguments) > 2
    assert texts == sorted(texts, key=len) and texts[-1].startswith('{"city"')
    final = responses[-1]
    [call] = llm.get_tool_calls_from_response(final)
    assert call.tool_kwargs == {"city": "Paris"}
    # partial calls already parse into selections an agent can show
    assert llm.get_tool_calls_from_response(partial[0], error_on_no_tool_call=False)[0] \
        .tool_name == "get_weather"


def test_tool_required_is_honoured(llm: RKLLM, tmp_path: Path) -> None:
    stubborn = tmp_path / "stubborn.scripted"
    stubborn.write_text('RKLLM-SCRIPTED 1\nwhen contains "tool call now" tools yes reply '
                        '"<tool_call>{\\"name\\": \\"get_weather\\", \\"arguments\\": '
                        '{\\"city\\": \\"Oslo\\"}}</tool_call>"\ndefault reply "No tools."\n')
    llm = RKLLM(model_path=str(stubborn), library="host", max_context_len=1024)
    tool = FunctionTool.from_defaults(get_weather)
    assert llm.chat_with_tools([tool], user_msg="Hi").message.content == "No tools."
    forced = llm.chat_with_tools([tool], user_msg="Hi", tool_required=True)
    assert llm.get_tool_calls_from_response(forced)[0].tool_kwargs == {"city": "Oslo"}


def test_structured_predict_returns_a_validated_pydantic_object(llm: RKLLM) -> None:
    prompt = PromptTemplate("Describe {city}.")
    city = llm.structured_predict(City, prompt, city="Paris")
    assert city == City(name="Paris", country="France", population_millions=2)
    assert asyncio.run(llm.astructured_predict(City, prompt, city="Paris")) == city
    streamed = list(llm.stream_structured_predict(City, prompt, city="Paris"))
    assert streamed[-1] == city


def test_structured_predict_by_json_schema(model_file: Path) -> None:
    llm = RKLLM(model_path=str(model_file), library="host", max_context_len=1024,
                structured_output_method="json_schema")
    city = llm.structured_predict(City, PromptTemplate("JSON city {name}"), name="Paris")
    assert city == City(name="Paris", country="France", population_millions=2)


class _Recorder(BaseEventHandler):
    events: list[str] = Field(default_factory=list)

    @classmethod
    def class_name(cls) -> str:
        return "Recorder"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        self.events.append(event.class_name())


def test_callbacks_and_instrumentation_fire(llm: RKLLM) -> None:
    debug = LlamaDebugHandler()
    llm.callback_manager = CallbackManager([debug])
    recorder = _Recorder()
    root = get_dispatcher()
    root.add_event_handler(recorder)
    try:
        llm.chat(user("Hi"))
        list(llm.stream_chat(user("Hi")))
        llm.complete("Hi")
    finally:
        root.event_handlers.remove(recorder)
    assert len(debug.get_event_pairs(CBEventType.LLM)) == 3
    names = recorder.events
    assert names.count("LLMChatStartEvent") == 2 and names.count("LLMChatEndEvent") == 2
    assert "LLMChatInProgressEvent" in names
    assert names.count("LLMCompletionStartEvent") == 1
    assert names.count("LLMCompletionEndEvent") == 1


def test_parallel_tool_calls_are_cut_to_one_unless_allowed(tmp_path: Path) -> None:
    two = tmp_path / "two.scripted"
    call = ('<tool_call>{{\\"name\\": \\"get_weather\\", \\"arguments\\": '
            '{{\\"city\\": \\"{}\\"}}}}</tool_call>')
    two.write_text('RKLLM-SCRIPTED 1\nwhen tools yes reply "' + call.format("Paris") + "\\n"
                   + call.format("Oslo") + '"\n')
    llm = RKLLM(model_path=str(two), library="host", max_context_len=1024)
    tool = FunctionTool.from_defaults(get_weather)
    single = llm.chat_with_tools([tool], user_msg="Weather in Paris and Oslo?")
    assert [c.tool_kwargs["city"] for c in llm.get_tool_calls_from_response(single)] == [
        "Paris"]
    assert len(single.message.additional_kwargs["tool_calls"]) == 1
    both = llm.chat_with_tools([tool], user_msg="Weather in Paris and Oslo?",
                               allow_parallel_tool_calls=True)
    assert [c.tool_kwargs["city"] for c in llm.get_tool_calls_from_response(both)] == [
        "Paris", "Oslo"]


def test_structured_predict_fires_its_instrumentation_events(llm: RKLLM) -> None:
    recorder = _Recorder()
    root = get_dispatcher()
    root.add_event_handler(recorder)
    counter = TokenCountingHandler(tokenizer=str.split)  # no tiktoken download
    llm.callback_manager = CallbackManager([counter])
    try:
        llm.structured_predict(City, PromptTemplate("Describe {city}."), city="Paris")
    finally:
        root.event_handlers.remove(recorder)
    assert recorder.events == ["LLMStructuredPredictStartEvent", "LLMChatStartEvent",
                               "LLMChatEndEvent", "LLMStructuredPredictEndEvent"]
    # the token counter reads the runtime's own counts from the response's usage
    [count] = counter.llm_token_counts
    assert count.prompt_token_count > 0 and count.completion_token_count > 10


def test_leaving_a_stream_early_aborts_the_run_and_the_model_stays_usable(
        tmp_path: Path) -> None:
    path = tmp_path / "slow.scripted"
    path.write_text('RKLLM-SCRIPTED 1\ndecode_tokens_per_second = 5\n'
                    'when contains "again" reply "Yes."\n'
                    'default reply "One two three four five six seven eight."\n')
    llm = RKLLM(model_path=str(path), library="host", max_context_len=1024)
    start = time.monotonic()
    for response in llm.stream_chat(user("Count")):
        if response.delta == " two":
            break
    assert llm.chat(user("Again")).message.content == "Yes."
    # ~0.8 s when the first run is aborted; 2.2 s if its 7 remaining tokens were decoded
    assert time.monotonic() - start < 1.5


def test_per_call_sampling_changes_only_the_fields_given(model_file: Path) -> None:
    # runtime 1.2.3 fixes sampling at load time: a call may only repeat the loaded values, and
    # giving top_k must not reset the loaded temperature to Rockchip's default
    llm = RKLLM(model_path=str(model_file), library="host", runtime_version="1.2.3",
                max_context_len=1024, temperature=0.2, top_k=5)
    assert llm.chat(user("Hi"), top_k=5).message.content == "I do not know."
    with pytest.raises(UnsupportedFeatureError, match="temperature"):
        llm.chat(user("Hi"), temperature=0.7)


def test_a_deep_copy_shares_the_loaded_model(llm: RKLLM) -> None:
    import copy

    twin = copy.deepcopy(llm)
    assert twin is not llm and twin.client is llm.client and twin.engine is llm.engine
    embed = copy.deepcopy(RKLLMEmbedding(client=llm.client))
    assert embed.client is llm.client


def test_as_structured_llm_answers_with_the_pydantic_object(llm: RKLLM) -> None:
    response = llm.as_structured_llm(City).chat(user("Describe Paris"))
    assert response.raw == City(name="Paris", country="France", population_millions=2)
