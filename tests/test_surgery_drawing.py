"""us_surgery's layer of the play scene (`tasks.us_surgery.drawing`) and the drill in the scene's
ultrasound image, off screen on a small us_surgery environment.

A broken OpenGL backend crashes VTK with a signal instead of raising, so a subprocess first
probes off-screen rendering (as tests/test_viewer.py does) and the module skips where it dies.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from sim.anatomy.patient_set import load_patients
from sim.surgery.breach import GRADES
from sim.ultrasound.probe import ProbeSpec
from sim.viz.scene import pose_matrix
from tasks import make_env
from tests.tasks_helpers import small_patient_set
from tests.test_viewer import PROBE_GL, run_python, skip_if_signalled

TASK = {"name": "us_surgery", "renderer": {"compile": False}, "observation": {"image_size": 16}, "episode_steps": 20}
SIZE = (320, 180)
TOL_M = 1e-5  # float32 poses drawn through float64 matrices


@pytest.fixture(scope="module")
def scene():
    """A PlayScene of a fresh 2-environment us_surgery env (at reset), closed after the module."""
    skip_if_signalled(run_python("-c", PROBE_GL), "an off-screen pyvista render")
    from sim.viz.play_scene import PlayScene

    env = make_env(TASK, load_patients(small_patient_set(), "train", progress=False), 2)
    view = PlayScene(env, ProbeSpec.preset("linear"), off_screen=True, size=SIZE)
    yield env, view
    view.close()


def snap0(env):
    return env.snapshot(torch.tensor([0], device=env.device))


def drawn(actor, point: tuple[float, float, float]) -> np.ndarray:
    """Where a point of the unit cylinder (radius 1, z from 0 to 1) is drawn, patient frame (3,)."""
    return (np.array(actor.user_matrix) @ [*point, 1.0])[:3]


def axis(pose: torch.Tensor) -> np.ndarray:
    return pose_matrix(pose)[:3, 2]


def test_plan_and_drill_sit_where_the_snapshot_has_them(scene):
    env, view = scene
    env.reset()
    view.draw(env, 0)
    snap, layer = snap0(env), view.task_layer
    entry, target = (snap.extras[k][0].double().numpy() for k in ("plan_entry", "plan_target"))
    bounds = np.array(layer.plan.bounds).reshape(3, 2)
    for point in (entry, target):
        assert np.all((bounds[:, 0] - TOL_M <= point) & (point <= bounds[:, 1] + TOL_M)), (point, bounds)
    np.testing.assert_allclose(drawn(layer.plan, (0, 0, 0)), entry, atol=TOL_M)
    np.testing.assert_allclose(drawn(layer.plan, (0, 0, 1)), target, atol=TOL_M)
    across = drawn(layer.plan, (1, 0, 0)) - entry  # a point on the rim: the screw's radius across the axis
    assert np.linalg.norm(across) == pytest.approx(float(snap.extras["plan_radius_m"][0]), rel=1e-5)
    # The drill ends at the drill tool pose (the tip) and runs 0.15 m back along its -z.
    tip = snap.tool_poses["drill"][0]
    np.testing.assert_allclose(drawn(layer.drill, (0, 0, 1)), tip[:3].double().numpy(), atol=TOL_M)
    shaft = drawn(layer.drill, (0, 0, 1)) - drawn(layer.drill, (0, 0, 0))
    np.testing.assert_allclose(shaft, 0.15 * axis(tip), atol=TOL_M)
    radius = np.linalg.norm(drawn(layer.drill, (1, 0, 1)) - drawn(layer.drill, (0, 0, 1)))
    assert radius == pytest.approx(env.cfg.drill.radius_m, rel=1e-5)
    assert layer.plan.visibility and layer.drill.visibility
    assert not layer.channel.visibility, "a channel drawn before the drill cut any"


def test_the_layer_shows_in_the_frame(scene):
    env, view = scene
    env.reset()
    view.draw(env, 0)
    layer = view.task_layer
    frame = view.screenshot()
    assert len(np.unique(frame.reshape(-1, 3), axis=0)) > 50, "too few colours for a shaded scene"
    for actor in (layer.plan, layer.drill):
        actor.visibility = False
    without = view.screenshot()
    view.draw(env, 0)
    assert np.abs(frame.astype(int) - without.astype(int)).max() > 30, "the plan and drill do not show"


def drill_in(env, view) -> None:
    """Step both environments with the task's expert until environment 0 has cut a channel."""
    from tasks import registry

    policy = registry.spec("us_surgery").expert(env)
    obs = env.reset()
    for _ in range(env.max_episode_length - 1):
        obs, *_ = env.step(policy(obs))
        if float(env.snapshot(torch.tensor([0])).extras["channel_depth_m"][0]) > 0:
            break
    view.draw(env, 0)


def test_channel_runs_along_the_drill_in_its_grade_colour(scene):
    from tasks.us_surgery.drawing import GRADE_RGB

    env, view = scene
    drill_in(env, view)
    snap, layer = snap0(env), view.task_layer
    depth = float(snap.extras["channel_depth_m"][0])
    assert depth > 0 and bool(snap.extras["in_bone"][0]), "the expert did not reach bone in the episode"
    assert layer.channel.visibility
    entry = snap.extras["channel_entry"][0].double().numpy()
    np.testing.assert_allclose(drawn(layer.channel, (0, 0, 0)), entry, atol=TOL_M)
    end = entry + depth * axis(snap.extras["drill_command"][0])
    np.testing.assert_allclose(drawn(layer.channel, (0, 0, 1)), end, atol=TOL_M)
    letter = GRADES[int(snap.extras["grade"][0])]
    assert layer.channel.prop.color == GRADE_RGB[letter]
    status = view.status.GetText(2)  # 2: upper left
    assert snap.extras["goal_name"][0] in status and f"grade {letter}" in status and "in bone" in status
    # Every grade its own colour: the same state with each grade in turn.
    for g, letter in enumerate(GRADES):
        graded = replace(snap, extras={**snap.extras, "grade": torch.tensor([g])})
        assert f"grade {letter}" in layer(graded, 0)
        assert layer.channel.prop.color == GRADE_RGB[letter]
    assert len({GRADE_RGB[g] for g in GRADES}) == len(GRADES)


def images(view, snap) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The scene's ultrasound image (H, W) uint8 as shown, and its renderer's images (H, W) in [0, 1]
    at the snapshot's probe pose with and without the snapshot's imaged tools."""
    pose = snap.tool_poses["probe"]
    with torch.inference_mode():
        with_tools = view.renderer.render(pose, snap.patient, tools=snap.imaged_tools)[0].numpy()
        without = view.renderer.render(pose, snap.patient)[0].numpy()
    shown = view.panel.texture.to_array()[..., 0]  # grey: R = G = B
    return shown, with_tools, without


def drill_pixels(with_tools: np.ndarray, without: np.ndarray) -> int:
    """Pixels the drill changes by more than a tenth of the grey range (its echo and its shadow)."""
    return int((np.abs(with_tools - without) > 0.1).sum())


def test_scene_image_shows_the_drill_in_its_plane(scene):
    from sim.transforms import matrix_to_quat

    env, view = scene
    env.reset()
    # The drill's target in the probe's image plane: the tip 4 cm deep under the probe's centre,
    # the bit tilted 30 degrees from the beam within the plane (an in-plane approach). The imaged
    # shaft is the drill's target (the arm follows it; the image shows where the env has the drill).
    probe = torch.as_tensor(pose_matrix(env.snapshot().tool_poses["probe"][0]), dtype=torch.float32)
    a = np.radians(30.0)
    tilt = torch.tensor([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]], dtype=torch.float32)
    tip = probe[:3, :3] @ torch.tensor([0.0, 0.0, 0.04]) + probe[:3, 3]
    drill = env.snapshot().extras["drill_command"].clone()
    drill[0] = torch.cat([tip, matrix_to_quat(probe[:3, :3] @ tilt)])
    env.drive_tools({"drill": drill})
    view.draw(env, 0)
    shown, with_tools, without = images(view, snap0(env))
    np.testing.assert_array_equal(shown, (np.clip(with_tools, 0, 1) * 255).astype(np.uint8))
    changed = drill_pixels(with_tools, without)
    assert changed > 200, f"the drill in the image plane changes only {changed} pixels of the scene's image"


def test_drill_at_reset_crosses_the_image(scene):
    env, view = scene
    env.reset()
    view.draw(env, 0)
    snap = snap0(env)
    probe = pose_matrix(snap.tool_poses["probe"][0])
    for key in ("plan_entry", "plan_target"):
        elevation = (snap.extras[key][0].double().numpy() - probe[:3, 3]) @ probe[:3, 1]
        assert abs(elevation) < 1e-3, f"{key} {elevation * 1000:.1f} mm off the probe's image plane"
    changed = drill_pixels(*images(view, snap)[1:])
    assert changed > 20, f"the drill at its start changes only {changed} pixels of the scene's image"
