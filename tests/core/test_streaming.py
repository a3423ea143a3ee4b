"""The callback-to-consumer bridge: Channel wake-ups, incremental UTF-8, stop strings."""

from __future__ import annotations

import asyncio
import itertools
import threading

import pytest

from rkllm_core.streaming import Channel, StopMatcher, Utf8Decoder

TEXT = "Grüße 你好 🙂!"


def test_every_split_of_multibyte_text_decodes_to_the_same_text() -> None:
    data = TEXT.encode()
    for a, b in itertools.combinations(range(1, len(data)), 2):
        dec = Utf8Decoder()
        out = dec.feed(data[:a]) + dec.feed(data[a:b]) + dec.feed(data[b:]) + dec.flush()
        assert out == TEXT, (a, b)


def test_byte_by_byte_feeding_holds_incomplete_characters_back() -> None:
    dec = Utf8Decoder()
    pieces = [dec.feed(bytes([byte])) for byte in "🙂".encode()]
    assert pieces == ["", "", "", "🙂"]


def test_null_and_empty_text_add_nothing() -> None:
    dec = Utf8Decoder()
    assert dec.feed(b"\xe4\xbd") == ""
    assert dec.feed(None) == "" and dec.feed(b"") == ""
    assert dec.feed(b"\xa0") == "你"


def test_invalid_utf8_is_replaced_never_raised() -> None:
    dec = Utf8Decoder()
    assert dec.feed(b"ok\xff\xfe") == "ok\ufffd\ufffd"
    assert dec.feed(b"\xf0\x9f") == ""
    assert dec.flush() == "\ufffd"


def test_a_stop_string_split_across_pieces_is_found_and_never_released() -> None:
    m = StopMatcher(["</answer>"])
    released = [m.feed(p) for p in ["The answer", " is 4</", "ans", "wer> junk"]]
    assert "".join(released) == "The answer is 4"
    assert m.stopped and m.flush() == ""


def test_text_held_back_as_a_possible_stop_is_released_when_it_is_not_one() -> None:
    m = StopMatcher(["\nUser:"])
    assert m.feed("Hi\nUs") == "Hi"
    assert m.feed("ually") == "\nUsually"
    assert m.feed(" yes\n") == " yes"
    assert m.flush() == "\n"
    assert not m.stopped


def test_channel_wakes_a_blocked_thread_consumer_in_order() -> None:
    ch: Channel[int] = Channel()
    got: list[int] = []

    def consume() -> None:
        while (item := ch.get()) is not Channel.END:
            got.append(item)

    consumer = threading.Thread(target=consume)
    consumer.start()
    for i in range(1000):
        ch.put(i)
    ch.close()
    consumer.join()
    assert got == list(range(1000))


def test_channel_get_times_out_when_nothing_comes() -> None:
    with pytest.raises(TimeoutError):
        Channel[int]().get(timeout=0.01)


def test_channel_wakes_asyncio_consumers_from_another_thread() -> None:
    ch: Channel[int] = Channel()

    async def main() -> list[int]:
        started = asyncio.Event()
        loop = asyncio.get_running_loop()

        def produce() -> None:
            for i in range(500):
                ch.put(i)
            ch.close()

        async def consume() -> list[int]:
            items = []
            loop.call_soon(started.set)
            while (item := await ch.aget()) is not Channel.END:
                items.append(item)
            return items

        task = asyncio.create_task(consume())
        await started.wait()
        threading.Thread(target=produce).start()
        return await task

    assert asyncio.run(main()) == list(range(500))


def test_a_cancelled_async_consumer_leaves_no_waiter_behind() -> None:
    ch: Channel[int] = Channel()

    async def main() -> None:
        task = asyncio.create_task(ch.aget())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert ch._waiters == []
        ch.put(1)
        assert await ch.aget() == 1

    asyncio.run(main())


def test_channel_aget_times_out_with_the_builtin_timeout_error() -> None:
    ch: Channel[int] = Channel()

    async def main() -> None:
        with pytest.raises(TimeoutError):
            await ch.aget(timeout=0.01)
        assert ch._waiters == []

    asyncio.run(main())


def _fall_behind(ch: Channel[int], first: int) -> list[int]:
    """Put more items than a consumer takes in one look, then take them: the next wait naps."""
    for i in range(first, first + 40):
        ch.put(i)
    return [ch.get() for _ in range(40)]


def test_an_item_that_comes_while_a_consumer_naps_arrives_without_another_put() -> None:
    ch: Channel[int] = Channel()
    got = _fall_behind(ch, 0)
    arrived = threading.Event()
    received: list[int] = []

    def consume() -> None:
        received.append(ch.get())  # naps: the put below does not wake it, the nap's end does
        arrived.set()

    consumer = threading.Thread(target=consume)
    consumer.start()
    ch.put(40)
    assert arrived.wait(10)
    consumer.join()
    assert got + received == list(range(41))


def test_a_napping_async_consumer_gets_an_item_put_during_its_nap() -> None:
    ch: Channel[int] = Channel()

    async def main() -> list[int]:
        got = _fall_behind(ch, 0)
        loop = asyncio.get_running_loop()
        loop.call_later(0, ch.put, 40)
        got.append(await asyncio.wait_for(ch.aget(), 10))
        return got

    assert asyncio.run(main()) == list(range(41))


def _bursts(ch: Channel[int]) -> int:
    """Put bursts of 200 items and single items with short pauses between, then close: bursts
    make a consumer nap and the producer hand over, pauses end the naps. Returns the count."""
    n = 0
    for burst in range(30):
        for _ in range(200 if burst % 3 else 1):
            ch.put(n)
            n += 1
        threading.Event().wait(0.0005 * (burst % 4))
    ch.close()
    return n


def test_bursts_and_pauses_reach_a_thread_consumer_complete_and_in_order() -> None:
    ch: Channel[int] = Channel()
    total: list[int] = []
    producer = threading.Thread(target=lambda: total.append(_bursts(ch)))
    producer.start()
    got = []
    while (item := ch.get(timeout=30)) is not Channel.END:
        got.append(item)
    producer.join()
    assert got == list(range(total[0]))
    assert ch._waiters == [] and ch._nappers == []


def test_bursts_and_pauses_reach_an_async_consumer_complete_and_in_order() -> None:
    ch: Channel[int] = Channel()

    async def main() -> tuple[list[int], int]:
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        total = [0]

        def produce() -> None:
            total[0] = _bursts(ch)

        async def consume() -> list[int]:
            items = []
            loop.call_soon(ready.set)
            while (item := await ch.aget()) is not Channel.END:
                items.append(item)
            return items

        task = asyncio.create_task(consume())
        await ready.wait()
        producer = threading.Thread(target=produce)
        producer.start()
        items = await task
        producer.join()
        return items, total[0]

    items, total = asyncio.run(main())
    assert items == list(range(total))


def test_a_napping_consumer_times_out_at_its_own_deadline() -> None:
    ch: Channel[int] = Channel()
    _fall_behind(ch, 0)
    with pytest.raises(TimeoutError):
        ch.get(timeout=0.01)
    assert ch._waiters == [] and ch._nappers == []
