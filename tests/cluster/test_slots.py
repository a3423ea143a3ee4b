"""``rkllm serve --ray --slots 2`` on one simulated board: two RKLLM instances of the model, so
two conversations keep their KV caches side by side."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from openai import AsyncOpenAI

from tests.cluster.conftest import Boards, board_of, boards, scripted

pytestmark = pytest.mark.stress

MODEL = """\
decode_tokens_per_second = 60
default reply "A reply from one of the slots of this board."
"""


@pytest.fixture(scope="module")
def one_board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Boards, str]]:
    from rkllm_core.server import ServerConfig

    config = ServerConfig(models=[scripted(tmp_path_factory.mktemp("slots"), MODEL)],
                          request_timeout=60)
    with boards(1) as running:
        yield running, running.deploy(config, slots=2)


async def _turn(client: AsyncOpenAI, messages: list[dict[str, Any]]) -> tuple[str, int]:
    raw = await client.chat.completions.with_raw_response.create(
        model="assistant", messages=messages)  # type: ignore[arg-type]
    completion = raw.parse()
    messages.append({"role": "assistant", "content": completion.choices[0].message.content})
    details = completion.usage.prompt_tokens_details if completion.usage else None
    return raw.headers["x-rkllm-replica"], (details.cached_tokens or 0) if details else 0


def test_two_slots_keep_two_conversations_cached(one_board: tuple[Boards, str]) -> None:
    _boards, url = one_board

    async def main() -> dict[str, list[tuple[str, int]]]:
        seen: dict[str, list[tuple[str, int]]] = {"A": [], "B": []}
        talks = {name: [{"role": "user", "content": f"Hello from {name}."}] for name in seen}
        async with AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0,
                               timeout=60) as client:
            for turn in range(3):  # taking turns: A, B, A, B, A, B
                for name, messages in talks.items():
                    seen[name].append(await _turn(client, messages))
                    messages.append({"role": "user", "content": f"And then? ({turn})"})
            # and both at once: each still finds its own slot
            both = await asyncio.gather(*(_turn(client, m) for m in talks.values()))
            for name, result in zip(talks, both, strict=True):
                seen[name].append(result)
        return seen

    seen = asyncio.run(main())
    slots = {name: {replica for replica, _ in run} for name, run in seen.items()}
    assert all(len(s) == 1 for s in slots.values()), slots
    a, b = slots["A"].pop(), slots["B"].pop()
    assert a != b and board_of(a) == board_of(b)  # one board, two slots
    for run in seen.values():
        assert run[0][1] == 0 and all(cached > 0 for _, cached in run[1:]), run
