"""Play videos: environment 0's ultrasound stream beside its probe path over the patient's back.

Frames are drawn with OpenCV (no display needed) and written as H.264 mp4 with imageio-ffmpeg.
Left: the B-mode image at the probe pose the arm reached (full-size probe preset). Right: the
back seen from above (shaded skin height map, patient's head up, patient's right to the right),
the probe's path in this episode (red), the probe footprint (red bar along the image's lateral
axis) and the goal footprint (green).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import imageio.v2 as imageio
import numpy as np
import torch

from sim.anatomy.bank import PatientBank
from sim.transforms import quat_to_matrix
from sim.ultrasound.probe import ProbeSpec
from sim.ultrasound.renderer import Renderer

PANEL_PX = 400
MARGIN_M = 0.02
RED, GREEN, WHITE = (230, 40, 40), (40, 210, 60), (255, 255, 255)


class PlayVideo:
    """Collects one frame per `__call__(env)` (use as `evaluate`'s on_step), then `write(path)`.

    env: a us_nav-like environment (patients, patient_idx, poses, goal_pose, box_low / box_high,
    episode_length_buf, goal_names, goal_idx, pos_err, ang_err, cfg.control_hz).
    """

    def __init__(self, env, probe: ProbeSpec) -> None:
        self.renderer = Renderer(PatientBank(env.patients, env.device), probe)
        self.aperture_m = probe.width_m if probe.kind == "linear" else 2 * probe.radius_m
        self.frames: list[np.ndarray] = []
        self.path: list[tuple[float, float]] = []
        self.maps: dict[int, tuple[np.ndarray, callable]] = {}

    def _back_map(self, env, p: int):
        """(shaded map RGB (H, W, 3) uint8, metres (x, z) -> pixel (col, row)) for patient p."""
        if p not in self.maps:
            skin = env.patients[p].skin
            lo = env.box_low[p].cpu().numpy() - MARGIN_M
            hi = env.box_high[p].cpu().numpy() + MARGIN_M
            scale = PANEL_PX / (hi[1] - lo[1])  # px per metre, the head-foot extent fills the height
            width = int(round((hi[0] - lo[0]) * scale))
            cols, rows = np.meshgrid(np.arange(width), np.arange(PANEL_PX))
            x = lo[0] + (cols + 0.5) / scale
            z = hi[1] - (rows + 0.5) / scale
            a = np.clip(np.round((x - skin.x0) / skin.dx).astype(int), 0, skin.y.shape[0] - 1)
            b = np.clip(np.round((z - skin.z0) / skin.dz).astype(int), 0, skin.y.shape[1] - 1)
            normal = skin.normal[a, b]  # (H, W, 3)
            light = np.array([0.4, -0.8, 0.45]) / np.linalg.norm([0.4, -0.8, 0.45])
            shade = np.nan_to_num(np.clip(normal @ light, 0, 1), nan=0.0)
            grey = (40 + 200 * shade).astype(np.uint8)
            image = np.repeat(grey[..., None], 3, -1)

            def to_px(xz: np.ndarray) -> tuple[int, int]:
                return int(round((xz[0] - lo[0]) * scale)), int(round((hi[1] - xz[1]) * scale))

            self.maps[p] = (image, to_px)
        return self.maps[p]

    def _footprint(self, image, to_px, pose: np.ndarray, colour) -> None:
        lateral = quat_to_matrix(torch.from_numpy(pose[3:]))[:, 0].numpy()
        half = 0.5 * self.aperture_m * lateral
        cv2.line(image, to_px(pose[[0, 2]] - half[[0, 2]]), to_px(pose[[0, 2]] + half[[0, 2]]), colour, 3, cv2.LINE_AA)

    def __call__(self, env) -> None:
        p = int(env.patient_idx[0])
        pose = env.poses[0].detach().cpu().numpy()
        if int(env.episode_length_buf[0]) == 0:  # a new episode started in this step
            self.path = []
        self.path.append((float(pose[0]), float(pose[2])))
        ultrasound = self.renderer.render(env.poses[:1].float(), env.patient_idx[:1])[0].cpu().numpy()
        us = cv2.resize((ultrasound * 255).astype(np.uint8), (round(PANEL_PX * ultrasound.shape[1] / ultrasound.shape[0]), PANEL_PX))
        us = np.repeat(us[..., None], 3, -1)
        base, to_px = self._back_map(env, p)
        back = base.copy()
        if len(self.path) > 1:
            cv2.polylines(back, [np.array([to_px(np.array(xz)) for xz in self.path], np.int32)], False, RED, 2, cv2.LINE_AA)
        self._footprint(back, to_px, env.goal_pose[0].detach().cpu().numpy(), GREEN)
        self._footprint(back, to_px, pose, RED)
        frame = np.concatenate([us, np.full((PANEL_PX, 8, 3), 255, np.uint8), back], 1)
        text = (
            f"{env.goal_names[int(env.goal_idx[0])]}  t={int(env.episode_length_buf[0]) / env.cfg.control_hz:4.1f}s  "
            f"{float(env.pos_err[0]) * 1000:5.1f} mm {float(torch.rad2deg(env.ang_err[0])):5.1f} deg"
        )
        cv2.putText(frame, text, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, WHITE, 1, cv2.LINE_AA)
        self.frames.append(frame)

    def write(self, path: str | Path, fps: float) -> Path:
        """Write the frames as mp4 (even frame sizes for H.264); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        h, w = self.frames[0].shape[:2]
        frames = [f[: h - h % 2, : w - w % 2] for f in self.frames]
        imageio.mimwrite(path, frames, fps=fps, codec="libx264", macro_block_size=1)
        return path
