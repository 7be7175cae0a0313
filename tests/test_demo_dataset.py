"""policies/demos/lerobot.py: LeRobotDataset v3.0 folders written and read back with real pyarrow files.

tests/lerobot_check.py loads the same kind of folder with lerobot itself (CI stage .ci/lerobot).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from policies.demos import lerobot
from policies.demos.lerobot import DEFAULT_FEATURES, DatasetWriter, read_dataset
from sim.errors import InputError

FPS = 10
FEATURES = {
    "observation.images.ultrasound": {"dtype": "image", "shape": [12, 10, 1], "names": None},
    "observation.state": {"dtype": "float32", "shape": [4], "names": ["a", "b", "c", "d"]},
    "action": {"dtype": "float32", "shape": [3], "names": None},
    "next.reward": {"dtype": "float32", "shape": [1], "names": None},
    "next.done": {"dtype": "bool", "shape": [1], "names": None},
    "observation.meta.probe_type": {"dtype": "string", "shape": [1], "names": None},
}
LENGTHS = [5, 3, 7]  # the second episode fails
SPLITS = ["train", "failure", "train"]
TASKS = ["scan the liver", "scan the kidney", "scan the liver"]


def episode_frames(length: int, seed: int) -> dict:
    """One episode's frames of FEATURES."""
    rng = np.random.default_rng(seed)
    return {
        "observation.images.ultrasound": rng.integers(0, 256, (length, 12, 10), dtype=np.uint8),
        "observation.state": rng.normal(size=(length, 4)).astype(np.float32),
        "action": rng.uniform(-1, 1, (length, 3)).astype(np.float32),
        "next.reward": rng.normal(size=length).astype(np.float32),
        "next.done": np.arange(length) == length - 1,
        "observation.meta.probe_type": ["linear" if seed % 2 else "convex"] * length,
    }


@pytest.fixture
def recorded(tmp_path: Path) -> tuple[Path, list[dict]]:
    """A three-episode dataset (episode 1 in the "failure" split) and the frames written, in add order."""
    writer = DatasetWriter(tmp_path / "demos", FPS, FEATURES, "panda", {"task": "us_nav", "layout": [4, 3]})
    episodes = [episode_frames(length, seed) for seed, length in enumerate(LENGTHS)]
    for seed, (frames, task, split) in enumerate(zip(episodes, TASKS, SPLITS)):
        meta = {
            "seed": seed,
            "success": split == "train",
            "score": 0.5 * seed,
            "patient": f"p{seed}",
            "goal": [1.0, seed],
        }
        writer.add_episode(frames, task, split, meta)
    assert writer.close() == tmp_path / "demos"
    return tmp_path / "demos", episodes


def stored_order(episodes: list) -> list:
    """`episodes` in the order the dataset stores them: the train split first."""
    return [episodes[0], episodes[2], episodes[1]]


def test_round_trip(recorded) -> None:
    folder, episodes = recorded
    dataset = read_dataset(folder)
    stored = stored_order(episodes)
    for name in FEATURES:
        expected = np.concatenate([np.asarray(frames[name]) for frames in stored])
        np.testing.assert_array_equal(dataset.frames[name], expected, err_msg=name)
    assert dataset.frames["observation.images.ultrasound"].dtype == np.uint8
    assert dataset.frames["observation.meta.probe_type"].tolist()[:5] == ["convex"] * 5
    lengths = [5, 7, 3]
    np.testing.assert_array_equal(dataset.episodes["length"], lengths)
    np.testing.assert_array_equal(dataset.episodes["dataset_from_index"], [0, 5, 12])
    np.testing.assert_array_equal(dataset.episodes["dataset_to_index"], [5, 12, 15])
    assert dataset.episodes["split"].tolist() == ["train", "train", "failure"]
    assert dataset.info["splits"] == {"train": "0:2", "failure": "2:3"}
    assert dataset.tasks == ["scan the liver", "scan the kidney"]
    assert dataset.episodes["task"].tolist() == ["scan the liver", "scan the liver", "scan the kidney"]
    np.testing.assert_array_equal(dataset.frames["task_index"], np.repeat([0, 0, 1], lengths))
    np.testing.assert_array_equal(dataset.frames["episode_index"], np.repeat([0, 1, 2], lengths))
    np.testing.assert_array_equal(dataset.frames["index"], np.arange(15))
    frame_index = np.concatenate([np.arange(n) for n in lengths])
    np.testing.assert_array_equal(dataset.frames["frame_index"], frame_index)
    np.testing.assert_allclose(dataset.frames["timestamp"], frame_index / FPS, rtol=1e-6)
    assert dataset.episodes["sonolab/seed"].tolist() == [0, 2, 1]
    assert dataset.episodes["sonolab/success"].tolist() == [True, True, False]
    assert dataset.episodes["sonolab/patient"].tolist() == ["p0", "p2", "p1"]
    np.testing.assert_allclose(dataset.episodes["sonolab/score"], [0.0, 1.0, 0.5])
    np.testing.assert_allclose(dataset.episodes["sonolab/goal"], [[1, 0], [1, 2], [1, 1]])
    assert dataset.sonolab == {"task": "us_nav", "layout": [4, 3]} and dataset.fps == FPS
    assert dataset.features == {**FEATURES, **DEFAULT_FEATURES} | {
        "observation.images.ultrasound": {"dtype": "image", "shape": [12, 10, 1], "names": lerobot.IMAGE_NAMES}
    }


def test_reading_a_subset_of_features(recorded) -> None:
    folder, episodes = recorded
    dataset = read_dataset(folder, features=["action"])
    assert set(dataset.frames) == {"action", *DEFAULT_FEATURES}
    np.testing.assert_array_equal(
        dataset.frames["action"], np.concatenate([f["action"] for f in stored_order(episodes)])
    )
    with pytest.raises(InputError, match=r"features to read from .*demos: expected names among .*got \['nope'\]"):
        read_dataset(folder, features=["nope"])


def test_rgb_images_and_scalar_shapes_round_trip(tmp_path: Path) -> None:
    features = {
        "rgb": {"dtype": "image", "shape": [6, 5, 3], "names": None},
        "count": {"dtype": "int64", "shape": [1], "names": None},
        "flags": {"dtype": "bool", "shape": [2], "names": None},
    }
    rng = np.random.default_rng(3)
    frames = {
        "rgb": rng.integers(0, 256, (4, 6, 5, 3), dtype=np.uint8),
        "count": np.arange(4).reshape(4, 1),  # (T, 1) is as good as (T,) for a shape-[1] feature
        "flags": rng.random((4, 2)) > 0.5,
    }
    writer = DatasetWriter(tmp_path / "rgb", 30, features, "panda", {})
    writer.add_episode(frames, "task")
    dataset = read_dataset(writer.close())
    np.testing.assert_array_equal(dataset.frames["rgb"], frames["rgb"])
    np.testing.assert_array_equal(dataset.frames["count"], np.arange(4))
    np.testing.assert_array_equal(dataset.frames["flags"], frames["flags"])
    png = pq.read_table(tmp_path / "rgb/data/chunk-000/file-000.parquet")["rgb"][0].as_py()["bytes"]
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), frames["rgb"][0])  # RGB order, as PIL reads


def test_the_schema_lerobot_requires(recorded) -> None:
    folder, _ = recorded
    info = json.loads((folder / "meta/info.json").read_text())
    for key, value in {
        "codebase_version": "v3.0",
        "robot_type": "panda",
        "total_episodes": 3,
        "total_frames": 15,
        "total_tasks": 2,
        "chunks_size": 1000,
        "data_files_size_in_mb": 100,
        "video_files_size_in_mb": 200,
        "fps": FPS,
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": None,
    }.items():
        assert info[key] == value, key
    for name, spec in DEFAULT_FEATURES.items():
        assert info["features"][name] == spec == {"dtype": spec["dtype"], "shape": [1], "names": None}
    data = pq.read_table(folder / "data/chunk-000/file-000.parquet")
    assert data.column_names == list(info["features"])  # exactly the features: an extra column is a CastError
    assert data.schema.field("observation.state").type == pa.list_(pa.float32(), 4)
    assert data.schema.field("observation.images.ultrasound").type == pa.struct(
        [("bytes", pa.binary()), ("path", pa.string())]
    )
    assert data.schema.field("next.reward").type == pa.float32()
    assert data.schema.field("timestamp").type == pa.float32()
    image = data["observation.images.ultrasound"][0].as_py()
    assert image["path"] is None and Image.open(io.BytesIO(image["bytes"])).mode == "L"  # 8-bit grayscale PNG
    tasks = pq.read_table(folder / "meta/tasks.parquet")
    assert tasks.column_names == ["task_index", "task"]
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]
    episodes = pq.read_table(folder / "meta/episodes/chunk-000/file-000.parquet")
    assert episodes.column_names[:9] == [
        "episode_index",
        "tasks",
        "length",
        "data/chunk_index",
        "data/file_index",
        "dataset_from_index",
        "dataset_to_index",
        "meta/episodes/chunk_index",
        "meta/episodes/file_index",
    ]
    assert episodes["tasks"].to_pylist() == [["scan the liver"], ["scan the liver"], ["scan the kidney"]]
    assert episodes.schema.field("tasks").type == pa.list_(pa.string())
    assert sorted(episodes.column_names[9:]) == [
        f"sonolab/{k}" for k in ["goal", "patient", "score", "seed", "success"]
    ]


def test_stats_match_numpy(recorded) -> None:
    folder, episodes = recorded
    stats = read_dataset(folder).stats
    assert "observation.meta.probe_type" not in stats  # strings have no statistics
    for name in ["observation.state", "action", "next.reward", "next.done"]:
        values = np.concatenate([np.asarray(f[name], np.float64).reshape(len(f[name]), -1) for f in episodes])
        shape = tuple(FEATURES[name]["shape"])
        for key, expected in {
            "min": values.min(0),
            "max": values.max(0),
            "mean": values.mean(0),
            "std": values.std(0),
        }.items():
            assert stats[name][key].shape == shape
            np.testing.assert_allclose(stats[name][key], expected.reshape(shape), rtol=1e-9, atol=1e-12, err_msg=name)
        assert stats[name]["count"].tolist() == [15]
    pixels = np.concatenate([f["observation.images.ultrasound"] for f in episodes]) / 255.0
    image = stats["observation.images.ultrasound"]
    for key, expected in {"min": pixels.min(), "max": pixels.max(), "mean": pixels.mean(), "std": pixels.std()}.items():
        assert image[key].shape == (1, 1, 1)
        np.testing.assert_allclose(image[key], expected, rtol=1e-9)
    np.testing.assert_allclose(stats["frame_index"]["max"], [6])
    np.testing.assert_allclose(stats["index"]["mean"], [7.0])


def test_large_datasets_roll_over_to_new_data_files(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(lerobot, "DATA_FILE_SIZE_MB", 0.0004)  # 400 bytes: each episode in its own file
    writer = DatasetWriter(tmp_path / "big", FPS, FEATURES, "panda", {})
    episodes = [episode_frames(length, seed) for seed, length in enumerate(LENGTHS)]
    for frames in episodes:
        writer.add_episode(frames, "task")
    dataset = read_dataset(writer.close())
    assert sorted(p.name for p in (tmp_path / "big/data/chunk-000").iterdir()) == [
        f"file-00{i}.parquet" for i in range(3)
    ]
    np.testing.assert_array_equal(dataset.episodes["data/file_index"], [0, 1, 2])
    np.testing.assert_array_equal(dataset.frames["action"], np.concatenate([f["action"] for f in episodes]))


def test_the_dataset_appears_only_at_close(tmp_path: Path) -> None:
    (tmp_path / "demos").mkdir()  # an empty folder is fine
    writer = DatasetWriter(tmp_path / "demos", FPS, FEATURES, "panda", {})
    writer.add_episode(episode_frames(4, 0), "task")
    assert list((tmp_path / "demos").iterdir()) == []
    hidden = [p for p in tmp_path.iterdir() if p.name.startswith(".demos.")]
    assert len(hidden) == 1 and hidden[0].name.endswith(".partial")
    writer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demos"]
    with pytest.raises(InputError, match="demos: expected not to exist or to be empty, got a non-empty folder"):
        DatasetWriter(tmp_path / "demos", FPS, FEATURES, "panda", {})
    with pytest.raises(InputError, match="DatasetWriter.add_episode: expected a writer that is not closed"):
        writer.add_episode(episode_frames(4, 0), "task")


def test_bad_writer_settings(tmp_path: Path) -> None:
    def make(**changes) -> DatasetWriter:
        settings = {"folder": tmp_path / "x", "fps": FPS, "features": FEATURES, "robot_type": "panda", "sonolab": {}}
        return DatasetWriter(**(settings | changes))

    (tmp_path / "file").write_text("")
    cases = {
        "a file": ({"folder": tmp_path / "file"}, "expected a directory"),
        "fps 0": ({"fps": 0}, "fps: expected an int >= 1, got 0"),
        "no features": ({"features": {}}, "features: expected a non-empty dict"),
        "slash": ({"features": {"a/b": FEATURES["action"]}}, "feature name: expected a non-empty str without '/'"),
        "default": ({"features": {"index": FEATURES["action"]}}, r"features\['index'\]: expected a name other than"),
        "dtype": (
            {"features": {"x": {"dtype": "float64", "shape": [2]}}},
            r"features\['x'\]\['dtype'\]: expected one of",
        ),
        "shape": ({"features": {"x": {"dtype": "float32", "shape": [2, 2]}}}, r"\['shape'\]: expected \[n\]"),
        "channels": ({"features": {"x": {"dtype": "image", "shape": [4, 4, 2]}}}, "with C 1 or 3"),
        "string": ({"features": {"x": {"dtype": "string", "shape": [2]}}}, r"expected \[1\] for a string feature"),
        "names": ({"features": {"x": {"dtype": "float32", "shape": [2], "names": ["a"]}}}, "expected None or 2 strs"),
        "key": ({"features": {"x": {"dtype": "float32", "shape": [2], "unit": "m"}}}, r"also \['unit'\]"),
        "robot": ({"robot_type": None}, "robot_type: expected a str"),
        "sonolab": ({"sonolab": {"x": np.zeros(2)}}, "sonolab: expected a JSON-serialisable dict"),
    }
    for label, (changes, message) in cases.items():
        with pytest.raises(InputError, match=message):
            make(**changes)
            pytest.fail(label)
    with pytest.raises(InputError, match="DatasetWriter.close: expected at least one add_episode call"):
        make().close()


def _changed(name: str, value: object) -> dict:
    frames = episode_frames(4, 0)
    frames[name] = value
    return frames


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        (
            {k: v for k, v in episode_frames(4, 0).items() if k != "action"},
            r"frames: expected every feature.*missing \['action'\]",
        ),
        (
            episode_frames(4, 0) | {"extra": np.zeros(4)},
            r"frames: expected only the dataset's features.*also \['extra'\]",
        ),
        (_changed("action", np.zeros((4, 2), np.float32)), r"frames\['action'\]: expected \(T, 3\), got \(4, 2\)"),
        (
            _changed("action", np.zeros((4, 3), np.int64)),
            r"frames\['action'\]: expected a floating-point array \(stored as float32\), got int64",
        ),
        (_changed("action", np.full((4, 3), np.nan)), r"frames\['action'\]: expected finite values"),
        (_changed("action", np.full((4, 3), 1e300)), r"frames\['action'\]: expected finite values \(as float32\)"),
        (_changed("action", np.zeros((5, 3), np.float32)), r"frames\['action'\]: expected T = 4 frames like"),
        (_changed("next.done", np.zeros(4)), r"frames\['next.done'\]: expected a bool array, got float64"),
        (
            _changed("observation.images.ultrasound", np.zeros((4, 12, 10), np.float32)),
            r"frames\['observation.images.ultrasound'\]: expected a uint8 array, got float32",
        ),
        (
            _changed("observation.images.ultrasound", np.zeros((4, 10, 12), np.uint8)),
            r"expected \(T, 12, 10, 1\), got \(4, 10, 12\)",
        ),
        (_changed("observation.meta.probe_type", [1, 2, 3, 4]), r"probe_type'\]: expected a list of T str"),
        ({k: np.asarray(v)[:0] for k, v in episode_frames(4, 0).items()}, "expected T >= 1 frames, got 0"),
        ("not a dict", "frames: expected a dict"),
    ],
)
def test_bad_episodes(tmp_path: Path, frames: object, message: str) -> None:
    writer = DatasetWriter(tmp_path / "x", FPS, FEATURES, "panda", {})
    with pytest.raises(InputError, match=message):
        writer.add_episode(frames, "task")


def test_bad_task_split_and_meta(tmp_path: Path) -> None:
    writer = DatasetWriter(tmp_path / "x", FPS, FEATURES, "panda", {})
    frames = episode_frames(4, 0)
    with pytest.raises(InputError, match=r"frames\['action'\]"):
        writer.add_episode(_changed("action", np.zeros(4)), "task")  # a rejected first episode fixes no meta
    with pytest.raises(InputError, match="task: expected a non-empty str"):
        writer.add_episode(frames, "")
    with pytest.raises(InputError, match="split: expected a non-empty str"):
        writer.add_episode(frames, "task", split=None)
    for meta, message in [
        ({"x": float("nan")}, r"meta\['x'\]: expected a finite number"),
        ({"x": {"a": 1}}, r"meta\['x'\]: expected a str, int, float, bool or non-empty 1-D list"),
        ({"x": [[1.0]]}, r"meta\['x'\]: expected a str, int, float, bool or non-empty 1-D list"),
        ({"a/b": 1}, "meta keys: expected non-empty strs without '/'"),
    ]:
        with pytest.raises(InputError, match=message):
            writer.add_episode(frames, "task", meta=meta)
    writer.add_episode(frames, "task", meta={"seed": 1, "goal": [1.0, 2.0]})
    for meta in [{"seed": 1}, {"seed": 1.5, "goal": [1.0, 2.0]}, {"seed": 1, "goal": [1.0]}]:
        with pytest.raises(InputError, match="meta: expected the first episode's keys and types"):
            writer.add_episode(frames, "task", meta=meta)
    assert read_dataset(writer.close()).episodes["length"].tolist() == [4]  # the rejected episodes left no trace


def _rewrite(path: Path, change) -> None:
    """Replace the parquet table at `path` by `change(table)`."""
    pq.write_table(change(pq.read_table(path)), path)


def _set_info(folder: Path, **changes) -> None:
    info = json.loads((folder / "meta/info.json").read_text())
    (folder / "meta/info.json").write_text(json.dumps(info | changes))


DATA = "data/chunk-000/file-000.parquet"
EPISODES = "meta/episodes/chunk-000/file-000.parquet"


def test_bad_dataset_folders(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"dataset folder: expected an existing directory, got .*nope \(missing\)"):
        read_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty: expected a LeRobot v3.0 dataset .*got an empty folder"):
        read_dataset(tmp_path / "empty")
    (tmp_path / "partial/meta").mkdir(parents=True)
    (tmp_path / "partial/meta/stats.json").write_text("{}")
    with pytest.raises(InputError, match=r"partial: expected a meta/info.json"):
        read_dataset(tmp_path / "partial")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / DATA).unlink(), r"expected every data file the episodes name, got missing \['data/chunk-000/"),
        (lambda f: (f / "meta/tasks.parquet").unlink(), r"expected a parquet file .*tasks.parquet, got none"),
        (lambda f: (f / EPISODES).unlink(), r"expected episode files meta/episodes/chunk-\*/file-\*.parquet, got none"),
        (lambda f: (f / "meta/info.json").write_text("{"), r"info.json: expected JSON"),
        (lambda f: _set_info(f, codebase_version="v2.1"), r"codebase_version: expected 'v3.0', got 'v2.1'"),
        (lambda f: _set_info(f, total_frames=16), r"total_frames: expected the 15 frames the episodes cover, got 16"),
        (lambda f: _set_info(f, total_episodes=4), r"total_episodes: expected the 3 episodes of meta/episodes, got 4"),
        (lambda f: _set_info(f, total_tasks=3), r"total_tasks: expected the 2 tasks"),
        (lambda f: _set_info(f, splits={"train": "0:9"}), r"splits\['train'\]: expected 'start:end' with"),
        (
            lambda f: (f / DATA).write_bytes((f / DATA).read_bytes()[:-100]),
            r"data file .*file-000.parquet: expected a readable parquet file, got .*\(truncated or corrupted\?\)",
        ),
        (lambda f: (f / DATA).write_bytes(b"PAR1 not really"), r"\(truncated or corrupted\?\)"),
        (
            lambda f: _rewrite(f / DATA, lambda t: t.append_column("junk", pa.array(np.zeros(len(t))))),
            r"columns: expected exactly the features of meta/info.json, got missing \[\], extra \['junk'\]",
        ),
        (
            lambda f: _rewrite(f / DATA, lambda t: t.drop_columns(["action"])),
            r"columns: expected exactly the features .*got missing \['action'\], extra \[\]",
        ),
        (
            lambda f: _rewrite(
                f / DATA, lambda t: t.set_column(t.column_names.index("index"), "index", pa.array(np.arange(1, 16)))
            ),
            r"data column index: expected 0..14 in order",
        ),
        (
            lambda f: _rewrite(f / DATA, lambda t: t.slice(0, 14)),
            r"data: expected the 15 frames of meta/info.json, got 14 rows",
        ),
        (
            lambda f: _rewrite(
                f / EPISODES,
                lambda t: t.set_column(
                    t.column_names.index("dataset_from_index"), "dataset_from_index", pa.array([0, 4, 12])
                ),
            ),
            r"dataset_from_index/dataset_to_index: expected episode ranges tiling 0..total_frames",
        ),
        (
            lambda f: _rewrite(f / EPISODES, lambda t: t.drop_columns(["length"])),
            r"expected the columns .*got missing \['length'\]",
        ),
        (
            lambda f: _rewrite(f / DATA, lambda t: _with_broken_image(t, 3)),
            r"feature 'observation.images.ultrasound' frame 3: expected decodable image bytes \(PNG\)",
        ),
    ],
)
def test_bad_datasets(recorded, damage, message: str) -> None:
    folder, _ = recorded
    damage(folder)
    with pytest.raises(InputError, match=message):
        read_dataset(folder)


def _with_broken_image(table: pa.Table, row: int) -> pa.Table:
    """`table` with the ultrasound PNG of `row` cut short."""
    name = "observation.images.ultrasound"
    images = table[name].to_pylist()
    images[row] = {"bytes": images[row]["bytes"][:20], "path": None}
    return table.set_column(table.column_names.index(name), name, pa.array(images, table.schema.field(name).type))
