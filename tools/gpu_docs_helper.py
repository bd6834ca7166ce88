"""Helper of ``tools/gpu_docs.sh``: checks its wheels, and reports what a docs build measured.

``python tools/gpu_docs_helper.py wheels --list tools/gpu_wheels.txt --dir .whl``
    Every ``NAME==VERSION`` of the list has its wheel in the folder, for this
    Python where the wheel is binary; prints one line per problem; exit 1 on
    any (``--python-tag cp312`` checks against another Python than this one).
``python tools/gpu_docs_helper.py report --html docs/_build/html --results docs/_generated
--out DIR``
    Writes ``DIR/bert_table.md`` (the BERT page's results table, as built),
    ``DIR/bert_page.html``, ``DIR/results/*.json`` and ``DIR/summary.md``.

Standard library only (it runs before anything is installed), plus the docs'
own ``docs/_ext/bi_checks.py`` to read the built page as the build checks it.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BERT_PAGE = "auto_tutorials/plot_bert_embedding.html"
#: What batch-inference 1.0 published for its bucket batcher over its baseline (RTX 2080 Ti).
SEED_BUCKET_SPEEDUP = 3.7


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def read_list(path: Path) -> list[tuple[str, str]]:
    """``(name, version)`` of every ``NAME==VERSION`` line (comments and blanks skipped)."""
    pins = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not name or not version:
            raise SystemExit(f"{path}:{number}: expected NAME==VERSION, got {raw!r}")
        pins.append((name.strip(), version.strip()))
    return pins


def wheel_problems(pins: list[tuple[str, str]], folder: Path, python_tag: str) -> list[str]:
    """What is missing from ``folder``, or there but unusable by ``python_tag`` (``cp312``)."""
    if not folder.is_dir():
        return [f"no wheel folder {folder} (run tools/fetch_gpu_wheels.sh)"]
    wheels: dict[tuple[str, str], list[str]] = {}
    for path in folder.glob("*.whl"):
        parts = path.name[:-4].split("-")
        if len(parts) >= 5:
            wheels.setdefault((_normal(parts[0]), parts[1]), []).append(parts[-2])
    problems = []
    for name, version in pins:
        abis = wheels.get((_normal(name), version))
        if abis is None:
            problems.append(f"{name}=={version}: no wheel in {folder}")
        elif not any(abi in ("none", "abi3", python_tag) for abi in abis):
            problems.append(f"{name}=={version}: wheels for {sorted(abis)}, not {python_tag}")
    return problems


def _bi_checks() -> object:
    sys.path.insert(0, str(ROOT / "docs" / "_ext"))
    import bi_checks

    return bi_checks


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def report(html_dir: Path, results_dir: Path, out: Path) -> list[str]:
    """Write the report files into ``out``; return the problems found (empty: complete)."""
    checks = _bi_checks()
    out.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    lines = ["# Docs build on an accelerator", ""]
    page_path = html_dir / BERT_PAGE
    if page_path.exists():
        shutil.copyfile(page_path, out / "bert_page.html")
        page = checks.parse_page(page_path.read_text(encoding="utf-8"))
        found = checks.find_table(page, checks.BERT_COLUMNS)
        if found is None:
            problems.append(f"{page_path} has no BERT results table")
        else:
            table = markdown_table(*found)
            (out / "bert_table.md").write_text(table, encoding="utf-8")
            lines += ["## BERT table (as built)", "", table]
        seconds = checks.running_time_s(page)
        lines.append(f"BERT page running time: {seconds} s\n")
    else:
        problems.append(f"no BERT page at {page_path} (the build failed or did not get there)")
    saved = sorted(results_dir.glob("*.json")) if results_dir.is_dir() else []
    if saved:
        (out / "results").mkdir(exist_ok=True)
        for path in saved:
            shutil.copyfile(path, out / "results" / path.name)
        lines += ["## Results saved by the tutorials", ""]
        lines += [f"- results/{path.name}" for path in saved]
        lines.append("")
        lines += _bert_summary(results_dir / "bert_embedding.json")
    else:
        problems.append(f"no results JSON in {results_dir}")
    if problems:
        lines += ["## Problems", ""] + [f"- {p}" for p in problems]
    (out / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return problems


def _bert_summary(path: Path) -> list[str]:
    """Mode, weights, the bucket batcher's speed-up against 1.0's published one, busy shares."""
    if not path.exists():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    lines = [f"mode: {data.get('mode')}; weights: {data.get('weights')}"]
    for key, value in (data.get("environment") or {}).items():
        lines.append(f"- {key}: {value}")
    for row in data.get("rows", []):
        if str(row.get("Method", "")).startswith("Bucket"):
            speedup = row.get("Speed-up")
            lines.append(f"Bucket Sequence Batcher speed-up: {speedup} (batch-inference 1.0 "
                         f"published {SEED_BUCKET_SPEEDUP}x on an RTX 2080 Ti)")
            for key, value in row.items():
                if "busy" in key.lower():
                    lines.append(f"Bucket Sequence Batcher {key}: {value}")
    return lines + [""]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    wheels = sub.add_parser("wheels", help="check the wheel folder against the list")
    wheels.add_argument("--list", type=Path, default=ROOT / "tools" / "gpu_wheels.txt")
    wheels.add_argument("--dir", type=Path, default=ROOT / ".whl")
    wheels.add_argument("--python-tag", default=f"cp{sys.version_info[0]}{sys.version_info[1]}")
    rep = sub.add_parser("report", help="copy the built BERT table and results into a folder")
    rep.add_argument("--html", type=Path, default=ROOT / "docs" / "_build" / "html")
    rep.add_argument("--results", type=Path, default=ROOT / "docs" / "_generated")
    rep.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "wheels":
        pins = read_list(args.list)
        problems = wheel_problems(pins, args.dir, args.python_tag)
        for problem in problems:
            print(f"WHEELS: {problem}")
        if not problems:
            print(f"ok: the {len(pins)} wheels of {args.list.name} are in {args.dir} "
                  f"(for {args.python_tag})")
        return 1 if problems else 0
    problems = report(args.html, args.results, args.out)
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print(f"report written to {args.out}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
