"""run.loggers: TensorBoard, W&B (offline) and MLflow (a file store) get exactly the records of metrics.jsonl and
the resolved recipe; read back from what each wrote."""
import json
from pathlib import Path

import pytest

from alignkit.config import recipe_from_dict
from alignkit.engine.loop import TrainData, train
from alignkit.errors import RecipeError
from alignkit.pipelines.preference import prepare_data


def run(tmp_path, loggers, **run_section):
    recipe = recipe_from_dict({
        "run": {"output_dir": str(tmp_path), "name": "tracked", "loggers": loggers, **run_section},
        "model": {"path": "builtin:tiny-llama"},
        "data": {"train": "builtin:concise_arithmetic", "eval": "builtin:concise_arithmetic", "train_size": 8,
                 "eval_size": 4, "max_length": 64, "max_prompt_length": 40},
        "objective": {"name": "dpo"}, "optim": {"lr": 1e-3},
        "trainer": {"backend": "torch", "max_steps": 3, "micro_batch_size": 2, "progress_bar": False,
                    "eval_every": 2}, "eval": {"generate": False}})
    encoded, _ = prepare_data(recipe)
    train(recipe, TrainData("pairs", encoded["train"], encoded["eval"], encoded["pad_id"]), tmp_path)
    return [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]


def expected(records, key):
    return [(r["step"], r[key]) for r in records if key in r]


def test_tensorboard_reads_back_the_metrics(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    records = run(tmp_path, ["jsonl", "tensorboard"])
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    for key in ("train/loss", "eval/loss", "train/lr"):
        got = [(e.step, e.value) for e in events.Scalars(key)]
        assert got == [(s, pytest.approx(v, rel=1e-6)) for s, v in expected(records, key)], key
    assert any("recipe" in tag for tag in events.Tags()["tensors"])  # the resolved recipe, as text


def _leveldb_log_records(raw: bytes):
    """The records of a .wandb file: a 7-byte header (":W&B", magic, version), then LevelDB's log format: 32 KiB
    blocks of chunks (crc32c 4, length 2, type 1: full, first, middle, last)."""
    import struct

    block, pos, parts = 32768, 7, b""
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        data, pos = raw[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0 and length == 0:
            break
        parts = data if kind in (1, 2) else parts + data
        if kind in (1, 4):
            yield parts


def wandb_history(run_file: Path) -> tuple[list[dict], dict]:
    """The history rows and the config of an offline W&B run, read from its .wandb file."""
    from wandb.proto import wandb_internal_pb2

    rows, config = [], {}
    for data in _leveldb_log_records(run_file.read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
        elif kind in ("config", "run"):  # the config comes with the run record, later changes as config records
            items = record.config.update if kind == "config" else record.run.config.update
            config.update({item.key: json.loads(item.value_json) for item in items})
    return rows, config


def test_wandb_offline_reads_back_the_metrics_and_config(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    records = run(tmp_path, ["wandb"], group="my-sweep")
    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    rows, config = wandb_history(run_file)
    for key in ("train/loss", "eval/loss"):
        got = [(r["_step"], r[key]) for r in rows if key in r]
        assert got == [(s, pytest.approx(v, rel=1e-6)) for s, v in expected(records, key)], key
    assert config["run"]["name"] == "tracked" and config["objective"]["name"] == "dpo"


def test_mlflow_file_store_reads_back_the_metrics_and_params(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    records = run(tmp_path, ["mlflow"], group="my-sweep")
    client = mlflow.MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("my-sweep")
    (mlrun,) = client.search_runs([experiment.experiment_id])
    assert mlrun.info.run_name == "tracked" and mlrun.data.params["objective.name"] == "dpo"
    for key in ("train/loss", "eval/loss"):
        got = sorted((m.step, m.value) for m in client.get_metric_history(mlrun.info.run_id, key))
        assert got == [(s, pytest.approx(v, rel=1e-6)) for s, v in expected(records, key)], key


def test_a_missing_tracker_package_is_one_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(RecipeError, match="run.loggers.*wandb needs the wandb package"):
        recipe_from_dict({"model": {"path": "builtin:tiny-llama"}, "data": {"train": "builtin:concise_arithmetic"},
                          "objective": {"name": "sft"}, "run": {"loggers": ["jsonl", "wandb"]}})


def test_a_failed_run_marks_its_mlflow_run_failed(tmp_path, monkeypatch):
    """A run that raises mid-training still ends its tracker runs, as FAILED (they stayed RUNNING before)."""
    import mlflow

    from alignkit.engine.loop import RunHooks

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def fail(step, rank):
        if step == 2:
            raise RuntimeError("worker lost")

    recipe = recipe_from_dict({
        "run": {"output_dir": str(tmp_path), "name": "crashed", "loggers": ["mlflow"], "group": "fails"},
        "model": {"path": "builtin:tiny-llama"},
        "data": {"train": "builtin:concise_arithmetic", "train_size": 8, "max_length": 64, "max_prompt_length": 40},
        "objective": {"name": "sft"}, "trainer": {"backend": "torch", "max_steps": 3, "micro_batch_size": 2,
                                                  "progress_bar": False}, "eval": {"generate": False}})
    encoded, _ = prepare_data(recipe)
    with pytest.raises(RuntimeError, match="worker lost"):
        train(recipe, TrainData("sft", encoded["train"], [], encoded["pad_id"]), tmp_path,
              hooks=RunHooks(on_step_end=fail))
    client = mlflow.MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri())
    (mlrun,) = client.search_runs([client.get_experiment_by_name("fails").experiment_id])
    assert mlrun.info.status == "FAILED"
    assert [m.step for m in client.get_metric_history(mlrun.info.run_id, "train/loss")] == [1, 2]
