"""batch_inference.aio.ModelHost: 1.0's asyncio host, a front over the thread host.

Every await is bounded (``asyncio.wait_for``); blocking waits inside models
are bounded too, so a regression fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
import torch

from batch_inference import (
    ConfigurationError,
    HostNotRunningError,
    RequestTimeoutError,
)
from batch_inference import ModelHost as ThreadHost
from batch_inference.aio import ModelHost
from batch_inference.aio.model_host import ModelHost as AtSeedPath
from batch_inference.batcher import ConcatBatcher

BOUND_S = 10.0
ONE = torch.ones(1, 1)


class Scaler:
    """``predict_batch(x) -> x * scale``; counts the calls and the rows per call."""

    built = 0

    def __init__(self, scale: float = 2.0) -> None:
        Scaler.built += 1
        self.scale = scale
        self.sizes: list[int] = []

    def predict_batch(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(int(x.shape[0]))
        return x * self.scale


class Gated:
    """``x * 2``; the first call blocks until ``release`` is set (bounded)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def predict_batch(self, x: torch.Tensor) -> torch.Tensor:
        if not self.entered.is_set():
            self.entered.set()
            if not self.release.wait(BOUND_S):
                raise TimeoutError("the test never released the gate")
        return x * 2


def bounded(awaitable: Any) -> Any:
    return asyncio.wait_for(awaitable, BOUND_S)


def test_the_seed_import_path_is_the_same_class() -> None:
    assert AtSeedPath is ModelHost


@pytest.mark.timeout(30)
def test_many_tasks_each_get_their_own_answer() -> None:
    async def main() -> tuple[list[torch.Tensor], list[int]]:
        host = ModelHost(Scaler, batcher=ConcatBatcher(), max_batch_size=8)(3.0)
        await bounded(host.start())
        try:
            outputs = await bounded(asyncio.gather(
                *(host.predict(torch.full((1, 2), float(i))) for i in range(50))
            ))
        finally:
            assert await bounded(host.stop())
        return outputs, host.model_obj.sizes

    outputs, sizes = asyncio.run(main())
    for i, out in enumerate(outputs):
        assert torch.equal(out, torch.full((1, 2), 3.0 * i))
    assert sum(sizes) == 50 and max(sizes) <= 8


@pytest.mark.timeout(30)
def test_async_with_starts_and_stops() -> None:
    async def main() -> ModelHost:
        async with ModelHost(model_obj=Scaler()) as host:
            assert host.running
            assert torch.equal(await bounded(host.predict(ONE)), ONE * 2)
        return host

    host = asyncio.run(main())
    assert not host.running


def test_one_zero_defaults_are_kept_and_reach_the_thread_host() -> None:
    host = ModelHost(model_obj=Scaler())
    assert (host.wait_ms, host.wait_n, host.max_batch_size, host.num_workers) == (5.0, 16, 32, 1)
    assert isinstance(host.host, ThreadHost)
    assert host.host.max_delay_s == pytest.approx(0.005)
    assert host.host.settings.limits.full_size == 16
    small = ModelHost(model_obj=Scaler(), max_batch_size=4)  # wait_n above it means it
    assert small.host.settings.limits.full_size == 4


def test_max_delay_s_replaces_the_default_wait_ms_and_wait_ms_zero_waits_not() -> None:
    assert ModelHost(model_obj=Scaler(), max_delay_s=0.02).host.max_delay_s == pytest.approx(0.02)
    assert ModelHost(model_obj=Scaler(), wait_ms=0).host.max_delay_s == 0.0
    with pytest.raises(ConfigurationError, match="give max_delay_s or wait_ms, not both"):
        ModelHost(model_obj=Scaler(), wait_ms=3, max_delay_s=0.02)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"event_loop": "loop"}, r"event_loop must be an asyncio event loop or None, got 'loop'"),
        ({"wait_ms": -2}, r"wait_ms .* got -2"),
        ({"wait_n": 0}, r"wait_n .* got 0"),
        ({"num_workers": 0}, r"num_workers .* got 0"),
        ({"batcher": "concat"}, r"Batcher instance, got 'concat'"),
    ],
)
def test_bad_settings_are_configuration_errors(settings: dict, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ModelHost(Scaler, **settings)


def test_neither_model_cls_nor_model_obj_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="exactly one of model_cls and model_obj"):
        ModelHost()


@pytest.mark.timeout(30)
def test_an_event_loop_is_accepted() -> None:
    async def main() -> torch.Tensor:
        host = ModelHost(model_obj=Scaler(), event_loop=asyncio.get_running_loop())
        async with host:
            return await bounded(host.predict(torch.ones(1, 1)))

    assert torch.equal(asyncio.run(main()), torch.full((1, 1), 2.0))


@pytest.mark.timeout(30)
def test_calling_the_host_sets_the_constructor_arguments_built_at_start() -> None:
    async def main() -> None:
        before = Scaler.built
        host = ModelHost(Scaler)
        assert host(scale=7.0) is host
        assert Scaler.built == before  # nothing built yet
        async with host:
            assert Scaler.built == before + 1
            assert torch.equal(await bounded(host.predict(ONE)), ONE * 7)
        with pytest.raises(ConfigurationError, match=r"already built: .* got \(1\.0,\)"):
            host(1.0)

    asyncio.run(main())


def test_calling_a_host_given_model_obj_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match=r"model_obj=.*Scaler.* is already built"):
        ModelHost(model_obj=Scaler())(3.0)


@pytest.mark.timeout(30)
def test_start_builds_the_model_off_the_event_loop() -> None:
    """The model's constructor waits for a coroutine: it would time out on the loop's thread."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        constructing = asyncio.Event()
        release = threading.Event()

        class SlowToBuild(Scaler):
            def __init__(self) -> None:
                loop.call_soon_threadsafe(constructing.set)
                if not release.wait(BOUND_S):
                    raise TimeoutError("the event loop was blocked while the model was built")
                super().__init__()

        host = ModelHost(SlowToBuild)
        starting = asyncio.create_task(host.start())
        await bounded(constructing.wait())  # the loop runs while start() builds the model
        release.set()
        await bounded(starting)
        try:
            assert torch.equal(await bounded(host.predict(ONE)), ONE * 2)
        finally:
            await bounded(host.stop())

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_stop_answers_every_accepted_request_without_blocking_the_loop() -> None:
    async def main() -> None:
        model = Gated()
        host = ModelHost(model_obj=model, wait_ms=0)
        await bounded(host.start())
        first = asyncio.create_task(host.predict(torch.zeros(1, 1)))
        loop = asyncio.get_running_loop()
        assert await bounded(loop.run_in_executor(None, model.entered.wait, BOUND_S))
        rest = [asyncio.create_task(host.predict(torch.full((1, 1), float(i))))
                for i in range(1, 6)]
        await asyncio.sleep(0)  # let the tasks queue their requests (no timing involved)
        stopping = asyncio.create_task(host.stop())
        await asyncio.sleep(0)
        model.release.set()  # set from the loop, while stop() waits for the worker
        assert await bounded(stopping)
        outputs = await bounded(asyncio.gather(first, *rest))
        for i, out in enumerate(outputs):
            assert torch.equal(out, torch.full((1, 1), 2.0 * i))
        with pytest.raises(HostNotRunningError):
            await bounded(host.predict(torch.ones(1, 1)))

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_predict_before_start_is_host_not_running() -> None:
    async def main() -> None:
        with pytest.raises(HostNotRunningError):
            await bounded(ModelHost(model_obj=Scaler()).predict(torch.ones(1, 1)))

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_predict_timeout_reaches_the_thread_host() -> None:
    async def main() -> None:
        model = Gated()
        async with ModelHost(model_obj=model, wait_ms=0) as host:
            first = asyncio.create_task(host.predict(torch.zeros(1, 1)))
            loop = asyncio.get_running_loop()
            assert await bounded(loop.run_in_executor(None, model.entered.wait, BOUND_S))
            with pytest.raises(RequestTimeoutError):
                await bounded(host.predict(torch.ones(1, 1), timeout=0.01))
            model.release.set()
            assert torch.equal(await bounded(first), torch.zeros(1, 1))
        assert host.stats().timed_out == 1

    asyncio.run(main())
