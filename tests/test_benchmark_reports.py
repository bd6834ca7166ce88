"""The two printed reports run end to end (tiny sizes) and print measurements, not goals."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import torch

from benchmarks import core_report, scheduling_report
from benchmarks.overhead import OverheadResult

# What a report must never print: internal goals or tracker references.
NOT_FOR_USERS = re.compile(r"target|issue|goal|#\d", flags=re.I)


@pytest.fixture
def torch_threads() -> Iterator[None]:
    """The reports set torch's thread count: give the next tests theirs back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_core_report_prints_every_method_and_the_lone_caller(
    minilm, torch_threads, capsys: pytest.CaptureFixture[str]
) -> None:
    core_report.main(["--queries", "16", "--clients", "4", "--repeats", "1", "--calls", "20"])
    out = capsys.readouterr().out
    assert not NOT_FOR_USERS.search(out), out
    for method in ("Baseline", "SeqBatcher", "BucketSeqBatcher([16, 32, 64])"):
        assert re.search(rf"^{re.escape(method)} +", out, flags=re.M), (method, out)
    assert re.search(r"^Baseline +/ +1\.00 +[\d.]+ +1\.00x$", out, flags=re.M), out
    for side in ("direct predict_batch", "host.predict", "added by the host"):
        assert re.search(rf"{re.escape(side)} *: +-?[\d.]+ us", out), (side, out)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_scheduling_report_measures_each_policy_against_the_ceiling(
    minilm, torch_threads, capsys: pytest.CaptureFixture[str]
) -> None:
    report = scheduling_report.main(["--queries", "24", "--clients", "4", "--repeats", "1",
                                     "--delay-s", "0.01", "--no-overhead"])
    out = capsys.readouterr().out
    assert not NOT_FOR_USERS.search(out), out
    names = [p["policy"] for p in report["policies"]]
    assert names == ["SeqBatcher", "BucketSeqBatcher", "LengthAwareBatcher",
                     "LengthAwareBatcher, max_delay_s=0.01"]
    assert report["ceiling_qps"] > 0 and len(report["ceilings_qps"]) == len(names)
    for policy in report["policies"]:
        assert policy["queries"] == 24 and policy["pct_of_ceiling"] > 0
        assert re.search(rf"^{re.escape(policy['policy'])} +[\d.]+ +[\d.]+%", out, flags=re.M)
    assert set(report["simulated"]["pct_of_ceiling"]) == set(names)
    assert "% of the ceiling" in out and "of the simulated ceiling" in out
    assert "overhead" not in report


def test_overhead_lines_quote_the_floor_and_the_lone_caller() -> None:
    overhead = OverheadResult(thread_requests_per_s=30_000.0, threads=64,
                              async_requests_per_s=120_000.0, tasks=1_000,
                              lone_caller_direct_ms=0.002, lone_caller_hosted_ms=0.052,
                              thread_floor_requests_per_s=40_000.0)
    text = "\n".join(scheduling_report.overhead_lines(overhead))
    assert not NOT_FOR_USERS.search(text), text
    assert "30,000 requests/s (75% of the hand-off floor)" in text
    assert "hand-off floor, no host:     40,000 requests/s" in text
    assert "1000 asyncio tasks:    120,000 requests/s" in text
    assert "52.0 us through the host, 2.0 us calling predict_batch directly" in text
    assert "the host adds 50.0 us" in text
