"""The scene of one playing environment: a 3-D view with the live ultrasound image beside it.

One `pv.Plotter` with two viewports. Left, in the patient frame (metres): the translucent body,
the bones, every arm with its tool (posed from the environment's joint angles), the ultrasound
image as a textured plane at the first tool (with the snapshot's `imaged_tools`, e.g. a drill,
in it), the task's own layer (its registered `drawing`, e.g. us_nav's goal plane), the probe's
path in this episode (red) and a status line. Right: the same image flat. Images come from a
full-size probe (`probe`), not the policy's small one. Everything drawn comes from the
environment's `snapshot` (`sim.envs.snapshot.EnvSnapshot`). The interactive viewer
(`sim.viz.viewer`) and play videos (`sim.viz.play_video`) both draw through `PlayScene`.
"""

from __future__ import annotations

import numpy as np
import pyvista as pv
import torch

from sim.anatomy.bank import PatientBank
from sim.envs.base import BatchedEnv
from sim.ultrasound.probe import ProbeSpec
from sim.ultrasound.renderer import Renderer
from sim.viz.arm import ArmDrawing
from sim.viz.scene import add_patient, image_plane, image_texture, pose_matrix
from tasks import registry

FRAME_SIZE = (1280, 720)  # (width, height) pixels of the window and of video frames (even, for H.264)
COLUMN_WEIGHTS = (3, 1)  # 3-D view : ultrasound panel widths
IDENTITY_POSE = np.array([0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
PATH_COLOUR, TEXT_COLOUR = "red", "black"
# Camera: looking at a point above the back, a little toward the arm (offset from the primary
# robot's base, metres, which stands 0.55 m along +x from the anchor vertebra by default: the
# focus is 6 cm from the anchor; the prone patient's back faces -y), from 1 m away on the
# patient's left, above the back and toward the head, so transverse and parasagittal image
# planes both show.
CAMERA_FOCUS_M = np.array([-0.49, -0.16, 0.0])
CAMERA_OFFSET_M = 1.0 * np.array([-0.6, -0.55, 0.58]) / np.linalg.norm([-0.6, -0.55, 0.58])


class PlayScene:
    """Draws environment `i` of a task environment as it is now (`draw(env, i)`).

    env: a `BatchedEnv` with patients (with meshes), dt, cfg.name (its task's registered
    drawing) and scene.arms (the URDF drawn for each of its robots); the state drawn is its
    `snapshot`. probe: the probe preset whose full-size image is shown. off_screen:
    render without a window (videos, tests). size: (width, height) pixels.
    """

    def __init__(
        self, env: BatchedEnv, probe: ProbeSpec, off_screen: bool = False, size: tuple[int, int] = FRAME_SIZE
    ) -> None:
        self.probe = probe
        self.patients = env.patients
        self.renderer = Renderer(PatientBank(env.patients, env.device), probe)
        self.plotter = pv.Plotter(shape=(1, 2), col_weights=COLUMN_WEIGHTS, window_size=size, off_screen=off_screen)
        if off_screen:  # no multisampling: a quarter less time per frame in software OpenGL, no visible loss in H.264
            self.plotter.render_window.SetMultiSamples(0)
        self.plotter.subplot(0, 1)
        self.plotter.set_background("black", all_renderers=False)
        texture = image_texture(probe, np.zeros((probe.image_height, probe.image_width)))
        self.panel = self.plotter.add_mesh(self._panel_quad(), texture=texture, lighting=False)
        self.plotter.add_text("ultrasound", position="upper_left", font_size=10, color="white")
        self._frame_panel()
        self.plotter.subplot(0, 0)
        self.plotter.set_background("white", all_renderers=False)
        self.arms = {name: ArmDrawing(self.plotter, arm) for name, arm in env.scene.arms.items()}
        self.image = self.plotter.add_mesh(image_plane(probe, IDENTITY_POSE), texture=texture, lighting=False)
        task = registry.spec(env.cfg.name)
        self.task_layer = registry.load(task.drawing, f"task {task.name!r} drawing")(self.plotter, probe)
        self.path_actor = self.plotter.add_mesh(
            pv.PolyData(np.zeros((1, 3))), color=PATH_COLOUR, line_width=3, lighting=False
        )
        self.status = self.plotter.add_text("", position="upper_left", font_size=10, color=TEXT_COLOUR)
        self.patient_actors: dict[int, list[pv.Actor]] = {}
        self.patient = self.env_id = None
        self.path: list[np.ndarray] = []

    def _panel_quad(self) -> pv.PolyData:
        """The image flat in the panel, one unit per pixel, row 0 at the top."""
        h, w = self.probe.image_height, self.probe.image_width
        quad = pv.PolyData(np.array([[0, 0, 0], [w, 0, 0], [w, h, 0], [0, h, 0]], float), faces=[4, 0, 1, 2, 3])
        quad.active_texture_coordinates = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float32)
        return quad

    def _frame_panel(self) -> None:
        """Parallel projection fitting the whole image in the panel's viewport."""
        h, w = self.probe.image_height, self.probe.image_width
        camera = self.plotter.renderer.camera
        camera.parallel_projection = True
        camera.focal_point, camera.position, camera.up = (w / 2, h / 2, 0), (w / 2, h / 2, 1000), (0, 1, 0)
        x0, y0, x1, y1 = self.plotter.renderer.GetViewport()
        width, height = self.plotter.window_size
        aspect = (x1 - x0) * width / ((y1 - y0) * height)
        camera.parallel_scale = 1.05 * max(h / 2, w / 2 / aspect)

    def _show_patient(self, p: int, base: np.ndarray) -> None:
        """Show patient p's body and bones (added on first use), hide the others', frame the
        camera from the primary robot's base position `base` (3,), patient frame."""
        if p == self.patient:
            return
        if p not in self.patient_actors:
            self.patient_actors[p] = add_patient(self.plotter, self.patients[p])
        for q, actors in self.patient_actors.items():
            for actor in actors:
                actor.visibility = q == p
        camera = self.plotter.renderer.camera
        focus = base + CAMERA_FOCUS_M
        camera.focal_point, camera.position, camera.up = focus, focus + CAMERA_OFFSET_M, (0.0, -1.0, 0.0)
        self.plotter.renderer.reset_camera_clipping_range()
        self.patient = p

    def draw(self, env: BatchedEnv, i: int, note: str = "") -> None:
        """Update every actor to environment i's current state; `note` ends the status line."""
        snap = env.snapshot(torch.tensor([i], device=env.device))
        p, robot = int(snap.patient[0]), snap.robot
        base = snap.base_poses[robot][0].detach().cpu().double()
        self.plotter.subplot(0, 0)
        self._show_patient(p, base[:3].numpy())
        for name, drawing in self.arms.items():
            drawing.pose(snap.joint_positions[name][0], pose_matrix(snap.base_poses[name][0].detach().cpu().double()))
        pose = snap.tool_poses[snap.tool][0].detach().cpu().double()
        self.image.user_matrix = pose_matrix(pose)
        task_text = self.task_layer(snap, 0)
        # The task's metal tools (e.g. a drill; None for us_nav) show here as in the policy's image.
        with torch.inference_mode():
            at = pose[None].float().to(env.device)
            ultrasound = self.renderer.render(at, snap.patient, tools=snap.imaged_tools)[0]
        texture = image_texture(self.probe, ultrasound.cpu().numpy())
        self.image.texture = self.panel.texture = texture
        step = int(snap.step[0])
        if i != self.env_id or step == 0:
            self.path = []
        self.env_id = i
        self.path.append(pose[:3].numpy())
        points = np.array(self.path)
        self.path_actor.mapper.SetInputData(pv.PolyData(points, lines=[len(points), *range(len(points))]))
        status = f"env {i + 1}/{env.num_envs}  {self.patients[p].name}  t {step * env.dt:4.1f} s  {task_text}{note}"
        self.status.set_text("upper_left", status)

    def screenshot(self) -> np.ndarray:
        """The current frame (height, width, 3) uint8."""
        self.plotter.render()  # pyvista renders by itself only for the first screenshot
        return self.plotter.screenshot(return_img=True)

    def close(self) -> None:
        self.plotter.close()
