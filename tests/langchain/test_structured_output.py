"""``with_structured_output`` with nested pydantic models (a list of sub-models, an optional
sub-model, an enum, a dict of sub-models), for the json_schema and function_calling methods:
a wrong reply is repaired with the validator's message, a reply wrong twice reaches LangChain's
error surface with the model's text, a right reply passes in one run, and cancelling an
``ainvoke`` aborts the run on the model.

The scripted order model and its replies are the ones of tests/chat/test_structured.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from langchain_core.exceptions import OutputParserException

from langchain_rkllm import ChatRKLLM
from rkllm_core import RKLLM as CoreRKLLM
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


@pytest.fixture(params=["json_schema", "function_calling"])
def method(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def llm(method: str, make_file: Callable[[str, str], Path]) -> ChatRKLLM:
    """A fresh scripted order model whose replies follow ``method``."""
    path = make_file("orders.scripted", order_model(tools=method == "function_calling"))
    return ChatRKLLM(model=str(path), library="host", max_context_len=4096, max_tokens=512)


def stubborn_reply(method: str) -> str:
    """The model's text for the second, still wrong, reply to "stubborn please"."""
    return order_reply(STRINGS, tools=method == "function_calling")


def test_a_wrong_reply_is_repaired_with_the_validator_message(llm: ChatRKLLM,
                                                              method: Any) -> None:
    # items as numbers: only a repair turn quoting NUMBERS_ERROR gets the right order back
    chat = llm.with_structured_output(Order, method=method)
    assert chat.invoke("numbers please") == Order.model_validate(GOOD)
    assert asyncio.run(chat.ainvoke("numbers please")) == Order.model_validate(GOOD)


def test_a_reply_wrong_twice_is_a_parser_exception_with_the_model_text(
        llm: ChatRKLLM, method: Any) -> None:
    chat = llm.with_structured_output(Order, method=method)
    with pytest.raises(OutputParserException) as info:
        chat.invoke("stubborn please")
    assert STRINGS_ERROR in str(info.value)
    assert info.value.llm_output == stubborn_reply(method)
    with pytest.raises(OutputParserException, match=r"\$\.items\[0\]: 'tea'"):
        asyncio.run(chat.ainvoke("stubborn please"))


def test_include_raw_reports_a_reply_wrong_twice(llm: ChatRKLLM, method: Any) -> None:
    out = llm.with_structured_output(Order, method=method, include_raw=True).invoke(
        "stubborn please")
    assert isinstance(out, dict)
    assert out["parsed"] is None
    assert isinstance(out["parsing_error"], OutputParserException)
    assert STRINGS_ERROR in str(out["parsing_error"])
    assert out["raw"].content == stubborn_reply(method)


def test_a_dict_schema_reply_wrong_twice_is_not_returned_as_valid(llm: ChatRKLLM,
                                                                  method: Any) -> None:
    # LangChain's parsers do not validate a dict schema: the engine's verdict must reach them
    chat = llm.with_structured_output(Order.model_json_schema(), method=method)
    assert chat.invoke("numbers please") == GOOD
    with pytest.raises(OutputParserException, match=r"\$\.items\[0\]: 'tea'"):
        chat.invoke("stubborn please")


def test_a_right_reply_passes_untouched_in_one_run(llm: ChatRKLLM, method: Any) -> None:
    out = llm.with_structured_output(Order, method=method, include_raw=True).invoke(
        "right please")
    assert isinstance(out, dict)
    assert out["parsed"] == Order.model_validate(GOOD)  # not ALSO_GOOD: no repair turn ran
    assert out["parsing_error"] is None
    assert "structured_output_error" not in out["raw"].response_metadata


def test_cancelling_a_structured_ainvoke_aborts_the_run(
        make_file: Callable[[str, str], Path]) -> None:
    model = CoreRKLLM(make_file("slow.scripted", SLOW_MODEL), library="host",
                      max_context_len=2048, abort_grace=ABORT_GRACE)
    llm = ChatRKLLM(client=model)
    chat = llm.with_structured_output(Order, method="json_schema")

    async def main() -> tuple[float, str]:
        cancelled = await cancel_mid_run(model, chat.ainvoke("order please"))
        return await first_token_after(cancelled, (
            str(chunk.content) async for chunk in llm.astream("short")))

    waited, text = asyncio.run(main())
    # a run left going would finish its 3.7 s of reply before the next call could start
    assert text == "ok" and waited < ABORT_GRACE
    assert not model.is_running
    model.close()
