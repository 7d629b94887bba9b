"""Encoding a large preference set: the in-driver loop (before) vs the cached `datasets` path (after).

Writes a synthetic TRL-format JSONL of `--pairs` conversational preference pairs (seeded), then, each in a fresh
process (so peak memory is that stage's own):
  before     kinds.load_records + kinds.encode_rows in the driver, then pickle the encoded list (what `ray.put` of
             the whole set serialises to the object store, once per run)
  after-1    pipelines.data_cache.encode_source with 1 process (empty cache)
  after-2    the same with 2 processes (empty cache)
  after-hit  the same again on the cache that after-2 wrote (a second run)
and prints encode seconds, driver peak RSS (and the map processes' peak), the bytes that go to the object store,
and a check that after-1's examples equal before's (every 97th example and the last one).

    python bench/data_scale.py                 # 200k pairs; the table goes to bench/results/data_scale.md
    python bench/data_scale.py --pairs 20000   # quicker
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("the a an model answer question river city number blue green quickly slowly because therefore however "
         "seven twelve forty ninety garden window paper music theory proof example result method data train test "
         "value step list table chair mountain ocean light dark north south east west").split()


def write_pairs(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))).capitalize() + "."

    with open(path, "w") as handle:
        for _ in range(n):
            handle.write(json.dumps({"prompt": [{"role": "user", "content": text(10, 50)}],
                                     "chosen": [{"role": "assistant", "content": text(10, 80)}],
                                     "rejected": [{"role": "assistant", "content": text(10, 80)}]}) + "\n")


def stage(mode: str, data: str, cache: str, out: str) -> None:
    """One measurement, in this process."""
    from alignkit.data.encode import EncodeSettings
    from alignkit.models.builtin import resolve_builtin
    from alignkit.models.loading import load_tokenizer

    model = str(resolve_builtin("tiny-llama"))
    tokenizer = load_tokenizer(model)
    settings = EncodeSettings(512, 256)
    before_mb = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    start = time.perf_counter()
    if mode == "before":
        from alignkit.kinds import encode_rows, load_records

        loaded = load_records(data, "train", "pairs")
        encoded, _ = encode_rows(tokenizer, loaded.rows, "pairs", settings, loaded.origin)
        seconds = time.perf_counter() - start
        payload = len(pickle.dumps({"train": encoded}))
        sample = {i: encoded[i] for i in list(range(0, len(encoded), 97)) + [len(encoded) - 1]}
        hit = False
    else:
        from alignkit.pipelines.data_cache import encode_source

        rows, stats = encode_source(tokenizer, model, data, "train", "pairs", settings,
                                    num_proc=int(mode.split("-")[1]) if mode != "after-hit" else 2, root=cache)
        seconds = time.perf_counter() - start
        payload = len(pickle.dumps({"train": rows}))
        sample = {i: rows[i] for i in list(range(0, len(rows), 97)) + [len(rows) - 1]}
        hit = stats["cache_hit"]
    Path(out).write_text(json.dumps({
        "mode": mode, "seconds": seconds, "cache_hit": hit, "payload_bytes": payload,
        "driver_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "start_mb": before_mb,
        "children_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "sample": {str(k): v for k, v in sample.items()}}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=200_000)
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--results", default=str(ROOT / "bench" / "results" / "data_scale.md"))
    args = parser.parse_args()
    if args.stage:
        return stage(args.stage, args.data, args.cache, args.out)
    work = Path(tempfile.mkdtemp(prefix="alignkit-data-bench-"))
    data = work / "pairs.jsonl"
    write_pairs(data, args.pairs)
    print(f"{args.pairs} pairs, {data.stat().st_size / 1e6:.0f} MB of JSONL at {data}", flush=True)
    results = {}
    for mode in ("before", "after-1", "after-2", "after-hit"):
        cache = work / ("cache-1" if mode == "after-1" else "cache-2")
        out = work / f"{mode}.json"
        subprocess.run([sys.executable, __file__, "--stage", mode, "--data", str(data), "--cache", str(cache),
                        "--out", str(out)], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        results[mode] = json.loads(out.read_text())
        r = results[mode]
        print(f"{mode}: {r['seconds']:.1f} s, driver peak {r['driver_peak_mb']:.0f} MB, object store "
              f"{r['payload_bytes'] / 1e6:.2f} MB", flush=True)
    same = all(results["before"]["sample"][k] == results[m]["sample"][k] for m in ("after-1", "after-2", "after-hit")
               for k in results["before"]["sample"])
    base = results["before"]["seconds"]
    lines = [f"# Encoding {args.pairs} TRL-format pairs (tiny-llama's SmolLM2 tokenizer, max_length 512; "
             f"`python bench/data_scale.py --pairs {args.pairs}`; {os.cpu_count()} cores)", "",
             "| path | encode s | × before | driver peak RSS MB (rise during the stage) | map processes' peak MB | "
             "to the object store MB |", "|---|---|---|---|---|---|"]
    for mode, label in (("before", "before: driver loop + ray.put of the list"), ("after-1", "datasets map, 1 process"),
                        ("after-2", "datasets map, 2 processes"), ("after-hit", "second run (cache hit)")):
        r = results[mode]
        lines.append(f"| {label} | {r['seconds']:.1f} | {base / r['seconds']:.2f} | {r['driver_peak_mb']:.0f} "
                     f"(+{r['driver_peak_mb'] - r['start_mb']:.0f}) | "
                     f"{r['children_peak_mb']:.0f} | {r['payload_bytes'] / 1e6:.2f} |")
    lines += ["", f"Sampled examples identical between the paths: {same}."]
    print("\n".join(lines))
    Path(args.results).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
