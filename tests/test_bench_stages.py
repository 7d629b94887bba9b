"""bench/fcp.py reuses the stages it ran earlier, but never a stage built on one that ran again."""
import importlib.util
import os
import shutil

from tests.conftest import REPO


def _fcp_bench():
    spec = importlib.util.spec_from_file_location("fcp_bench", REPO / "bench" / "fcp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_rerun_stage_reruns_what_is_built_on_it(tmp_path):
    bench = _fcp_bench()
    names = [name for name, _, _ in bench.stages(tmp_path)]
    calls, clock = [], [10**9]

    def fake_run(root, name, recipe, overrides, fresh):
        done = root / name / "final" / "config.json"
        ran = fresh or not done.exists()
        calls.append((name, ran))
        if ran:  # a stage that runs finishes later than every stage before it
            done.parent.mkdir(parents=True, exist_ok=True)
            done.write_text("{}")
            clock[0] += 1
            os.utime(done, ns=(clock[0] * 10**9, clock[0] * 10**9))
        return None

    bench.run_stages(tmp_path, fresh=False, run=fake_run)
    assert calls == [(n, True) for n in names]  # nothing done yet: every stage runs
    calls.clear()
    bench.run_stages(tmp_path, fresh=False, run=fake_run)
    assert not any(ran for _, ran in calls)  # all done: all reused
    calls.clear()
    shutil.rmtree(tmp_path / "offline_fcp")  # the offline FCP stage runs again: both bootstraps start from it
    bench.run_stages(tmp_path, fresh=False, run=fake_run)
    assert {n for n, ran in calls if ran} == {"offline_fcp", "bootstrap_partial", "bootstrap_full"}
    calls.clear()
    shutil.rmtree(tmp_path / "warmstart")  # everything else starts from the warm start
    bench.run_stages(tmp_path, fresh=False, run=fake_run)
    assert {n for n, ran in calls if ran} == set(names)
    calls.clear()
    shutil.rmtree(tmp_path / "rft")  # interrupted after RFT ran again: the next invocation still reruns its child
    bench.run_stages(tmp_path, fresh=False, run=lambda *a: fake_run(*a) if a[1] == "rft" else None)
    bench.run_stages(tmp_path, fresh=False, run=fake_run)
    assert {n for n, ran in calls if ran} == {"rft", "rft_online_rs"}
