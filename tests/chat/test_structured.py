"""The structured-output check: a Draft 2020-12 validator over the whole schema.

Each nesting case below is one the hand-written subset it replaced let through: it followed
``$ref`` only for direct properties (and against the wrong document below the first level), and
ignored ``items`` refs, ``allOf``, ``additionalProperties`` and the alternatives of ``anyOf`` /
``oneOf``.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from rkllm_core import RKLLM
from rkllm_core.chat.engine import ChatEngine
from rkllm_core.chat.messages import ChatMessage
from rkllm_core.chat.structured import (
    StructuredOutputError,
    arguments_error,
    check_reply,
    check_schema,
    schema_errors,
)
from rkllm_core.errors import InvalidParameterError


class Item(BaseModel):
    name: str
    qty: int


class Color(Enum):
    RED = "red"
    BLUE = "blue"


class Address(BaseModel):
    city: str
    zip: str


class Customer(BaseModel):
    name: str
    address: Address


class Order(BaseModel):
    items: list[Item]
    note: Item | None = None
    color: Color
    extras: dict[str, Item]
    tags: list[Color] = []
    customer: Customer | None = None


ORDER = Order.model_json_schema()
GOOD: dict[str, Any] = {"items": [{"name": "tea", "qty": 2}], "note": None, "color": "red",
                        "extras": {"gift": {"name": "card", "qty": 1}}, "tags": ["blue"],
                        "customer": {"name": "Ann", "address": {"city": "Oslo", "zip": "0150"}}}


def order(**changes: Any) -> dict[str, Any]:
    return {**GOOD, **changes}


def test_a_valid_nested_order_has_no_errors() -> None:
    assert schema_errors(GOOD, ORDER) == []
    assert check_reply(json.dumps(GOOD), ORDER) == (GOOD, None)


# -- each nesting form, with the validator's message and the JSON path -----------------------


def test_a_ref_under_items_is_followed() -> None:
    assert schema_errors(order(items=[3, "tea"]), ORDER) == [
        "$.items[0]: 3 is not of type 'object'", "$.items[1]: 'tea' is not of type 'object'"]
    assert schema_errors(order(items=[{"name": "tea", "qty": "two"}]), ORDER) == [
        "$.items[0].qty: 'two' is not of type 'integer'"]


def test_an_optional_sub_model_is_checked_through_anyof() -> None:
    assert schema_errors(order(note={"name": "x", "qty": "two"}), ORDER) == [
        "$.note.qty: 'two' is not of type 'integer'"]
    assert schema_errors(order(note=3), ORDER) == [
        "$.note: 3 is not valid under any of the given schemas"]
    assert schema_errors(order(note=None), ORDER) == []


def test_oneof_needs_exactly_one_alternative() -> None:
    schema = {"$defs": {"Cat": {"type": "object", "properties": {"meows": {"type": "boolean"}},
                                "required": ["meows"]},
                        "Dog": {"type": "object", "properties": {"barks": {"type": "boolean"}},
                                "required": ["barks"]}},
              "type": "object", "properties": {"pet": {"oneOf": [{"$ref": "#/$defs/Cat"},
                                                                 {"$ref": "#/$defs/Dog"}]}}}
    assert schema_errors({"pet": {"meows": True}}, schema) == []
    assert schema_errors({"pet": {"meows": "yes"}}, schema) == [
        "$.pet.meows: 'yes' is not of type 'boolean'"]
    both = schema_errors({"pet": {"meows": True, "barks": False}}, schema)
    assert len(both) == 1 and both[0].startswith("$.pet: ") and "valid under each of" in both[0]


def test_allof_applies_every_part() -> None:
    schema = {"$defs": {"Item": Item.model_json_schema()},
              "type": "object",
              "properties": {"main": {"allOf": [{"$ref": "#/$defs/Item"}],
                                      "description": "the main item"}}}
    assert schema_errors({"main": {"name": "tea", "qty": 1}}, schema) == []
    assert schema_errors({"main": {"name": 1, "qty": 1}}, schema) == [
        "$.main.name: 1 is not of type 'string'"]


def test_a_ref_inside_a_referenced_model_resolves_against_the_root() -> None:
    # Order -> Customer -> Address: the second $ref sits inside a definition
    bad = order(customer={"name": "Ann", "address": {"city": "Oslo", "zip": 150}})
    assert schema_errors(bad, ORDER) == ["$.customer.address.zip: 150 is not of type 'string'"]


def test_a_ref_into_a_nested_defs_level_resolves() -> None:
    schema = {"$defs": {"Shop": {"$defs": {"Item": Item.model_json_schema()},
                                 "type": "object",
                                 "properties": {"stock": {"type": "array", "items": {
                                     "$ref": "#/$defs/Shop/$defs/Item"}}}}},
              "$ref": "#/$defs/Shop"}
    assert schema_errors({"stock": [{"name": "tea", "qty": 1}]}, schema) == []
    assert schema_errors({"stock": [{"name": "tea"}]}, schema) == [
        "$.stock[0]: 'qty' is a required property"]


def test_an_enum_is_checked_wherever_it_is_referenced() -> None:
    assert schema_errors(order(color="green"), ORDER) == [
        "$.color: 'green' is not one of ['red', 'blue']"]
    assert schema_errors(order(tags=["blue", "green"]), ORDER) == [
        "$.tags[1]: 'green' is not one of ['red', 'blue']"]


def test_a_dict_of_sub_models_is_checked_through_additional_properties() -> None:
    assert schema_errors(order(extras={"gift": 1}), ORDER) == [
        "$.extras.gift: 1 is not of type 'object'"]
    assert schema_errors(order(extras={"gift": {"name": "card"}}), ORDER) == [
        "$.extras.gift: 'qty' is a required property"]


def test_errors_read_in_document_order_and_the_reply_check_quotes_five() -> None:
    items = [str(i) for i in range(12)]
    value, problem = check_reply(json.dumps(order(items=items)), ORDER)
    assert value is None and problem is not None
    assert problem.startswith("$.items[0]: '0' is not of type 'object'; "
                              "$.items[1]: '1' is not of type 'object'; ")
    assert problem.endswith("$.items[4]: '4' is not of type 'object' (and 7 more)")


def test_a_long_value_is_shortened_in_the_message() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    [message] = schema_errors({"n": "x" * 2000}, schema)
    assert message.startswith("$.n: 'xxx") and message.endswith("is not of type 'integer'")
    assert " … " in message and len(message) < 300


def test_tool_call_arguments_are_checked_the_same_way() -> None:
    assert arguments_error(GOOD, ORDER) is None
    assert arguments_error(order(items=[3]), ORDER) == "$.items[0]: 3 is not of type 'object'"


def test_formats_the_validator_knows_are_checked() -> None:
    schema = {"type": "object", "properties": {"day": {"type": "string", "format": "date"}}}
    assert schema_errors({"day": "2024-02-30"}, schema) == [
        "$.day: '2024-02-30' is not a 'date'"]
    assert schema_errors({"day": "2024-02-29"}, schema) == []


# -- schemas that are themselves wrong ---------------------------------------------------------


@pytest.mark.parametrize(("schema", "match"), [
    ({"type": "objekt"}, r"not a valid JSON Schema \(Draft 2020-12\): at \$\.type, 'objekt'"),
    ({"type": "object", "required": "name"}, r"at \$\.required, 'name' is not of type 'array'"),
    ({"type": "object", "properties": {"x": {"$ref": "#/$defs/Missing"}}},
     r"refers to definitions it does not hold: #/\$defs/Missing\. Add them"),
    ({"type": "object", "properties": {"x": {"type": str}}}, r"must be JSON data"),
])
def test_an_invalid_schema_is_a_typed_error_that_names_the_problem(
        schema: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidParameterError, match=match):
        check_schema(schema)
    with pytest.raises(InvalidParameterError, match=match):
        schema_errors({}, schema)


def test_a_ref_in_data_keywords_is_not_taken_for_a_reference() -> None:
    schema = {"type": "object", "properties": {"link": {"const": {"$ref": "#/nowhere"}}}}
    check_schema(schema)
    assert schema_errors({"link": {"$ref": "#/nowhere"}}, schema) == []


# -- the scripted order model; the adapters' structured-output tests use it too -------------

ALSO_GOOD = order(color="blue")
NUMBERS = order(items=[3, 4])
STRINGS = order(items=["tea", "cake"])
#: what the repair of a reply whose items are numbers (strings) must quote
NUMBERS_ERROR = "$.items[0]: 3 is not of type 'object'"
STRINGS_ERROR = "$.items[0]: 'tea' is not of type 'object'"


def order_reply(value: dict[str, Any], tools: bool, tool: str = "Order") -> str:
    """The model's text for ``value``: a Hermes call to ``tool``, or bare JSON."""
    if tools:
        return "<tool_call>" + json.dumps({"name": tool, "arguments": value}) + "</tool_call>"
    return json.dumps(value)


def order_model(tools: bool, settings: str = "",
                more: Sequence[tuple[str, str]] = (),
                first: Sequence[tuple[str, str]] = ()) -> str:
    """A scripted model answering orders with tool calls (``tools``) or bare JSON.

    "numbers please": items as numbers, then GOOD, but only from a repair turn that quotes
    NUMBERS_ERROR; "stubborn please": items as strings, twice; "right please": GOOD at once
    (a repair turn would give ALSO_GOOD). ``more``: (condition, reply) rules after these;
    ``first``: rules before them.
    """
    on = " tools yes" if tools else ""
    rules = [
        *first,
        (f'contains "{NUMBERS_ERROR}"', order_reply(GOOD, tools)),
        ('contains "not valid" remembers "right please"', order_reply(ALSO_GOOD, tools)),
        ('contains "not valid"', order_reply(STRINGS, tools)),
        ('contains "numbers please"', order_reply(NUMBERS, tools)),
        ('contains "stubborn please"', order_reply(STRINGS, tools)),
        ('contains "right please"', order_reply(GOOD, tools)),
        *more,
    ]
    lines = [f"when {when}{on} reply {json.dumps(text)}" for when, text in rules]
    return "\n".join(["RKLLM-SCRIPTED 1", "max_context_limit = 4096", settings, *lines,
                      'default reply "no json"']) + "\n"


#: a reply of 80 words at 20 tokens a second: a run left going holds the model for 4 s
SLOW_MODEL = ("RKLLM-SCRIPTED 1\ncallback_thread = runtime\ndecode_tokens_per_second = 20\n"
              'when contains "short" reply "ok"\n'
              'default reply "' + "word " * 80 + '"\n')
#: the abort grace the cancellation tests open SLOW_MODEL with
ABORT_GRACE = 1.0


async def cancel_mid_run(model: RKLLM, call: Coroutine[Any, Any, Any]) -> float:
    """Run ``call``, cancel it 0.3 s into the model's run; when it was cancelled."""
    task = asyncio.create_task(call)
    deadline = time.monotonic() + 5
    while not model.is_running:
        assert time.monotonic() < deadline, "the run never started"
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)
    task.cancel()
    cancelled = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await task
    return cancelled


async def first_token_after(cancelled: float, pieces: AsyncIterator[str]) -> tuple[float, str]:
    """(seconds from ``cancelled`` to the first piece of the next call, its whole text)."""
    first: float | None = None
    text = ""
    async for piece in pieces:
        if piece and first is None:
            first = time.monotonic()
        text += piece
    assert first is not None, "the next call gave no token"
    return first - cancelled, text


# -- through the chat engine -----------------------------------------------------------------


def open_engine(path: Path, settings: str = "") -> ChatEngine:
    path.write_text(order_model(tools=False, settings=settings))
    return ChatEngine(RKLLM(path, library="host", max_context_len=2048))


@pytest.fixture
def engine(tmp_path: Path) -> ChatEngine:
    return open_engine(tmp_path / "orders.scripted")


def test_the_repair_turn_quotes_the_validator_message_with_its_path(engine: ChatEngine) -> None:
    # items as numbers: only a repair turn quoting NUMBERS_ERROR gets the right order back
    value, turn = engine.generate_structured([ChatMessage.user("numbers please")], ORDER)
    assert value == GOOD and turn.message.content == json.dumps(GOOD)


def test_an_invalid_schema_fails_before_any_run(tmp_path: Path) -> None:
    # any run would end in RKLLM_RUN_ERROR, so the typed error shows no run took place
    engine = open_engine(tmp_path / "failing.scripted", "error_after_tokens = 1\n")
    bad = {"type": "object", "properties": {"items": {"type": "list"}}}
    for method in ("json_schema", "function_calling"):
        with pytest.raises(InvalidParameterError, match=r"at \$\.properties\.items\.type"):
            engine.generate_structured([ChatMessage.user("numbers please")], bad,
                                       method=method)


def test_a_reply_wrong_after_the_repair_raises_with_the_raw_text(engine: ChatEngine) -> None:
    with pytest.raises(StructuredOutputError, match=re.escape(STRINGS_ERROR)) as info:
        engine.generate_structured([ChatMessage.user("stubborn please")], ORDER)
    assert info.value.raw == order_reply(STRINGS, tools=False)


def test_cancelling_agenerate_structured_aborts_the_run(tmp_path: Path) -> None:
    path = tmp_path / "slow.scripted"
    path.write_text(SLOW_MODEL)
    model = RKLLM(path, library="host", max_context_len=2048, abort_grace=ABORT_GRACE)
    engine = ChatEngine(model)

    async def main() -> tuple[float, str]:
        cancelled = await cancel_mid_run(model, engine.agenerate_structured(
            [ChatMessage.user("order please")], ORDER))
        return await first_token_after(cancelled, (
            chunk.content async for chunk in engine.astream([ChatMessage.user("short")])))

    waited, text = asyncio.run(main())
    # a run left going would finish its 3.7 s of reply before the next call could start
    assert text == "ok" and waited < ABORT_GRACE
    assert not model.is_running
    model.close()
