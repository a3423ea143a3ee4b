"""``structured_predict`` / ``astructured_predict`` with nested pydantic models (a list of
sub-models, an optional sub-model, an enum, a dict of sub-models), for the function_calling and
json_schema methods: a wrong reply is repaired with the validator's message, a reply wrong twice
raises StructuredOutputError with the model's text, a right reply passes in one run, and
cancelling ``astructured_predict`` (or its stream) aborts the run on the model.

The scripted order model and its replies are the ones of tests/chat/test_structured.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from llama_index.core.llms import ChatMessage
from llama_index.core.prompts import PromptTemplate
from pydantic import BaseModel, field_validator

from llama_index_rkllm import RKLLM
from rkllm_core import RKLLM as CoreRKLLM
from rkllm_core.chat.structured import StructuredOutputError
from tests.chat.test_structured import (
    ABORT_GRACE,
    GOOD,
    SLOW_MODEL,
    STRINGS,
    STRINGS_ERROR,
    Order,
    cancel_mid_run,
    first_token_after,
    order_model,
    order_reply,
)


class ShoutedItem(BaseModel):
    name: str
    qty: int

    @field_validator("name")
    @classmethod
    def upper_case(cls, name: str) -> str:
        if name != name.upper():
            raise ValueError("the name must be upper case")
        return name


class ShoutedOrder(BaseModel):
    """A validator JSON Schema cannot express: the schema accepts any name."""

    items: list[ShoutedItem]


QUIET = {"items": [{"name": "tea", "qty": 2}]}
LOUD = {"items": [{"name": "TEA", "qty": 2}]}
PROMPT = PromptTemplate("{request}")
METHODS = ["function_calling", "json_schema"]


@pytest.fixture(params=METHODS)
def method(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def llm(method: Any, tmp_path: Path) -> RKLLM:
    """A fresh scripted order model whose replies follow ``method``."""
    tools = method == "function_calling"
    path = tmp_path / "orders.scripted"
    path.write_text(order_model(tools, first=[
        # pydantic's message in the repair turn: "whisper" stays quiet, "shout" obeys it
        ('contains "must be upper case" remembers "whisper please"',
         order_reply(QUIET, tools, "ShoutedOrder")),
        ('contains "must be upper case"', order_reply(LOUD, tools, "ShoutedOrder")),
        ('contains "shout please"', order_reply(QUIET, tools, "ShoutedOrder")),
        ('contains "whisper please"', order_reply(QUIET, tools, "ShoutedOrder"))]))
    return RKLLM(model_path=str(path), library="host", max_context_len=4096, max_tokens=512,
                 structured_output_method=method)


def test_a_wrong_reply_is_repaired_with_the_validator_message(llm: RKLLM) -> None:
    # items as numbers: only a repair turn quoting NUMBERS_ERROR gets the right order back
    assert llm.structured_predict(Order, PROMPT, request="numbers please") == \
        Order.model_validate(GOOD)
    assert asyncio.run(llm.astructured_predict(Order, PROMPT, request="numbers please")) == \
        Order.model_validate(GOOD)


def test_a_reply_wrong_twice_raises_with_the_model_text(llm: RKLLM, method: str) -> None:
    stubborn = order_reply(STRINGS, tools=method == "function_calling")
    with pytest.raises(StructuredOutputError) as info:
        llm.structured_predict(Order, PROMPT, request="stubborn please")
    assert STRINGS_ERROR in str(info.value)
    assert info.value.raw == stubborn
    with pytest.raises(StructuredOutputError) as async_info:
        asyncio.run(llm.astructured_predict(Order, PROMPT, request="stubborn please"))
    assert async_info.value.raw == stubborn


def test_a_right_reply_passes_untouched_in_one_run(llm: RKLLM) -> None:
    # not ALSO_GOOD: no repair turn ran
    assert llm.structured_predict(Order, PROMPT, request="right please") == \
        Order.model_validate(GOOD)


def test_a_value_pydantic_refuses_gets_the_repair_turn_with_pydantic_message(
        llm: RKLLM) -> None:
    # the schema accepts "tea"; the validator does not, and its message repairs the reply
    assert llm.structured_predict(ShoutedOrder, PROMPT, request="shout please") == \
        ShoutedOrder.model_validate(LOUD)
    assert asyncio.run(llm.astructured_predict(ShoutedOrder, PROMPT, request="shout please")) \
        == ShoutedOrder.model_validate(LOUD)


def test_a_value_pydantic_refuses_twice_raises_with_the_model_text(
        llm: RKLLM, method: str) -> None:
    async def apredict() -> object:
        return await llm.astructured_predict(ShoutedOrder, PROMPT, request="whisper please")

    for predict in (lambda: llm.structured_predict(ShoutedOrder, PROMPT,
                                                   request="whisper please"),
                    lambda: asyncio.run(apredict())):
        with pytest.raises(StructuredOutputError) as info:
            predict()
        assert "the name must be upper case" in str(info.value)
        assert info.value.raw == order_reply(QUIET, method == "function_calling",
                                             "ShoutedOrder")


# -- cancellation --------------------------------------------------------------------------


def slow_llm(tmp_path: Path, method: Any = "function_calling") -> tuple[CoreRKLLM, RKLLM]:
    path = tmp_path / "slow.scripted"
    path.write_text(SLOW_MODEL)
    model = CoreRKLLM(path, library="host", max_context_len=2048, abort_grace=ABORT_GRACE)
    return model, RKLLM(client=model, structured_output_method=method)


async def next_call(llm: RKLLM, cancelled: float) -> tuple[float, str]:
    stream = await llm.astream_chat([ChatMessage(role="user", content="short")])
    return await first_token_after(cancelled, (r.delta or "" async for r in stream))


def assert_aborted(model: CoreRKLLM, waited: float, text: str) -> None:
    # a run left going would finish its 3.7 s of reply before the next call could start
    assert text == "ok" and waited < ABORT_GRACE
    assert not model.is_running
    model.close()


@pytest.mark.parametrize("structured_method", METHODS)
def test_cancelling_astructured_predict_aborts_the_run(tmp_path: Path,
                                                       structured_method: Any) -> None:
    model, llm = slow_llm(tmp_path, structured_method)

    async def main() -> tuple[float, str]:
        cancelled = await cancel_mid_run(model, llm.astructured_predict(
            Order, PROMPT, request="order please"))
        return await next_call(llm, cancelled)

    assert_aborted(model, *asyncio.run(main()))


def test_cancelling_astream_structured_predict_aborts_the_run(tmp_path: Path) -> None:
    model, llm = slow_llm(tmp_path)

    async def consume() -> None:
        stream: AsyncIterator[Any] = await llm.astream_structured_predict(
            Order, PROMPT, request="order please")
        async for _ in stream:
            pass

    async def main() -> tuple[float, str]:
        cancelled = await cancel_mid_run(model, consume())
        return await next_call(llm, cancelled)

    assert_aborted(model, *asyncio.run(main()))
