"""The cluster files install alignkit from its own pyproject.toml, so no version list can drift from it: no file
under cluster/ names a package to pip-install explicitly, and the Ray version of the images is one pyproject
accepts."""
import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
PYPROJECT = tomllib.loads((CLUSTER.parent / "pyproject.toml").read_text())


def _pip_installs(text: str) -> list[str]:
    """The arguments of every `pip install` command (YAML continuation lines and comments dropped)."""
    lines = [line.split("#")[0] for line in text.splitlines()]
    return [m.group(1).strip() for m in re.finditer(r"pip install([^\n]*)", "\n".join(lines))]


def test_cluster_files_install_alignkit_from_its_pyproject():
    found = 0
    for path in CLUSTER.iterdir():
        if path.suffix not in (".yaml", "") and path.name != "Dockerfile":
            continue
        for args in _pip_installs(path.read_text()):
            found += 1
            targets = [a for a in args.split() if not a.startswith("-")]
            ours = r'^"?(\.|/home/ray/alignkit|/app)(\[[a-z,-]+\])?"?$'  # this repository, with extras
            assert targets and all(re.search(ours, t) for t in targets), (
                f"{path.name}: `pip install {args}` names packages; install alignkit from its pyproject instead")
    assert found >= 2  # the Dockerfile and the cluster launcher's setup


def test_ray_version_of_the_images_is_one_pyproject_accepts():
    (ray_req,) = [d for d in PYPROJECT["project"]["dependencies"] if d.startswith("ray")]
    low = tuple(int(x) for x in re.search(r">=([\d.]+)", ray_req).group(1).split("."))
    tags = re.findall(r"rayproject/ray:([\d.]+)", (CLUSTER / "Dockerfile").read_text())
    tags += re.findall(r'rayVersion: "([\d.]+)"', (CLUSTER / "rayjob.yaml").read_text())
    assert tags and all(tuple(int(x) for x in t.split(".")) >= low for t in tags), (tags, ray_req)
    assert len(set(tags)) == 1  # the image and the KubeRay cluster run the same Ray


def test_vllm_extra_is_what_the_cluster_installs():
    assert "vllm" in PYPROJECT["project"]["optional-dependencies"]
