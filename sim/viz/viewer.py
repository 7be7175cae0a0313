"""Interactive replay: a policy drives the environments in a pyvista window (`PlayScene`).

Every control period (env.dt s) a timer runs one step of every environment,
observations -> policy -> env.step, as `policies.evaluation.evaluate` does, and redraws the
environment on show. Keys (`KEYS`):

    space          pause / resume
    n, Right       one control step while paused
    r              reset: new episodes in every environment
    ], Tab / [     show the next / previous environment
    q              close the window (pyvista)

VTK's own one-letter keys (r: rubber-band selection, w: wireframe, ...) are switched off so they
do not fight these. Everything but `show` works on an off-screen plotter, which is how it is tested.
"""

from __future__ import annotations

import os
import sys
from functools import partial
from typing import Callable

import torch
from tensordict import TensorDict

from sim.envs.base import BatchedEnv
from sim.errors import InputError
from sim.ultrasound.probe import ProbeSpec
from sim.viz.play_scene import FRAME_SIZE, PlayScene

# VTK key symbol -> PlayViewer method
KEYS = {
    "space": "toggle_pause",
    "n": "step_once",
    "Right": "step_once",
    "r": "reset",
    "bracketright": "next_env",
    "Tab": "next_env",
    "bracketleft": "previous_env",
}
HELP = "space pause   n / Right step   r reset   [ ] / Tab environment   q quit"


class PlayViewer:
    """A window showing one environment of `env` while `policy` (observations -> actions) drives all.

    env: as `PlayScene` needs; probe: the full-size probe whose images are shown. off_screen:
    no window (tests); otherwise Linux needs a display (InputError without one). size: (width,
    height) pixels. `env_id` is the environment shown, `paused` whether the timer steps, `steps`
    the control steps run so far.
    """

    def __init__(
        self,
        env: BatchedEnv,
        policy: Callable[[TensorDict], torch.Tensor],
        probe: ProbeSpec,
        off_screen: bool = False,
        size: tuple[int, int] = FRAME_SIZE,
    ) -> None:
        if (
            not off_screen
            and sys.platform.startswith("linux")
            and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
        ):
            raise InputError(
                "viewer: expected a display (DISPLAY and WAYLAND_DISPLAY are unset); render a video off screen instead"
            )
        self.env, self.policy = env, policy
        self.scene = PlayScene(env, probe, off_screen, size)
        plotter = self.scene.plotter
        plotter.subplot(0, 0)
        plotter.add_text(HELP, position="lower_left", font_size=8, color="dimgray")
        plotter.iren.style.AddObserver("CharEvent", lambda *_: None)  # an observer replaces VTK's OnChar
        for key, method in KEYS.items():
            plotter.add_key_event(key, partial(self._on_key, method))
        self.paused, self.env_id, self.steps = False, 0, 0
        self.obs = env.reset()
        self.draw()

    def _on_key(self, method: str) -> None:
        getattr(self, method)()
        self.scene.plotter.render()  # pyvista's timer renders after each tick, key events do not

    def draw(self) -> None:
        """Update the scene to the shown environment (the window shows it at its next render)."""
        self.scene.draw(self.env, self.env_id, "   [paused]" if self.paused else "")

    def step(self) -> None:
        """One control step of every environment under the policy, then redraw."""
        with torch.inference_mode():
            self.obs = self.env.step(self.policy(self.obs))[0]
        self.steps += 1
        self.draw()

    def tick(self, _count: int = 0) -> None:
        """The timer's callback: a step unless paused."""
        if not self.paused:
            self.step()

    def toggle_pause(self) -> None:
        self.paused = not self.paused
        self.draw()

    def step_once(self) -> None:
        if self.paused:
            self.step()

    def reset(self) -> None:
        self.obs = self.env.reset()
        self.draw()

    def next_env(self) -> None:
        self.env_id = (self.env_id + 1) % self.env.num_envs
        self.draw()

    def previous_env(self) -> None:
        self.env_id = (self.env_id - 1) % self.env.num_envs
        self.draw()

    def show(self) -> int:
        """Open the window and play at the control rate until it is closed; returns the steps run."""
        period_ms = max(1, round(1000 * self.env.dt))
        self.scene.plotter.add_timer_event(max_steps=sys.maxsize, duration=period_ms, callback=self.tick)
        self.scene.plotter.show(title="sonolab play")
        return self.steps
