"""A local Ray that cannot hold the trainer workers next to the run's rollout engines fails at once with one message
(Ray Train would retry starting the worker group forever)."""
import pytest

from alignkit.config.loader import load_recipe
from alignkit.distributed.ray_train import check_capacity
from alignkit.errors import AlignkitError
from tests.conftest import REPO


@pytest.fixture
def two_cpus(monkeypatch):
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_JOB_ID", raising=False)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})


def recipe(*overrides):
    return load_recipe(REPO / "recipes/online/tiny_debug.yaml", ["trainer.backend=deepspeed", *overrides])


def test_workers_and_engines_that_do_not_fit_are_refused(two_cpus):
    with pytest.raises(AlignkitError, match=r"the 2 training worker\(s\) need 2 CPU \(.*\) but this local Ray has 2 "
                                            r"while the rollout engines hold 1; .*rollout.cpus_per_engine"):
        check_capacity(recipe("cluster.num_workers=2"), {"CPU": 1.0, "GPU": 0})


def test_what_fits_passes(two_cpus, monkeypatch):
    check_capacity(recipe("cluster.num_workers=2", "cluster.cpus_per_worker=0.5"), {"CPU": 1.0})
    check_capacity(recipe("cluster.num_workers=2"), None)
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")  # a cluster may add nodes: no check
    check_capacity(recipe("cluster.num_workers=4"), {"CPU": 1.0})
