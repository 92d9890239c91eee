"""Encoding replies: a listing that did not change is encoded once per encoding, and a large one is encoded a
slice at a time into the very bytes that encoding it at once gives."""

from __future__ import annotations

import msgspec
import pytest

from service.contract.messages import Available, ExtensionMetadata, ExtensionType, Success
from service.core.slices import drain
from service.wire import codec


def listing(count: int, tag: str = "") -> tuple[Available, ...]:
    return tuple(
        Available(
            extension_type=ExtensionType.TASKSERV,
            name=f"ext-{i}{tag}",
            versions=("1.1.0", "1.0.0"),
            latest=ExtensionMetadata(
                name=f"ext-{i}{tag}",
                version="1.1.0",
                description='an extension with a "quoted" word',
                extension_type=ExtensionType.TASKSERV,
                dependencies=("etcd",),
            ),
        )
        for i in range(count)
    )


@pytest.mark.parametrize("fmt", list(codec.Codec))
@pytest.mark.parametrize("count", [codec.HEAVY_ITEMS, codec.HEAVY_ITEMS + 1, 300, 1000, 70_000])
def test_a_large_reply_made_a_slice_at_a_time_is_the_reply_made_at_once(fmt: codec.Codec, count: int) -> None:
    data = listing(count)
    steps = codec.success_steps(list(data), fmt)  # a list: not kept
    assert drain(steps) == fmt.encode(Success(data=data))


def test_an_unchanged_listing_is_encoded_once_per_encoding() -> None:
    data = listing(codec.HEAVY_ITEMS)
    assert not codec.encoded(data, codec.Codec.JSON)
    body = codec.success(data, codec.Codec.JSON)
    assert codec.encoded(data, codec.Codec.JSON) and not codec.encoded(data, codec.Codec.MSGPACK)
    assert codec.success(data, codec.Codec.JSON) is body
    assert msgspec.json.decode(body)["data"][2]["name"] == "ext-2"
    packed = codec.success(data, codec.Codec.MSGPACK)
    assert msgspec.msgpack.decode(packed) == msgspec.json.decode(body)

    # An equal listing that is another object (the store made a new one: something changed) is encoded anew.
    again = listing(codec.HEAVY_ITEMS)
    assert again == data and not codec.encoded(again, codec.Codec.JSON)
    assert codec.success(again, codec.Codec.JSON) == body


def test_only_a_handful_of_large_listings_are_kept() -> None:
    kept = [listing(codec.HEAVY_ITEMS, f"-{n}") for n in range(20)]
    for data in kept:
        codec.success(data, codec.Codec.JSON)
    assert codec.encoded(kept[-1], codec.Codec.JSON)
    assert not codec.encoded(kept[0], codec.Codec.JSON)
    # A small one (a discover of one name: a new tuple each time) is quick to encode, and pushes none out.
    for _ in range(20):
        small = listing(1)
        codec.success(small, codec.Codec.JSON)
        assert not codec.encoded(small, codec.Codec.JSON)
    assert codec.encoded(kept[-1], codec.Codec.JSON)


def test_large_replies_are_heavy() -> None:
    assert codec.heavy(listing(codec.HEAVY_ITEMS))
    assert codec.heavy(list(listing(codec.HEAVY_ITEMS)))
    assert not codec.heavy(listing(3)) and not codec.heavy({"cleared": 3})
