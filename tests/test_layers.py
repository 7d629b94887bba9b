"""The code map's rule (README "Code map and extending"): imports point down the layers. A static check of every
module's alignkit imports, so an upward import fails here instead of growing a cycle."""
import ast
from pathlib import Path

ORDER = ["cli", "pipelines", "distributed", "engine", "rollout", "evaluation", "kinds", "models", "data", "config",
         "objectives"]
# import nothing of alignkit but each other; any layer uses them
BASE = {"errors", "paths", "rundir", "ray_session", "device", "__init__"}
ROOT = Path(__file__).resolve().parents[1] / "alignkit"


def test_imports_point_down():
    upward = []
    for path in ROOT.rglob("*.py"):
        layer = path.relative_to(ROOT).parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                if not name.startswith("alignkit."):
                    continue
                target = name.split(".")[1]
                if layer in BASE:
                    assert target in BASE, f"{path}: a base module imports {name}"
                elif target not in BASE and target != layer:
                    assert target in ORDER, f"{path}: {name} is in no layer of the map"
                    if ORDER.index(target) < ORDER.index(layer):
                        upward.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {name}")
    assert not upward, "upward imports:\n" + "\n".join(upward)
