"""Generate the API reference: one page per public module of ``batch_inference``.

At ``builder-inited`` every module whose dotted name has no part starting with
``_`` is imported and gets ``docs/api/<module>.rst``: its docstring, then each
public object *defined* there (``autoclass``/``autofunction``/``autodata``).
Names a module re-exports from elsewhere are listed as links to where they are
defined, so nothing is documented twice and a new module or export shows up
without editing the docs. The index lists the library's modules, then the
measuring API (:data:`MEASURING`); the docs' page harnesses live outside the
package (``benchmarks/``) and have no page here.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path
from types import ModuleType
from typing import Any

PACKAGE = "batch_inference"
API_DIR = "api"
#: The measuring API's package: its modules get the index's second section.
MEASURING = "batch_inference.benchmark"


def public_modules(package: str = PACKAGE) -> list[str]:
    """Dotted names of the package's public modules, sorted (the package first)."""
    root = importlib.import_module(package)
    names = [package]
    for info in pkgutil.walk_packages(root.__path__, prefix=package + "."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


def _public_names(module: ModuleType) -> list[str]:
    """``__all__``, else the classes and functions defined in the module and its
    constants documented with a ``#:`` comment."""
    names = getattr(module, "__all__", None)
    if names is not None:
        return list(names)
    from sphinx.pycode import ModuleAnalyzer

    documented = {attr for scope, attr in ModuleAnalyzer.for_module(module.__name__)
                  .find_attr_docs() if scope == ""}
    return sorted(
        name for name, obj in vars(module).items()
        if not name.startswith("_")
        and (name in documented
             or ((inspect.isclass(obj) or inspect.isfunction(obj))
                 and getattr(obj, "__module__", None) == module.__name__))
    )


def _is_private(module_name: str) -> bool:
    return any(part.startswith("_") for part in module_name.split("."))


def _role(obj: Any) -> str:
    if inspect.isclass(obj):
        return "class"
    if callable(obj):
        return "func"
    return "data"


def module_page(name: str) -> str:
    """The reST of one module's page."""
    module = importlib.import_module(name)
    lines = [name, "=" * len(name), "", f".. automodule:: {name}", ""]
    defined, elsewhere = [], []
    for attr in _public_names(module):
        obj = getattr(module, attr)
        home = getattr(obj, "__module__", None) if _role(obj) != "data" else name
        (defined if home == name else elsewhere).append((attr, obj, home))
    if elsewhere:
        lines += ["Also available here", "-------------------", ""]
        for attr, obj, home in elsewhere:
            lines.append(f"- ``{name}.{attr}``: :{_role(obj)}:`{home}.{attr}`")
        lines.append("")
    if defined and elsewhere:
        lines += ["Defined here", "------------", ""]
    for attr, obj, _ in defined:
        if attr.startswith("__"):
            lines += [f"``{name}.{attr}``: ``{obj!r}``", ""]
            continue
        role = _role(obj)
        if role == "class":
            kind = "autoexception" if issubclass(obj, BaseException) else "autoclass"
            lines += [f".. {kind}:: {name}.{attr}", "   :members:"]
            if any(_is_private(base.__module__) for base in obj.__bases__):
                # e.g. ModelHost's request fronts: shown as its own members, no private base
                lines.append("   :inherited-members:")
            elif obj.__bases__ != (object,):  # "Bases: object" says nothing
                lines.append("   :show-inheritance:")
            lines.append("")
        elif role == "func":
            lines += [f".. autofunction:: {name}.{attr}", ""]
        else:
            lines += [f".. autodata:: {name}.{attr}", ""]
    return "\n".join(lines)


def _is_measuring(name: str) -> bool:
    return name == MEASURING or name.startswith(MEASURING + ".")


def index_page(names: list[str]) -> str:
    """The reST of the API index: a toctree over the library's module pages, then one over
    the measuring API's."""
    title = "API reference"
    lines = [
        title, "=" * len(title), "",
        "Every public module of the package, generated from its docstrings at build time.",
        "The names most code needs are importable from the package itself",
        "(:mod:`batch_inference`) and :mod:`batch_inference.batcher`; to measure your own",
        f"model, :mod:`{MEASURING}` (closed loops, comparing hosts, the fitted cost model).",
    ]
    for caption, wanted in (("The library", False), ("Measuring your own model", True)):
        section = [name for name in names if _is_measuring(name) == wanted]
        if section:
            lines += ["", ".. toctree::", "   :maxdepth: 1", f"   :caption: {caption}", ""]
            lines += [f"   {name}" for name in section]
    return "\n".join(lines) + "\n"


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def write_api_pages(srcdir: str | Path) -> list[str]:
    """Write ``<srcdir>/api/*.rst``; drop pages of modules that no longer exist."""
    out = Path(srcdir) / API_DIR
    out.mkdir(exist_ok=True)
    names = public_modules()
    wanted = {f"{n}.rst" for n in names} | {"index.rst"}
    for stale in out.glob("*.rst"):
        if stale.name not in wanted:
            stale.unlink()
    for name in names:
        _write_if_changed(out / f"{name}.rst", module_page(name))
    _write_if_changed(out / "index.rst", index_page(names))
    return names


def _on_builder_inited(app: Any) -> None:
    write_api_pages(app.srcdir)


def setup(app: Any) -> dict[str, Any]:
    app.connect("builder-inited", _on_builder_inited)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
