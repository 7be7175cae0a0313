"""lerobot itself loads what policies.demos.lerobot writes: `PYTHONPATH=$PWD python tests/lerobot_check.py`.

Not a pytest module (lerobot is no dependency of sonolab): CI stage .ci/lerobot runs it in a
Python 3.12 environment with lerobot 0.4.4. It writes two small datasets with `DatasetWriter` (one
data file, and one data file per episode), loads each offline with `LeRobotDataset(repo_id,
root=folder)`, and compares every frame: image tensors against uint8 / 255, vectors, flags, strings,
episode and frame indices, task strings, and `delta_timestamps` next actions with their padding at
episode ends. Then it records us_nav's expert with scripts/record.py's `record_demos` (two small
phantoms) and compares lerobot's items with what `read_dataset` reads back. Prints one JSON line;
exits 1 on any mismatch.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Before lerobot is imported: no network, and no Hugging Face cache written outside a temporary folder.
SCRATCH = tempfile.TemporaryDirectory(prefix="lerobot_check.")
os.environ |= {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(Path(SCRATCH.name) / "hf")}

import torch  # noqa: E402
from lerobot.datasets.lerobot_dataset import LeRobotDataset  # noqa: E402

from policies.demos import lerobot as demos  # noqa: E402

FPS = 10
HORIZON = 3  # actions at t, t + 1/FPS, t + 2/FPS
IMAGES = ["observation.images.ultrasound", "observation.images.goal"]
FEATURES = {
    "observation.images.ultrasound": {"dtype": "image", "shape": [16, 12, 1], "names": None},
    "observation.images.goal": {"dtype": "image", "shape": [16, 12, 1], "names": None},
    "observation.state": {"dtype": "float32", "shape": [7], "names": [f"joint_{i}" for i in range(7)]},
    "action": {"dtype": "float32", "shape": [6], "names": ["x", "y", "z", "roll", "pitch", "yaw"]},
    "next.reward": {"dtype": "float32", "shape": [1], "names": None},
    "next.done": {"dtype": "bool", "shape": [1], "names": None},
    "next.success": {"dtype": "bool", "shape": [1], "names": None},
    "observation.meta.probe_type": {"dtype": "string", "shape": [1], "names": None},
    "observation.meta.probe_acquisition_param": {"dtype": "float32", "shape": [6], "names": None},
}
# (length, task, split) in the order they are added: the failed episode is stored last.
EPISODES = [(5, "scan the liver", "train"), (4, "scan the kidney", "failure"), (6, "scan the liver", "train")]


def episode_frames(length: int, seed: int, success: bool) -> dict:
    """One episode's frames of FEATURES."""
    rng = np.random.default_rng(seed)
    done = np.arange(length) == length - 1
    return {
        "observation.images.ultrasound": rng.integers(0, 256, (length, 16, 12), dtype=np.uint8),
        "observation.images.goal": np.repeat(rng.integers(0, 256, (1, 16, 12), dtype=np.uint8), length, axis=0),
        "observation.state": rng.normal(size=(length, 7)).astype(np.float32),
        "action": rng.uniform(-1, 1, (length, 6)).astype(np.float32),
        "next.reward": rng.normal(size=length).astype(np.float32),
        "next.done": done,
        "next.success": done & success,
        "observation.meta.probe_type": ["linear" if seed % 2 else "convex"] * length,
        "observation.meta.probe_acquisition_param": np.tile(rng.uniform(0, 1, 6).astype(np.float32), (length, 1)),
    }


def record(folder: Path) -> list[tuple[dict, str]]:
    """Write the check dataset; return each stored episode's (frames, task), in stored order."""
    writer = demos.DatasetWriter(folder, FPS, FEATURES, "panda", {"task": "us_nav", "check": True})
    added = []
    for seed, (length, task, split) in enumerate(EPISODES):
        frames = episode_frames(length, seed, split == "train")
        writer.add_episode(frames, task, split, {"seed": seed, "success": split == "train", "goal_mm": [1.0, 2.0, 3.0]})
        added.append((frames, task, split))
    writer.close()
    return [(frames, task) for split in ("train", "failure") for frames, task, s in added if s == split]


def compare(dataset: LeRobotDataset, stored: list[tuple[dict, str]], horizon_dataset: LeRobotDataset) -> list[str]:
    """Every mismatch between the loaded datasets' items and the `stored` episodes."""
    mismatches = []
    row = 0
    for episode_index, (frames, task) in enumerate(stored):
        length = len(frames["action"])
        for t in range(length):
            item, ahead = dataset[row], horizon_dataset[row]
            where = f"episode {episode_index} frame {t} (row {row})"
            for name in IMAGES:
                expected = torch.from_numpy(frames[name][t]).float().div(255)[None]
                if not torch.equal(item[name], expected):
                    mismatches.append(f"{where}: {name} {tuple(item[name].shape)} differs from uint8 / 255")
            for name in ["observation.state", "action", "observation.meta.probe_acquisition_param"]:
                if not torch.equal(item[name], torch.from_numpy(frames[name][t])):
                    mismatches.append(f"{where}: {name} differs")
            for name in ["next.reward", "next.done", "next.success"]:
                if item[name].item() != frames[name][t].item():
                    mismatches.append(f"{where}: {name} {item[name].item()} != {frames[name][t].item()}")
            indices = {"episode_index": episode_index, "frame_index": t, "index": row}
            for name, value in indices.items():
                if item[name].item() != value:
                    mismatches.append(f"{where}: {name} {item[name].item()} != {value}")
            if item["task"] != task or item["observation.meta.probe_type"] != frames["observation.meta.probe_type"][t]:
                mismatches.append(
                    f"{where}: task {item['task']!r} / probe_type {item['observation.meta.probe_type']!r}"
                )
            steps = [min(t + k, length - 1) for k in range(HORIZON)]
            if not torch.equal(ahead["action"], torch.from_numpy(frames["action"][steps])):
                mismatches.append(f"{where}: delta_timestamps actions are not rows {steps} of its episode")
            if ahead["action_is_pad"].tolist() != [t + k >= length for k in range(HORIZON)]:
                mismatches.append(f"{where}: action_is_pad {ahead['action_is_pad'].tolist()}")
            row += 1
    return mismatches


def check(folder: Path) -> dict:
    """Record a dataset into `folder`, load it with lerobot and compare; a summary with its mismatches."""
    stored = record(folder)
    dataset = LeRobotDataset("local/check", root=folder)
    horizon = LeRobotDataset("local/check", root=folder, delta_timestamps={"action": [k / FPS for k in range(HORIZON)]})
    mismatches = compare(dataset, stored, horizon)
    frames = sum(len(frames["action"]) for frames, _ in stored)
    if (len(dataset), dataset.num_episodes) != (frames, len(EPISODES)):
        mismatches.append(
            f"{len(dataset)} frames and {dataset.num_episodes} episodes, expected {frames} and {len(EPISODES)}"
        )
    if dataset.meta.stats["observation.images.ultrasound"]["mean"].shape != (1, 1, 1):
        mismatches.append(f"image stats shape {dataset.meta.stats['observation.images.ultrasound']['mean'].shape}")
    if dataset.meta.episodes[len(EPISODES) - 1]["sonolab/success"] is not False:
        mismatches.append(f"episode meta {dataset.meta.episodes[len(EPISODES) - 1]}")
    return {
        "frames": len(dataset),
        "episodes": dataset.num_episodes,
        "data_files": len(list((folder / "data").glob("*/*.parquet"))),
        "mismatch_count": len(mismatches),
        "mismatches": mismatches[:10],  # the JSON line stays readable
    }


def check_recorded(folder: Path) -> dict:
    """Record us_nav's expert (images, 3 episodes) into `folder` as scripts/record.py does; compare
    lerobot's items with sonolab's own reading of the folder."""
    from policies.cli.record import record_demos
    from policies.workflow import compose_config

    small = ["patient.common.spacing_mm=2.0", "patient.train=[{seed: 0},{seed: 1}]", "patient.test=[{seed: 100}]"]
    cfg = compose_config(
        [
            "task=us_nav",
            "task.observation.planes=1",
            "num_envs=4",
            "episodes=3",
            f"dataset={folder}",
            "task.renderer.compile=false",
            *small,
        ]
    )
    record_demos(cfg)
    ours = demos.read_dataset(folder)
    dataset = LeRobotDataset("local/recorded", root=folder)
    mismatches = [] if len(dataset) == ours.info["total_frames"] else [f"{len(dataset)} frames"]
    names = [n for n, spec in ours.features.items() if spec["dtype"] in ("float32", "int64", "bool")]
    for row in range(min(len(dataset), ours.info["total_frames"])):
        item = dataset[row]
        for name in IMAGES:
            if not torch.equal(item[name], torch.from_numpy(ours.frames[name][row]).float().div(255)[None]):
                mismatches.append(f"row {row}: {name}")
        for name in names:
            if not np.array_equal(np.asarray(item[name]).reshape(-1), np.asarray(ours.frames[name][row]).reshape(-1)):
                mismatches.append(f"row {row}: {name}")
        if item["task"] != ours.episodes["task"][int(ours.frames["episode_index"][row])]:
            mismatches.append(f"row {row}: task {item['task']!r}")
    return {"frames": len(dataset), "episodes": dataset.num_episodes, "mismatch_count": len(mismatches),
            "mismatches": mismatches[:10]}  # fmt: skip


def main() -> int:
    start = time.perf_counter()
    root = Path(SCRATCH.name)
    one_file = check(root / "one_file")
    demos.DATA_FILE_SIZE_MB = 1e-4  # 100 bytes: every episode rolls over to a new data file
    many_files = check(root / "many_files")
    recorded = check_recorded(root / "recorded")
    clean = one_file["mismatch_count"] == many_files["mismatch_count"] == recorded["mismatch_count"] == 0
    ok = clean and one_file["data_files"] == 1 and many_files["data_files"] == len(EPISODES)
    summary = {
        "ok": ok,
        "one_file": one_file,
        "many_files": many_files,
        "recorded": recorded,
        "seconds": round(time.perf_counter() - start, 2),
    }
    print(json.dumps(summary))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
