"""tools/gpu_docs.sh --dry-run and its helper: wheel checks and the report of a built page."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import gpu_docs_helper  # noqa: E402

PINS = gpu_docs_helper.read_list(ROOT / "tools" / "gpu_wheels.txt")


def fake_wheels(folder: Path, tag: str = "cp312", skip: str | None = None) -> None:
    """Empty files named as the listed wheels would be (binary ones for ``tag``)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, version in PINS:
        if name == skip:
            continue
        binary = name in {"pyzmq", "pydantic-core"}
        tags = f"{tag}-{tag}-manylinux_2_17_x86_64" if binary else "py3-none-any"
        (folder / f"{name.replace('-', '_')}-{version}-{tags}.whl").write_bytes(b"")


def test_the_list_pins_the_docs_stack_and_leaves_the_gpu_images_own_packages_out() -> None:
    names = {name for name, _ in PINS}
    assert {"sphinx", "sphinx-gallery", "myst-parser", "furo", "pyzmq", "fastapi",
            "uvicorn"} <= names
    # the GPU image has these already (KINDS.md's list): carrying them would only add size
    assert not names & {"torch", "numpy", "transformers", "packaging", "pandas", "matplotlib",
                        "tqdm", "httpx", "pillow"}


def test_wheel_check_names_what_is_missing_or_built_for_another_python(tmp_path: Path) -> None:
    fake_wheels(tmp_path, tag="cp311", skip="furo")
    problems = gpu_docs_helper.wheel_problems(PINS, tmp_path, "cp312")
    assert any(p.startswith("furo==") and "no wheel" in p for p in problems)
    assert any(p.startswith("pyzmq==") and "not cp312" in p for p in problems)
    fake_wheels(tmp_path, tag="cp312")
    assert gpu_docs_helper.wheel_problems(PINS, tmp_path, "cp312") == []
    assert "no wheel folder" in gpu_docs_helper.wheel_problems(PINS, tmp_path / "no", "cp312")[0]


def run_script(*args: str, wheels: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("OUT", None)
    return subprocess.run(
        ["bash", str(ROOT / "tools" / "gpu_docs.sh"), *args, "--wheels", str(wheels)],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )


def test_dry_run_checks_the_wheels_says_what_it_would_do_and_exits_0(tmp_path: Path) -> None:
    fake_wheels(tmp_path / "whl")
    result = run_script("--dry-run", str(tmp_path / "out"), wheels=tmp_path / "whl")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the real run would" in result.stdout
    assert "BATCH_INFERENCE_MODE=full" in result.stdout
    assert "wheels and paths in order" in result.stdout
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


def test_dry_run_fails_on_a_missing_wheel_and_names_it(tmp_path: Path) -> None:
    fake_wheels(tmp_path / "whl", skip="sphinx-gallery")
    result = run_script("--dry-run", wheels=tmp_path / "whl")
    assert result.returncode == 1
    assert "sphinx-gallery==" in result.stdout and "no wheel" in result.stdout


PAGE = """<html><body><p>Total running time of the script: (1 minutes 2.5 seconds)</p>
<table><tr><th>Method</th><th>Query Count</th><th>Execution Time</th>
<th>Max Batch Size Setting</th><th>Avg Batch Size</th><th>Queries/s</th><th>Speed-up</th></tr>
<tr><td>Baseline</td><td>2000</td><td>20.00s</td><td>/</td><td>1.00</td><td>100</td><td>1.0x</td></tr>
<tr><td>Bucket Sequence Batcher</td><td>2000</td><td>4.00s</td><td>32</td><td>30.1</td>
<td>500</td><td>5.0x</td></tr></table></body></html>"""


def test_the_report_copies_the_built_table_and_the_results(tmp_path: Path) -> None:
    html, results, out = tmp_path / "html", tmp_path / "generated", tmp_path / "out"
    (html / "auto_tutorials").mkdir(parents=True)
    (html / gpu_docs_helper.BERT_PAGE).write_text(PAGE, encoding="utf-8")
    results.mkdir()
    payload = {"mode": "full", "weights": "bert-base-uncased shape, randomly initialised",
               "environment": {"device": "cuda (H200)"},
               "rows": [{"Method": "Bucket Sequence Batcher", "Speed-up": 5.0,
                         "Model Busy": "93%"}]}
    (results / "bert_embedding.json").write_text(json.dumps(payload), encoding="utf-8")
    assert gpu_docs_helper.report(html, results, out) == []
    table = (out / "bert_table.md").read_text(encoding="utf-8")
    assert "| Bucket Sequence Batcher | 2000 | 4.00s | 32 | 30.1 | 500 | 5.0x |" in table
    assert json.loads((out / "results" / "bert_embedding.json").read_text()) == payload
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert "speed-up: 5.0" in summary and "Model Busy: 93%" in summary
    assert "running time: 62.5 s" in summary


def test_the_report_says_what_is_missing(tmp_path: Path) -> None:
    problems = gpu_docs_helper.report(tmp_path / "html", tmp_path / "gen", tmp_path / "out")
    assert len(problems) == 2 and "no BERT page" in problems[0]
    assert "## Problems" in (tmp_path / "out" / "summary.md").read_text(encoding="utf-8")
