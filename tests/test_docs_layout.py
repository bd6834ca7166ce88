"""Where things live: the wheel holds the library, the page harnesses stay in ``benchmarks/``.

The API reference documents the package only; the gallery shows the tutorials
apart from the benchmark reports; every tutorial that imports ``benchmarks``
finds it the same way when run on its own; the harness modules import one
another without a cycle.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs" / "_ext"))

import bi_api  # noqa: E402
import bi_gallery  # noqa: E402

#: The one line that puts the repository root on ``sys.path`` in a tutorial run on its own.
PATH_SETUP = "sys.path.insert(0, str(Path(sys.argv[0]).resolve().parents[1]))"
#: What the measuring API keeps in the package (``batch_inference.benchmark``).
MEASURING = {"compare", "load", "mode", "progress_bar", "results", "simulate"}


def test_the_wheel_leaves_out_benchmarks() -> None:
    from setuptools import find_packages

    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    packages = find_packages(str(ROOT), include=find["find"]["include"],
                             exclude=find["find"].get("exclude", ()))
    assert "batch_inference" in packages and "batch_inference.benchmark" in packages
    assert not [p for p in packages if p.split(".")[0] != "batch_inference"], packages


def test_the_package_keeps_only_the_measuring_api() -> None:
    kept = {p.stem for p in (ROOT / "batch_inference" / "benchmark").glob("*.py")}
    assert kept == MEASURING | {"__init__"}
    harness = {p.stem for p in (ROOT / "benchmarks").glob("*.py")}
    assert {"http_app", "http_server", "accelerator", "core_report"} <= harness
    assert not harness & MEASURING


def test_the_api_reference_documents_the_library_only() -> None:
    names = bi_api.public_modules()
    assert all(n == "batch_inference" or n.startswith("batch_inference.") for n in names)
    measuring = [n for n in names if n.startswith("batch_inference.benchmark")]
    assert measuring == ["batch_inference.benchmark"] + [
        f"batch_inference.benchmark.{m}" for m in sorted(MEASURING)]
    index = bi_api.index_page(names)
    library, _, rest = index.partition(":caption: Measuring your own model")
    assert ":caption: The library" in library and "   batch_inference.host\n" in library
    assert "batch_inference.benchmark" not in library.split(":caption: The library")[1]
    assert rest.split() == measuring


def _module_imports(path: Path) -> set[str]:
    """The ``benchmarks`` modules ``path`` imports anywhere (for type checking, in a function)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 1:
                names = [module] if module else [a.name for a in node.names]
                found.update(n.split(".")[0] for n in names)
            elif module.startswith("benchmarks."):
                found.add(module.split(".")[1])
    return found


def test_the_harness_modules_import_each_other_without_a_cycle() -> None:
    graph = {p.stem: _module_imports(p) for p in (ROOT / "benchmarks").glob("*.py")}
    assert "http_app" not in graph["http_backends"]  # the app picks a backend, not the reverse
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"import cycle: {' -> '.join(path + (name,))}"
        if name in done:
            return
        for target in sorted(graph.get(name, ())):
            visit(target, path + (name,))
        done.add(name)

    for name in sorted(graph):
        visit(name, ())


def test_shared_constants_and_the_model_that_does_nothing_are_defined_once() -> None:
    sources = {p: p.read_text() for d in ("benchmarks", "batch_inference", "tutorials", "tools",
                                          "tests") for p in (ROOT / d).rglob("*.py")}
    buckets = [p for p, text in sources.items() if re.search(r"^BUCKETS\s*=", text, re.M)]
    assert buckets == [ROOT / "benchmarks" / "bert.py"]
    do_nothing = re.compile(r"def predict_batch\(self, (\w+)(?:: [^)]*)?\)[^:]*:\n\s+return \1\n")
    models = [p for p, text in sources.items() if do_nothing.search(text)
              and not p.name.startswith("test_")]
    assert models == [ROOT / "benchmarks" / "_accelerator_harness.py"]


def _tutorials_importing_benchmarks() -> list[Path]:
    return [p for p in sorted((ROOT / "tutorials").glob("plot_*.py"))
            if re.search(r"^from benchmarks\b|^import benchmarks\b", p.read_text(), re.M)]


def test_tutorials_find_benchmarks_the_same_way() -> None:
    tutorials = _tutorials_importing_benchmarks()
    assert tutorials, "no tutorial imports benchmarks"
    for path in tutorials:
        lines = path.read_text().splitlines()
        first_import = next(i for i, line in enumerate(lines)
                            if re.match(r"(from|import) benchmarks\b", line))
        setups = [i for i, line in enumerate(lines) if line.startswith(PATH_SETUP)]
        assert len(setups) == 1 and setups[0] < first_import, path.name


def test_a_tutorial_run_on_its_own_imports_benchmarks(tmp_path: Path) -> None:
    """The path line in a script run from elsewhere: ``benchmarks`` comes from beside tutorials/."""
    import subprocess

    (tmp_path / "repo" / "tutorials").mkdir(parents=True)
    (tmp_path / "repo" / "benchmarks").symlink_to(ROOT / "benchmarks")
    script = tmp_path / "repo" / "tutorials" / "plot_probe.py"
    script.write_text("import sys\nfrom pathlib import Path\n\n" + PATH_SETUP + "\n\n"
                      "import benchmarks\nprint(benchmarks.__file__)\n")
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / "repo" / "benchmarks" / "__init__.py")


# ---------------------------------------------------------------- the gallery's two sections


def _thumbnail(name: str) -> str:
    """One example's thumbnail, as sphinx-gallery writes it (its THUMBNAIL_TEMPLATE)."""
    return (f"\n.. raw:: html\n\n    <div class=\"sphx-glr-thumbcontainer\" tooltip=\"{name}\">"
            f"\n\n.. only:: html\n\n  .. image:: /auto_tutorials/images/thumb/sphx_glr_{name}"
            f"_thumb.png\n    :alt:\n\n  :doc:`/auto_tutorials/{name}`\n\n.. raw:: html\n\n"
            f"      <div class=\"sphx-glr-thumbnail-title\">{name}</div>\n    </div>\n\n")


def _index(names: list[str]) -> str:
    toctree = ".. toctree::\n   :hidden:\n\n" + "".join(f"   /auto_tutorials/{n}\n"
                                                        for n in names)
    return (":orphan:\n\nTutorials and benchmarks\n========================\n\nHeader.\n"
            + bi_gallery._OPEN + "".join(_thumbnail(n) for n in names) + bi_gallery._CLOSE
            + toctree)


def test_the_markup_is_sphinx_gallerys() -> None:
    backreferences = pytest.importorskip("sphinx_gallery.backreferences")
    assert bi_gallery._OPEN == backreferences.THUMBNAIL_PARENT_DIV
    assert bi_gallery._CLOSE == backreferences.THUMBNAIL_PARENT_DIV_CLOSE
    template = backreferences.THUMBNAIL_TEMPLATE
    assert _thumbnail("plot_x") == template.format(
        tags="", intro="plot_x", thumbnail="auto_tutorials/images/thumb/sphx_glr_plot_x_thumb.png",
        doc_name="/auto_tutorials/plot_x", title="plot_x")


def test_the_gallery_index_shows_tutorials_apart_from_reports() -> None:
    names = ["plot_quickstart", "plot_asyncio", "plot_bert_embedding", "plot_new_report"]
    text = _index(names)
    split = bi_gallery.split_index(text)
    tutorials, _, reports = split.partition("\nBenchmark reports\n-----------------\n")
    assert "\nTutorials\n---------\n" in tutorials
    assert [n for n in names if f":doc:`/auto_tutorials/{n}`" in tutorials] == names[:2]
    assert [n for n in names if f":doc:`/auto_tutorials/{n}`" in reports] == names[2:]
    assert split.count(bi_gallery._OPEN) == split.count(bi_gallery._CLOSE) == 2
    assert split.startswith(text[:text.index(bi_gallery._OPEN)])  # the header, as it was
    assert split.endswith(text[text.index(bi_gallery._CLOSE) + len(bi_gallery._CLOSE):])
    assert bi_gallery.split_index(split) == split  # once only
    only_reports = bi_gallery.split_index(_index(["plot_bert_embedding"]))
    assert "\nTutorials\n" not in only_reports and "\nBenchmark reports\n" in only_reports
    assert bi_gallery.split_index(only_reports) == only_reports
    with pytest.raises(ValueError, match="names no plot_"):
        bi_gallery.split_index(_index(["plot_x"]).replace(":doc:`/auto_tutorials/plot_x`", ""))


def test_the_gallery_orders_tutorials_then_reports() -> None:
    files = sorted(p.name for p in (ROOT / "tutorials").glob("plot_*.py"))
    assert set(bi_gallery.TUTORIALS) <= set(files)
    assert set(bi_gallery.REPORTS_FIRST) <= set(files) - set(bi_gallery.TUTORIALS)
    order = sorted(files, key=bi_gallery.TutorialOrder(str(ROOT / "tutorials")))
    assert order[: len(bi_gallery.TUTORIALS)] == list(bi_gallery.TUTORIALS)
    reports = order[len(bi_gallery.TUTORIALS):]
    assert reports[0] == "plot_bert_embedding.py"
    assert reports[1:] == sorted(reports[1:])


# ---------------------------------------------------------------- what the user pages say


def _docstrings(path: Path) -> str:
    tree = ast.parse(path.read_text())
    return "\n".join(ast.get_docstring(node) or "" for node in ast.walk(tree)
                     if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef
                                   | ast.AsyncFunctionDef))


def test_user_pages_name_batch_inference_1_0_never_the_seed() -> None:
    pages = {p: p.read_text() for p in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md"),
                                        *(ROOT / "tutorials").glob("*.py"),
                                        ROOT / "tutorials" / "README.rst"]
             if "_build" not in p.parts and "auto_tutorials" not in p.parts}
    pages.update({p: _docstrings(p) for d in ("batch_inference", "benchmarks")
                  for p in (ROOT / d).rglob("*.py")})
    seed = re.compile(r"\bthe seed\b|\bseed's\b|\bseed (example|workload|page)\b", re.I)
    found = [f"{p.relative_to(ROOT)}: {m.group(0)!r}" for p, text in pages.items()
             for m in seed.finditer(text)]
    assert found == []
