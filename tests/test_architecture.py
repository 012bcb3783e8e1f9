"""The layout's two rules, checked on the source: imports only go down the data's path, and the web
tier (URLconf, views, selectors, templates' tags) loads without torch or the other ML libraries."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Floors along the data's path (docs/architecture.md draws them). A module may import its own app and
# any app on a lower floor, never a higher one. Apps on one floor do not import each other.
FLOORS = {
    "accounts": 0,
    "pool": 1,
    "annotate": 2,
    "scoring": 3,
    "training": 4,
    "curate": 5,
    "loop": 6,
    "loupe_api": 7,
    "config": 8,
}
HEAVY = ("torch", "torchvision", "transformers", "open_clip", "sentence_transformers", "timm")


def _imported_apps(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every absolute import in a file, including ones inside functions."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return [(line, name) for line, name in found if name in FLOORS]


def upward_imports(root: Path = ROOT) -> list[str]:
    problems = []
    for app, floor in FLOORS.items():
        for path in sorted((root / app).rglob("*.py")):
            if "migrations" in path.parts:
                continue  # history: a migration names the app a model lived in at the time
            for line, other in _imported_apps(path):
                if other != app and FLOORS[other] >= floor and app != "config":
                    rel = path.relative_to(root)
                    problems.append(f"{rel}:{line} imports {other} (floor {FLOORS[other]}) from {app} (floor {floor})")
    return problems


def test_no_module_imports_a_higher_floor():
    assert upward_imports() == []


def test_the_check_catches_an_upward_import(tmp_path):
    for app in FLOORS:
        (tmp_path / app).mkdir()
    (tmp_path / "pool" / "views.py").write_text("def f():\n    from annotate.models import Task\n")
    (tmp_path / "curate" / "flags.py").write_text("from pool.models import Caption\n")
    assert upward_imports(tmp_path) == ["pool/views.py:2 imports annotate (floor 2) from pool (floor 1)"]


def test_every_app_has_a_floor():
    apps = {p.parent.name for p in ROOT.glob("*/apps.py")}
    assert apps <= set(FLOORS), f"apps without a floor: {apps - set(FLOORS)}"


def test_web_tier_loads_without_the_ml_stack(tmp_path):
    """A fresh interpreter: django.setup(), the whole URLconf, every view module and the template tags."""
    script = f"""
import json, os, sys
os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
import django
django.setup()
from django.urls import get_resolver
resolver = get_resolver()
resolver.url_patterns
from django.template import engines
engines["django"].engine.template_libraries
print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))
"""
    env = {**os.environ, "LOUPE_DATA_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    env.pop("DATABASE_URL", None)
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
