"""One control step of an environment as a dataset frame, in the Open-H-Embodiment names.

The policy's observations map to three kinds of features:

- `observation.state` (D,) float32: the vector group the policy reads (e.g. "policy"), with its
  segment names from the task's declared spaces;
- `observation.images.ultrasound` (S, S) uint8: the newest ultrasound frame, the first channel of
  the image group's first segment (a frame history, newest first). Older frames are not stored:
  they are earlier rows of the same episode, and a policy that wants them stacks them itself;
- `observation.images.<name>` (S, S) uint8 for each further single-channel segment of the image
  group, e.g. `observation.images.goal` for us_nav's `goal_image`.

`FrameLayout.observe` is the one mapping from live observations to these features: the recorder
writes what it returns and the diffusion policy reads it both from datasets and in closed loop, so
the two see the same inputs (images are quantised to 8 bits in both).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict

from sim.envs.base import BatchedEnv
from sim.errors import require

STATE = "observation.state"
ULTRASOUND = "observation.images.ultrasound"
IMAGE_PREFIX = "observation.images."


@dataclass(frozen=True)
class FrameLayout:
    """Which observation groups and channels make a frame.

    state_group: the vector group of `observation.state`; state_names: its element names (D,);
    image_group: the image group (C, S, S) or None; images: (feature name, channel index) per
    stored image, the ultrasound frame first; image_size: S, pixels."""

    state_group: str
    state_names: tuple[str, ...]
    image_group: str | None
    images: tuple[tuple[str, int], ...]
    image_size: int

    @property
    def image_names(self) -> list[str]:
        return [name for name, _ in self.images]

    def features(self) -> dict[str, dict]:
        """The LeRobot feature specs of the state and images."""
        out = {STATE: {"dtype": "float32", "shape": [len(self.state_names)], "names": list(self.state_names)}}
        for name, _ in self.images:
            out[name] = {"dtype": "image", "shape": [self.image_size, self.image_size, 1], "names": IMAGE_NAMES}
        return out

    def observe(self, obs: TensorDict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(state (N, D) float32, images (N, C, S, S) uint8 or None, C = len(images)) of observations."""
        state = obs[self.state_group].float()
        if self.image_group is None:
            return state, None
        channels = [index for _, index in self.images]
        images = obs[self.image_group][:, channels]
        return state, (images.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)

    def describe(self) -> dict:
        """The layout as plain data (stored in a dataset's info.json, compared when training starts)."""
        return {
            "state_group": self.state_group,
            "state_names": list(self.state_names),
            "image_group": self.image_group,
            "images": [[name, index] for name, index in self.images],
            "image_size": self.image_size,
        }


IMAGE_NAMES = ["height", "width", "channels"]


def frame_layout(env: BatchedEnv, state_group: str, image_group: str | None) -> FrameLayout:
    """The frame layout of `env`'s declared spaces for the vector group `state_group` and the image
    group `image_group` (None: a policy without images); InputError naming a group the task does
    not have, or of the wrong kind."""
    spaces = env.observation_spaces
    require(state_group in spaces, "agent.obs_groups.state", f"one of {sorted(spaces)}", repr(state_group))
    state = spaces[state_group]
    require(len(state.shape) == 1, "agent.obs_groups.state", "a vector group", f"{state_group} {state.shape}")
    if image_group is None:
        return FrameLayout(state_group, state.names, None, (), 0)
    require(image_group in spaces, "agent.obs_groups.images", f"one of {sorted(spaces)} or null", repr(image_group))
    space = spaces[image_group]
    require(
        len(space.shape) == 3 and space.shape[1] == space.shape[2],
        "agent.obs_groups.images",
        "an image group (C, S, S): one square plane per frame (with biplane imaging, task.observation.planes=1)",
        f"{image_group} {space.shape}",
    )
    images, offset = [], 0
    for i, segment in enumerate(space.segments):
        if i == 0:
            images.append((ULTRASOUND, 0))  # the frame history's newest frame
        else:
            require(
                segment.size == 1,
                f"{image_group} segment {segment.name}",
                "one channel (only the first segment may be a frame history)",
                segment.size,
            )
            images.append((IMAGE_PREFIX + segment.name.removesuffix("_image"), offset))
        offset += segment.size
    return FrameLayout(state_group, state.names, image_group, tuple(images), int(space.shape[1]))
