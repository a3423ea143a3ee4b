"""``rkllm serve --ray`` on three simulated boards: conversations stay on the board that holds
their KV cache, and a board whose runtime crashes costs only its request in flight."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openai import APIStatusError, AsyncOpenAI

from tests.cluster.conftest import Boards, board_of, boards, scripted, wait_for_running_boards

pytestmark = pytest.mark.stress

MODEL = """\
decode_tokens_per_second = 40
crash_after_tokens = 2
crash_on = "boom"
when contains "boom" reply "This reply never ends because the runtime crashes first."
when contains "tell me more" reply "There is more to say about it, one token at a time."
default reply "Hello there, I am one of several boards."
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Boards, str]]:
    tmp = tmp_path_factory.mktemp("boards")
    from rkllm_core.server import ServerConfig

    config = ServerConfig(models=[scripted(tmp, MODEL)], request_timeout=60)
    with boards(3) as running:
        yield running, running.deploy(config)


def _client(url: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)


async def _turn(client: AsyncOpenAI, messages: list[dict[str, Any]]) -> tuple[str, int, str]:
    """(replica, cached prompt tokens, reply) of one whole chat turn; the reply is appended."""
    raw = await client.chat.completions.with_raw_response.create(
        model="assistant", messages=messages)  # type: ignore[arg-type]
    completion = raw.parse()
    reply = completion.choices[0].message.content or ""
    messages.append({"role": "assistant", "content": reply})
    details = completion.usage.prompt_tokens_details if completion.usage else None
    return raw.headers["x-rkllm-replica"], (details.cached_tokens or 0) if details else 0, reply


async def _conversation(client: AsyncOpenAI, name: str, turns: int) -> list[tuple[str, int]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": f"You talk to {name}."},
                                      {"role": "user", "content": f"Hi, I am {name}."}]
    seen = []
    for turn in range(turns):
        replica, cached, _ = await _turn(client, messages)
        seen.append((replica, cached))
        messages.append({"role": "user", "content": f"Tell me more ({turn})."})
    return seen


def test_three_conversations_land_on_three_boards_and_come_back_to_their_own(
        cluster: tuple[Boards, str]) -> None:
    _boards, url = cluster

    async def main() -> list[list[tuple[str, int]]]:
        async with _client(url) as client:
            return list(await asyncio.gather(*(_conversation(client, name, 4)
                                               for name in ("Ada", "Bob", "Cyd"))))

    runs = asyncio.run(main())
    firsts = {board_of(run[0][0]) for run in runs}
    assert len(firsts) == 3, f"three conversations on {firsts}"
    for run in runs:
        assert {replica for replica, _ in run} == {run[0][0]}, run  # same board and slot
        assert run[0][1] == 0
        assert all(cached > 0 for _, cached in run[1:]), run


def test_a_crashed_runtime_fails_its_request_only_and_its_board_comes_back(
        cluster: tuple[Boards, str]) -> None:
    _boards, url = cluster

    async def main() -> tuple[httpx.Response, list[tuple[str, int]], list[tuple[str, int]]]:
        async with _client(url) as client:
            # three conversations, one per board
            talks = []
            for name in ("Dee", "Eve", "Fay"):
                talks.append([{"role": "user", "content": f"Hi, I am {name}."}])
            starts = await asyncio.gather(*(_turn(client, m) for m in talks))
            for m in talks:
                m.append({"role": "user", "content": "Tell me more."})
            doomed = [*talks[0][:-1], {"role": "user", "content": "Say boom."}]
            async with httpx.AsyncClient(timeout=60) as raw:
                crashed, *others = await asyncio.gather(
                    raw.post(f"{url}/v1/chat/completions",
                             json={"model": "assistant", "messages": doomed}),
                    _turn(client, talks[1]), _turn(client, talks[2]))
            return crashed, [(r, c) for r, c, _ in starts], [(r, c) for r, c, _ in others]

    crashed, starts, others = asyncio.run(main())
    assert len({board_of(r) for r, _ in starts}) == 3
    assert crashed.status_code == 503, crashed.text
    error = crashed.json()["error"]
    assert error["code"] == "runtime_unavailable" and "board" in error["message"]
    for (replica, cached), (first, _) in zip(others, starts[1:], strict=True):
        assert replica == first and cached > 0  # the other boards kept their conversations

    wait_for_running_boards(3)

    async def again() -> set[str]:
        """The boards three new concurrent conversations land on."""
        async with _client(url) as client:
            answers = await asyncio.gather(*(
                _turn(client, [{"role": "user", "content": f"Hi, I am {name}."}])
                for name in ("Gus", "Hal", "Ivy")))
        assert all(reply for _, _, reply in answers)
        return {board_of(replica) for replica, _, _ in answers}

    originals = {board_of(r) for r, _ in starts}
    deadline = time.monotonic() + 60  # the ingress hears of the new replica a little later
    landed = asyncio.run(again())
    while not landed - originals:  # a replica that is not one of the first three answers
        assert time.monotonic() < deadline, f"no new board among {landed}"
        time.sleep(1)
        landed = asyncio.run(again())


def test_a_board_that_leaves_costs_its_conversations_their_cache_and_nothing_else(
        cluster: tuple[Boards, str]) -> None:
    boards_, url = cluster
    wait_for_running_boards(3)

    async def turn(talk: list[dict[str, Any]]) -> tuple[str, int, str] | int:
        """(replica, cached, reply), or the HTTP status of a failed turn."""
        async with _client(url) as client:
            try:
                return await _turn(client, talk)
            except APIStatusError as error:
                talk.pop()  # the turn did not happen: ask it again later
                return error.status_code

    async def turns(talks: list[list[dict[str, Any]]]) -> list[tuple[str, int, str] | int]:
        return list(await asyncio.gather(*(turn(m) for m in talks)))

    talks: list[list[dict[str, Any]]] = [[{"role": "user", "content": f"Hi, I am {name}."}]
                                         for name in ("Jo", "Kim", "Lou")]
    before = [r for r in asyncio.run(turns(talks)) if isinstance(r, tuple)]
    assert len({board_of(r[0]) for r in before}) == 3
    # a worker node goes away at once (the head keeps Serve's controller, proxy and ingress)
    boards_.cluster.remove_node(next(iter(boards_.cluster.worker_nodes)), allow_graceful=False)
    for talk in talks:
        talk.append({"role": "user", "content": "Tell me more."})
    after = asyncio.run(turns(talks))
    stayed = [(a, b) for a, b in zip(before, after, strict=True)
              if isinstance(b, tuple) and a[0] == b[0]]
    assert len(stayed) == 2 and all(b[1] > 0 for _, b in stayed)  # their caches kept
    (lost, result), = [(i, b) for i, (a, b) in enumerate(zip(before, after, strict=True))
                       if not (isinstance(b, tuple) and a[0] == b[0])]
    if not isinstance(result, tuple):
        # sent before the router knew the board was gone: a 503 the client retries
        assert result == 503
        talks[lost].append({"role": "user", "content": "Tell me more."})
        result = asyncio.run(turn(talks[lost]))
    assert isinstance(result, tuple) and result[2]
    assert board_of(result[0]) in {board_of(a[0]) for a, _ in stayed}  # replayed elsewhere
