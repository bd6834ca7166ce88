"""The progress bar over measured runs: shown to a watching terminal, never in a docs build."""

from __future__ import annotations

import io
import sys
import types

import pytest

from batch_inference.benchmark import MethodResult, median_of_rounds, progress, progress_enabled
from batch_inference.benchmark.load import LoadResult
from batch_inference.benchmark.progress_bar import PROGRESS_VARIABLE

pytest.importorskip("tqdm")


class Terminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def outside_the_docs_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "sphinx_gallery", raising=False)
    monkeypatch.delenv(PROGRESS_VARIABLE, raising=False)


def test_a_terminal_gets_a_bar_with_every_step_and_label(outside_the_docs_build) -> None:
    stream = Terminal()
    items = list(progress(["a", "b", "c"], "runs", label=lambda item: f"run {item}",
                          file=stream))
    assert items == ["a", "b", "c"]
    shown = stream.getvalue()
    assert "runs" in shown and "3/3" in shown and "run c" in shown


def test_a_stream_that_is_no_terminal_gets_nothing(outside_the_docs_build) -> None:
    stream = io.StringIO()
    assert not progress_enabled(stream)
    assert list(progress(range(4), "runs", file=stream)) == [0, 1, 2, 3]
    assert stream.getvalue() == ""


def test_the_docs_build_gets_nothing_even_when_forced(
    outside_the_docs_build, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "sphinx_gallery", types.ModuleType("sphinx_gallery"))
    monkeypatch.setenv(PROGRESS_VARIABLE, "1")
    stream = Terminal()
    assert not progress_enabled(stream)
    assert list(progress(iter("xy"), "runs", total=2, file=stream)) == ["x", "y"]
    assert stream.getvalue() == ""


@pytest.mark.parametrize(("value", "shown"), [("0", False), ("1", True)])
def test_the_variable_overrides_the_terminal_test(
    outside_the_docs_build, monkeypatch: pytest.MonkeyPatch, value: str, shown: bool
) -> None:
    monkeypatch.setenv(PROGRESS_VARIABLE, value)
    terminal, plain = Terminal(), io.StringIO()
    assert progress_enabled(terminal) is shown
    assert progress_enabled(plain) is shown
    assert list(progress([1, 2], "runs", file=plain)) == [1, 2]
    assert ("2/2" in plain.getvalue()) is shown


def test_without_tqdm_there_is_no_bar(outside_the_docs_build, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm raises ImportError
    stream = Terminal()
    assert not progress_enabled(stream)
    assert list(progress([1], "runs", file=stream)) == [1]


def test_a_bar_left_early_is_closed(outside_the_docs_build) -> None:
    stream = Terminal()
    steps = progress(range(10), "runs", file=stream)
    assert next(steps) == 0
    steps.close()  # the caller stops (e.g. a run raised): the bar ends its line
    assert stream.getvalue().endswith("\n")


def test_median_of_rounds_counts_its_runs_on_the_bar(
    outside_the_docs_build, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)

    def run() -> MethodResult:
        return MethodResult("a", LoadResult(1, 1.0, np.ones(1)), None, 1.0)

    assert len(median_of_rounds([run, run], rounds=2, desc="method runs")) == 2
    shown = terminal.getvalue()
    assert "method runs" in shown and "4/4" in shown and "round 2/2" in shown
