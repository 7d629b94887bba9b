"""`ray job submit` against a real local head (started and stopped here), as cluster/README.md shows it."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    """A head in its own process group (`ray start --block`), stopped by signalling that group only: `ray stop`
    would also kill every other Ray on the machine."""
    ray = str(Path(sys.executable).parent / "ray")
    port, dashboard = free_port(), free_port()
    temp = Path("/tmp") / f"akray{os.getpid()}"  # Ray needs a short socket path
    # The job's `python` is whatever the head's PATH finds: as for a user who starts the head from an activated venv.
    env = {**os.environ, "RAY_AUTH_MODE": "disabled",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    head = subprocess.Popen([ray, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
                             "--num-cpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                             f"--dashboard-port={dashboard}", "--disable-usage-stats", f"--temp-dir={temp}",
                             # own agent ports, so another Ray on this machine (a local run) cannot block them
                             f"--dashboard-agent-listen-port={free_port()}",
                             f"--dashboard-agent-grpc-port={free_port()}", f"--metrics-export-port={free_port()}",
                             f"--runtime-env-agent-port={free_port()}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{address}/api/version", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert head.poll() is None and time.time() < deadline, "the Ray head did not come up"
            time.sleep(1)
        yield address, env
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(head.pid, sig)
            except ProcessLookupError:
                break
            try:
                head.wait(timeout=20)
                break
            except subprocess.TimeoutExpired:
                continue


@pytest.mark.slow  # ~105 s each (its own Ray head); the default suite keeps under 10 minutes on 2 cores
@pytest.mark.parametrize("recipe,overrides,steps", [
    ("recipes/dpo/tiny_debug.yaml", ["trainer.max_steps=2", "eval.num_prompts=4"], 2),
    # an online run in a job: the engine actor and the trainer worker on the job's cluster (0.9 CPU each of 2)
    ("recipes/online/tiny_debug.yaml", ["online.rounds=1", "cluster.cpus_per_worker=0.9",
                                        "rollout.cpus_per_engine=0.9"], 2),
])
def test_job_submit_runs_a_recipe(ray_head, tmp_path, recipe, overrides, steps):
    address, env = ray_head
    out = tmp_path / "run"
    cmd = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", address, "--working-dir", ".",
           "--runtime-env", "cluster/runtime_env.yaml", "--", "python", "launch.py", recipe,
           f"run.output_dir={out}", *overrides]
    start = time.perf_counter()
    for _ in range(30):  # the head answers HTTP before its job agent is up: "No available agent to submit job"
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
        if "No available agent" not in proc.stderr:
            break
        time.sleep(2)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "succeeded" in (proc.stdout + proc.stderr).lower()
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == steps
    assert (out / "final" / "model.safetensors").exists() and (out / "report.md").exists()
    print(f"job submit to SUCCEEDED: {time.perf_counter() - start:.1f} s")
