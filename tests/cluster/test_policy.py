"""The cluster's routing policy and a board's behaviour, without starting Ray: the keys a
conversation is known by, the one-conversation-per-slot book, the router's picture of the
boards, and a board's errors and health check (a wedged runtime makes Ray replace it)."""

from __future__ import annotations

import asyncio
import pickle
import time
from pathlib import Path
from typing import Any

import pytest

from rkllm_core.chat import ChatMessage, ToolCall, ToolSpec
from rkllm_core.cluster.affinity import SlotBook, conversation_key, resume_key
from rkllm_core.cluster.ingress import BoardLostError, local_error
from rkllm_core.cluster.replica import Board, BoardError, Started
from rkllm_core.cluster.router import AffinityPolicy
from rkllm_core.errors import InvalidParameterError
from rkllm_core.server.registry import QueueFullError
from rkllm_core.server.turns import TurnRequest
from tests.cluster.conftest import scripted

SYSTEM = ChatMessage.system("You are terse.")


def _next_turn(request: TurnRequest, reply: ChatMessage, *more: ChatMessage) -> TurnRequest:
    return TurnRequest([*request.messages, reply, *more], tools=request.tools)


def test_a_later_turn_resumes_exactly_what_its_previous_request_left() -> None:
    first = TurnRequest([SYSTEM, ChatMessage.user("Hi")])
    second = _next_turn(first, ChatMessage.assistant("Hello"), ChatMessage.user("More"))
    third = _next_turn(second, ChatMessage.assistant("Sure"), ChatMessage.user("Again"))
    assert resume_key("m", first) is None
    assert resume_key("m", second) == conversation_key("m", first)
    assert resume_key("m", third) == conversation_key("m", second)
    # the reply itself is not part of the key: the router knows it before the reply exists
    edited = _next_turn(first, ChatMessage.assistant("Hello!!"), ChatMessage.user("More"))
    assert resume_key("m", edited) == resume_key("m", second)


def test_tool_turns_resume_the_request_that_asked_for_the_call() -> None:
    tools = (ToolSpec("get_weather", "The weather", {"type": "object", "properties": {}}),)
    ask = TurnRequest([ChatMessage.user("Weather in Paris?")], tools=tools)
    call = ChatMessage.assistant(tool_calls=[ToolCall("get_weather", {"city": "Paris"})])
    answer = _next_turn(ask, call, ChatMessage.tool("sunny", tool_call_id="c1"),
                        ChatMessage.tool("warm", tool_call_id="c2"))
    assert resume_key("m", answer) == conversation_key("m", ask)
    # other tools, another system prompt or another model: another conversation
    assert conversation_key("m", TurnRequest(ask.messages)) != conversation_key("m", ask)
    assert conversation_key("m", TurnRequest([SYSTEM, *ask.messages], tools=tools)) != \
        conversation_key("m", ask)
    assert conversation_key("n", ask) != conversation_key("m", ask)


def test_a_book_keeps_one_conversation_per_slot_and_gives_away_the_coldest() -> None:
    book = SlotBook(2)
    book.hold(book.pick(None), "a")
    book.hold(book.pick(None), "b")
    assert book.keys == ["a", "b"]
    book.hold(book.pick("a"), "a2")  # a continues in its slot
    assert book.keys == ["a2", "b"]
    book.hold(book.pick(None), "c")  # a new conversation replaces the older one: b
    assert book.keys == ["a2", "c"] and book.holding("b") is None
    book.busy[0] = True
    assert book.pick("a2") == 1  # its slot is busy: take the free one rather than wait
    book.hold(1, "a2")
    assert book.keys == [None, "a2"]  # a conversation lives in one slot only


def test_the_router_routes_back_then_trusts_the_boards_report_over_old_guesses() -> None:
    policy = AffinityPolicy(report_lag_s=0.2)
    loads, slots = {"b1": 0, "b2": 0}, {"b1": 1, "b2": 1}
    first = TurnRequest([ChatMessage.user("Hi")])
    later = _next_turn(first, ChatMessage.assistant("Hey"), ChatMessage.user("More"))
    policy.routed("b2", "m", first)
    assert policy.rank("m", later, loads, slots) == [["b2"], ["b1"]]
    # a report older than the routing does not undo it...
    policy.reported("b2", {"slots": {"m": [None]}})
    assert policy.rank("m", later, loads, slots)[0] == ["b2"]
    time.sleep(0.3)
    # ...but once the routing is older than the reporting lag, the board's word wins (the
    # turn failed, or the board restarted empty)
    policy.reported("b2", {"slots": {"m": [None]}})
    assert policy.rank("m", later, loads, slots) == [["b1", "b2"]]
    policy.reported("b1", {"slots": {"m": [conversation_key("m", first)]}})
    assert policy.rank("m", later, loads, slots) == [["b1"], ["b2"]]
    policy.forget("b1")
    assert policy.rank("m", later, {"b2": 0}, {"b2": 1}) == [["b2"]]


def test_load_comes_before_cache_coldness_for_a_new_conversation() -> None:
    policy = AffinityPolicy()
    policy.routed("b1", "m", TurnRequest([ChatMessage.user("one")]))
    new = TurnRequest([ChatMessage.user("two")])
    assert policy.rank("m", new, {"b1": 0, "b2": 1}, {"b1": 1, "b2": 1}) == [["b1", "b2"]]
    assert policy.rank("m", new, {"b1": 0, "b2": 0}, {"b1": 1, "b2": 1}) == [["b2", "b1"]]


def test_errors_cross_ray_with_their_status_and_a_dead_board_is_a_503() -> None:
    from ray.exceptions import ActorDiedError, RayTaskError
    from ray.serve.exceptions import BackPressureError

    bad = pickle.loads(pickle.dumps(BoardError.of(InvalidParameterError("no tools"), "b1")))
    assert (bad.status, bad.code, str(bad)) == (400, "invalid_request", "no tools")
    full = BoardError.of(QueueFullError("busy", 7), "b1").local()
    assert isinstance(full, QueueFullError) and full.retry_after == 7
    hidden = BoardError.of(KeyError("secret"), "b1")
    assert hidden.status == 500 and "secret" not in str(hidden) and "b1" in str(hidden)
    wrapped = RayTaskError("chat", "traceback", bad)
    assert local_error(wrapped) is bad
    lost = local_error(ActorDiedError())
    assert isinstance(lost, BoardLostError) and lost.status == 503
    busy = local_error(BackPressureError(num_queued_requests=8, max_queued_requests=8))
    assert isinstance(busy, QueueFullError) and busy.status == 429 and busy.retry_after >= 1


def test_a_wedged_runtime_fails_its_request_and_makes_the_health_check_fail(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = scripted(tmp_path, "hang_after_tokens = 2\ndefault reply \"one two three four\"\n")
    config.params["abort_grace"] = 0.3
    board = Board([config], name="b1")
    try:
        board.check_health()
        backend: Any = board.models["assistant"][0].backend
        monkeypatch.setattr(backend.lib, "abort", lambda handle: 0)  # an NPU that stops listening

        async def ask() -> list[Any]:
            request = TurnRequest([ChatMessage.user("Hello")])
            return [item async for item in board.chat(model="assistant", request=request,
                                                      timeout=0.3)]

        with pytest.raises(BoardError) as failed:
            asyncio.run(ask())
        assert failed.value.status == 503 and "wedged" in str(failed.value)
        with pytest.raises(RuntimeError, match="runtime gone"):
            board.check_health()
        assert board.record_routing_stats()["slots"] == {"assistant": [None]}
        monkeypatch.undo()
        backend.lib.abort(backend._live.native.handle)  # let the stuck run return
    finally:
        board.close()


def test_a_board_streams_who_runs_it_first_and_reports_its_slots(tmp_path: Path) -> None:
    board = Board([scripted(tmp_path, 'default reply "Fine."\n')], slots=2, name="b1")
    try:
        request = TurnRequest([ChatMessage.user("Hello")])

        async def ask() -> list[Any]:
            return [item async for item in board.chat(model="assistant", request=request)]

        items = asyncio.run(ask())
        assert items[0] == Started("b1/slot-0") and items[-1].message.content == "Fine."
        assert board.record_routing_stats() == {
            "board": "b1", "slots": {"assistant": [conversation_key("assistant", request), None]}}
        assert board.describe("assistant")["slots"] == 2
        with pytest.raises(BoardError, match="not loaded"):
            asyncio.run(board.embed(model="other", texts=["x"]))
    finally:
        board.close()
