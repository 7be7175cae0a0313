"""Play videos: environment 0 in the viewer's scene (`PlayScene`), rendered off screen to mp4.

Each frame (`FRAME_SIZE`) is the 3-D view (body, bones, arm and probe, the ultrasound image in its
plane, the goal plane, the probe's path) with the live ultrasound image beside it, written as
H.264 with imageio-ffmpeg while the episode plays, so long videos do not pile up in memory.
"""

from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio

from sim.envs.base import BatchedEnv
from sim.errors import require
from sim.ultrasound.probe import ProbeSpec
from sim.viz.play_scene import FRAME_SIZE, PlayScene


class PlayVideo:
    """Writes one frame per `__call__(env)` (use as `evaluate`'s on_step) to `path` at `fps`.

    A context manager: leaving the block (or `close()`) finishes the file. env: as `PlayScene`
    needs; probe: the full-size probe whose images are shown; size: (width, height) pixels, even.
    """

    def __init__(
        self, env: BatchedEnv, probe: ProbeSpec, path: str | Path, fps: float, size: tuple[int, int] = FRAME_SIZE
    ) -> None:
        require(size[0] % 2 == 0 and size[1] % 2 == 0, "video size", "an even width and height (H.264)", size)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.scene = PlayScene(env, probe, off_screen=True, size=size)
        self.writer = imageio.get_writer(self.path, fps=fps, codec="libx264", macro_block_size=1)

    def __call__(self, env: BatchedEnv) -> None:
        self.scene.draw(env, 0)
        self.writer.append_data(self.scene.screenshot())

    def close(self) -> Path:
        """Finish the file; returns its path."""
        self.writer.close()
        self.scene.close()
        return self.path

    def __enter__(self) -> PlayVideo:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()
