"""The web app's modules: no import cycles, error rendering and request reading in leaves, and no blueprint
borrowing another module's private helpers."""

from __future__ import annotations

import ast

from tests.helpers import ROOT

WEB = ROOT / "web"
LEAVES = ["context", "problems", "inputs", "v1_errors"]  # shared by blueprints; import none of them


def imports(path) -> set[str]:
    """Return the web modules a file imports, anywhere in it (inside functions too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "web":
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("web."):
            out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("web."))
    return out


def modules() -> dict[str, set[str]]:
    return {p.stem: imports(p) for p in WEB.glob("*.py") if p.stem != "__init__"}


def test_web_modules_import_without_cycles():
    graph = modules()
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        assert name not in path, f"import cycle: {' -> '.join(path[path.index(name):] + [name])}"
        if name in done:
            return
        for target in sorted(graph.get(name, ())):
            visit(target, path + [name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


def test_leaves_import_no_blueprint():
    blueprints = {p.stem for p in WEB.glob("*.py") if "Blueprint(" in p.read_text()}
    for leaf in LEAVES:
        assert not imports(WEB / f"{leaf}.py") & blueprints, f"web/{leaf}.py imports a blueprint module"


def test_no_module_borrows_another_modules_private_names():
    # The OpenAPI document modules are left out: their generation from the routes rewrites them.
    for path in WEB.glob("*.py"):
        if path.stem.startswith("openapi"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("web"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"web/{path.name} imports {private} from {node.module}"


def test_each_v1_blueprint_answers_errors_in_openais_shape():
    from web import v1, v1_completions, v1_responses
    from web.v1_errors import error_from_exception

    for module in (v1, v1_completions, v1_responses):
        handlers = module.bp.error_handler_spec[None][None]
        assert any(h is error_from_exception for h in handlers.values()), module.__name__
