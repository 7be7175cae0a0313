"""Demonstrations as training samples for a diffusion policy: observation and action windows.

A sample at frame f of an episode holds the observations of frames f - To + 1 .. f (To =
obs_horizon) and the actions of frames f - To + 1 .. f - To + H (H = horizon), as in Chi et al.
(2023): the predicted horizon starts at the first observed step, and the actions executed from
frame f are those from index To - 1 on. Windows that reach past an episode's start repeat its
first frame, those past its end its last action (the policy learns to hold still at the end).
All windows are index tensors built once, so a batch is a handful of gathers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from policies.demos.frames import STATE, FrameLayout
from policies.demos.lerobot import Dataset
from sim.errors import InputError

ACTION = "action"


@dataclass
class Demonstrations:
    """Every frame of a dataset as tensors (CPU), with each frame's sample windows.

    state (T, D) float32; images (T, C, S, S) uint8 or None; actions (T, A) float32; obs_index
    (T, To) and action_index (T, H) int64: the frames each sample reads."""

    state: torch.Tensor
    images: torch.Tensor | None
    actions: torch.Tensor
    obs_index: torch.Tensor
    action_index: torch.Tensor

    def __len__(self) -> int:
        return len(self.state)

    def batch(self, frames: torch.Tensor, device: str) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(state (B, To, D), images (B, To, C, S, S) float in [0, 1] or None, actions (B, H, A)) of
        the samples at `frames` (B,), on `device`."""
        obs, act = self.obs_index[frames], self.action_index[frames]
        state = self.state[obs].to(device)
        images = None if self.images is None else self.images[obs].to(device).float() / 255.0
        return state, images, self.actions[act].to(device)


def windows(starts: np.ndarray, ends: np.ndarray, offsets: np.ndarray) -> torch.Tensor:
    """(T, K) frame indices: for every frame f of the episodes [starts[e], ends[e]) (in order,
    tiling 0..T-1), f + offsets clamped to its own episode."""
    lengths = ends - starts
    frame = np.arange(int(lengths.sum()))
    first = np.repeat(starts, lengths)
    last = np.repeat(ends - 1, lengths)
    index = np.clip(frame[:, None] + offsets[None, :], first[:, None], last[:, None])
    return torch.from_numpy(index.astype(np.int64))


def demonstrations(dataset: Dataset, layout: FrameLayout, obs_horizon: int, horizon: int) -> Demonstrations:
    """The training samples of `dataset`'s "train" split (failed episodes are not imitated) read
    through `layout`; InputError if the split is empty."""
    episodes = dataset.episodes
    keep = np.asarray(episodes["split"]) == "train"
    if not keep.any():
        raise InputError(f"dataset {dataset.folder}: expected episodes in its train split, found none")
    starts = np.asarray(episodes["dataset_from_index"])[keep]
    ends = np.asarray(episodes["dataset_to_index"])[keep]
    rows = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends)])  # per kept episode: a slice
    lengths = ends - starts
    new_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    new_ends = new_starts + lengths
    frames = dataset.frames
    state = torch.from_numpy(np.asarray(frames[STATE], np.float32)[rows])
    actions = torch.from_numpy(np.asarray(frames[ACTION], np.float32)[rows])
    images = None
    if layout.images:
        images = torch.from_numpy(np.stack([np.asarray(frames[name])[rows] for name in layout.image_names], 1))
    return Demonstrations(
        state,
        images,
        actions,
        windows(new_starts, new_ends, np.arange(-obs_horizon + 1, 1)),
        windows(new_starts, new_ends, np.arange(-obs_horizon + 1, horizon - obs_horizon + 1)),
    )
