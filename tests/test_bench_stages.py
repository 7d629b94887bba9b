"""bench/fcp.py reuses the stages it ran earlier, but never a stage built on one that ran again."""
import importlib.util

from tests.conftest import REPO


def _fcp_bench():
    spec = importlib.util.spec_from_file_location("fcp_bench", REPO / "bench" / "fcp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_rerun_stage_reruns_what_is_built_on_it(tmp_path):
    bench = _fcp_bench()
    names = [name for name, _, _ in bench.stages(tmp_path)]
    calls = []

    def fake_run(root, name, recipe, overrides, fresh):
        ran = fresh or not (root / name / "final" / "config.json").exists()
        calls.append((name, ran))
        (root / name / "final").mkdir(parents=True, exist_ok=True)
        (root / name / "final" / "config.json").write_text("{}")
        return None

    bench.run_stages(tmp_path, fresh=False, run=fake_run)
    assert calls == [(n, True) for n in names]  # nothing done yet: every stage runs
    calls.clear()
    bench.run_stages(tmp_path, fresh=False, run=fake_run)
    assert not any(ran for _, ran in calls)  # all done: all reused
    calls.clear()
    import shutil

    shutil.rmtree(tmp_path / "offline_fcp")  # the offline FCP stage runs again: both bootstraps start from it
    bench.run_stages(tmp_path, fresh=False, run=fake_run)
    assert {n for n, ran in calls if ran} == {"offline_fcp", "bootstrap_partial", "bootstrap_full"}
    calls.clear()
    shutil.rmtree(tmp_path / "warmstart")  # everything else starts from the warm start
    bench.run_stages(tmp_path, fresh=False, run=fake_run)
    assert {n for n, ran in calls if ran} == set(names)
