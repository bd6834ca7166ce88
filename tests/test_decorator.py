"""The ``@batching`` decorator: bare and with settings, as in the seed."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
import torch

from batch_inference import ConfigurationError, ModelHost, batching
from batch_inference.batcher import ConcatBatcher, SeqBatcher


@batching
class Bare:
    """Decorated without arguments."""

    built = 0

    def __init__(self, scale: float = 2.0) -> None:
        Bare.built += 1
        self.scale = scale

    def predict_batch(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


@batching(batcher=SeqBatcher(padding_tokens=[0, 0], tensor="pt"), max_batch_size=4,
          max_delay_s=0.0)
class WithSettings:
    """Decorated with a batcher and a batch size, as the seed does."""

    def __init__(self, offset: int, *, scale: int = 1) -> None:
        self.offset, self.scale = offset, scale

    def predict_batch(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (ids * self.scale + self.offset)[:, :, None] * mask[:, :, None]


def test_bare_decorator_keeps_the_class_usable_as_a_plain_class() -> None:
    assert isinstance(Bare, type) and Bare.__name__ == "Bare"
    model = Bare(3.0)
    assert torch.equal(model.predict_batch(torch.ones(2, 2)), torch.full((2, 2), 3.0))
    assert Bare.__doc__ == "Decorated without arguments."


@pytest.mark.timeout(30)
def test_bare_decorator_host_uses_the_defaults_and_builds_on_start() -> None:
    before = Bare.built
    host = Bare.host(5.0)
    assert isinstance(host, ModelHost)
    assert type(host.batcher) is ConcatBatcher and host.max_batch_size == 32
    assert Bare.built == before  # nothing built before start
    with host:
        assert torch.equal(host.predict(torch.ones(1, 3)), torch.full((1, 3), 5.0))
    assert Bare.built == before + 1


def test_each_host_call_returns_a_new_host() -> None:
    assert Bare.host() is not Bare.host()


@pytest.mark.timeout(30)
def test_decorator_settings_reach_the_host_and_model_arguments_reach_the_class() -> None:
    host = WithSettings.host(100, scale=2)
    assert isinstance(host.batcher, SeqBatcher) and host.max_batch_size == 4
    ids = torch.tensor([[1, 2, 3]])
    with host:
        out = host.predict(ids, torch.ones_like(ids))
    assert torch.equal(out, torch.tensor([[[102], [104], [106]]]))
    plain = WithSettings(1).predict_batch(ids, torch.ones_like(ids))  # still a plain class
    assert torch.equal(plain, torch.tensor([[[2], [3], [4]]]))


@pytest.mark.timeout(30)
def test_decorated_host_serves_asyncio_callers() -> None:
    async def main() -> list[torch.Tensor]:
        async with Bare.host() as host:
            return await asyncio.gather(
                *(host.predict_async(torch.full((1, 2), float(i))) for i in range(20))
            )

    for i, out in enumerate(asyncio.run(main())):
        assert torch.equal(out, torch.full((1, 2), 2.0 * i))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_batch_size": 0}, r"max_batch_size must be a positive integer, got 0"),
        ({"max_batch_size": -3}, r"got -3"),
        ({"batcher": "seq"}, r"Batcher instance, got 'seq'"),
        ({"max_delay_s": -0.5}, r"max_delay_s .* got -0.5"),
        ({"wait_ms": -1}, r"wait_ms .* got -1"),
        ({"num_workers": 0}, r"num_workers .* got 0"),
    ],
)
def test_bad_settings_fail_when_the_decorator_is_applied(settings: dict, message: str) -> None:
    decorate = batching(**settings)  # nothing is checked before a class is given...
    with pytest.raises(ConfigurationError, match=message):
        decorate(Bare)  # ...and everything when it is


def test_unknown_setting_fails_at_decoration_naming_it() -> None:
    with pytest.raises(TypeError, match="max_batch"):

        @batching(max_batch=8)
        class Model:
            def predict_batch(self, x: Any) -> Any:
                return x


def test_decorating_a_function_is_a_configuration_error() -> None:
    def predict_batch(x: Any) -> Any:
        return x

    with pytest.raises(ConfigurationError, match=r"decorates a class, got <function"):
        batching(predict_batch)


def test_decorating_a_class_without_predict_batch_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match=r"NoPredict.* has no predict_batch"):

        @batching
        class NoPredict:
            def predict(self, x: Any) -> Any:
                return x


def test_settings_are_checked_once_and_shared_by_every_host_of_a_class() -> None:
    first, second = Bare.host(), Bare.host(3.0)
    assert first.settings is second.settings  # one frozen object, made when decorated
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.settings.max_batch_size = 1  # type: ignore[misc]
    with pytest.raises(AttributeError):
        first.max_batch_size = 1  # type: ignore[misc]
    assert (first.max_batch_size, first.max_delay_s, first.num_workers) == (32, 0.0, 1)
    twin = ModelHost.from_settings(first.settings, Bare)
    assert twin.settings is first.settings and twin.batcher is first.batcher
