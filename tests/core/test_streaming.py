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
