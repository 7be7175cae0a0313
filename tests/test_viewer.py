"""The play scene, its off-screen video and the interactive viewer's keys (no display needed).

A broken OpenGL backend crashes VTK with a signal instead of raising, so a subprocess first
probes off-screen rendering (skipping this module where it dies) and the video renders in a
subprocess as well.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import imageio.v2 as imageio
import numpy as np
import pytest
import torch

from sim.anatomy.patient_set import load_patients
from sim.ultrasound.probe import ProbeSpec
from tasks import make_env
from tests.tasks_helpers import ROOT, small_patient_set

STATE_TASK = {"name": "us_nav_state", "observation": {"images": False}}
VIDEO_STEPS = 6
VIDEO = textwrap.dedent(
    f"""
    import sys, torch
    from sim.anatomy.patient_set import load_patients
    from sim.ultrasound.probe import ProbeSpec
    from sim.viz.play_video import PlayVideo
    from tasks import make_env
    from tests.tasks_helpers import small_patient_set

    env = make_env({STATE_TASK!r}, load_patients(small_patient_set(), "test", progress=False), 2, "cpu", 0)
    env.reset()
    actions = torch.Generator().manual_seed(0)
    with PlayVideo(env, ProbeSpec.preset("linear"), sys.argv[1], fps=10) as video:
        for _ in range({VIDEO_STEPS}):
            env.step(2 * torch.rand(2, 5, generator=actions) - 1)
            video(env)
    """
)
PROBE_GL = (
    "import pyvista as pv; p = pv.Plotter(off_screen=True, window_size=(64, 64)); "
    "p.add_mesh(pv.Sphere()); p.screenshot()"
)


def run_python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def skip_if_signalled(run: subprocess.CompletedProcess, what: str) -> None:
    if run.returncode < 0:
        pytest.skip(
            f"{what} died from signal {signal.Signals(-run.returncode).name}: no working off-screen OpenGL for VTK "
            f"here (stderr tail: {run.stderr[-300:]!r})"
        )


@pytest.fixture(scope="module", autouse=True)
def offscreen_gl() -> None:
    skip_if_signalled(run_python("-c", PROBE_GL), "an off-screen pyvista render")


def test_video_frames_show_the_scene_and_the_image_changing(tmp_path):
    from sim.viz.play_scene import COLUMN_WEIGHTS, FRAME_SIZE

    path = tmp_path / "play.mp4"
    made = run_python("-c", VIDEO, str(path))
    skip_if_signalled(made, "the video script")
    assert made.returncode == 0, made.stderr[-3000:]
    frames = np.array(imageio.mimread(path)).astype(float)
    width, height = FRAME_SIZE
    assert frames.shape == (VIDEO_STEPS, height, width, 3)
    split = width * COLUMN_WEIGHTS[0] // sum(COLUMN_WEIGHTS)
    view, panel = frames[:, :, :split], frames[:, :, split:]
    assert len(np.unique(frames[0].astype(np.uint8).reshape(-1, 3), axis=0)) > 50, "too few colours for shaded meshes"
    assert np.abs(view[-1] - view[0]).mean() > 0.5, "the 3-D view (arm, probe, image plane) did not move"
    assert np.abs(panel[-1] - panel[0]).mean() > 5.0, "the ultrasound panel did not change"
    assert panel[0].mean() > 10, "the ultrasound panel is blank"


# -- the viewer's keys, off screen

KEY_CODES = {"space": " ", "Tab": "\t", "bracketright": "]", "bracketleft": "[", "Right": ""}


def press(viewer, key: str) -> None:
    """What a real key press sends the window: KeyPressEvent (pyvista's key callbacks), then CharEvent
    (VTK's interactor style). The off-screen interactor is disabled, so the events are invoked directly."""
    interactor = viewer.scene.plotter.iren.interactor
    interactor.SetKeySym(key)
    interactor.SetKeyCode(KEY_CODES.get(key, key)[:1] or "\0")
    interactor.InvokeEvent("KeyPressEvent")
    interactor.InvokeEvent("CharEvent")


@pytest.fixture(scope="module")
def viewer():
    from sim.viz.viewer import PlayViewer

    env = make_env(STATE_TASK, load_patients(small_patient_set(), "train", progress=False), 3, "cpu", 1)
    calls = []

    def policy(obs):
        calls.append(obs["policy"].clone())
        return torch.full((env.num_envs, env.num_actions), 0.5)

    view = PlayViewer(env, policy, ProbeSpec.preset("linear"), off_screen=True, size=(320, 180))
    view.calls = calls
    yield view
    view.scene.close()


def shown_pose(viewer) -> np.ndarray:
    """The probe pose (4, 4) the 3-D image plane is drawn at."""
    return np.array(viewer.scene.image.user_matrix)


def test_viewer_pause_step_and_timer(viewer):
    from sim.viz.scene import pose_matrix

    env = viewer.env
    viewer.reset()
    viewer.tick()
    assert int(env.episode_length_buf[0]) == 1 and not viewer.paused
    press(viewer, "space")
    assert viewer.paused
    before, calls = env.q.clone(), len(viewer.calls)
    for _ in range(3):
        viewer.tick()
    press(viewer, "x")  # an unbound key does nothing
    assert torch.equal(env.q, before) and len(viewer.calls) == calls and int(env.episode_length_buf[0]) == 1
    press(viewer, "n")
    assert int(env.episode_length_buf[0]) == 2 and len(viewer.calls) == calls + 1
    press(viewer, "Right")
    assert int(env.episode_length_buf[0]) == 3 and len(viewer.calls) == calls + 2
    np.testing.assert_allclose(shown_pose(viewer), pose_matrix(env.poses[0]), atol=1e-6)
    press(viewer, "space")
    press(viewer, "n")  # steps only while paused
    assert not viewer.paused and int(env.episode_length_buf[0]) == 3
    viewer.tick()
    assert int(env.episode_length_buf[0]) == 4


def test_viewer_reset_and_switching_environments(viewer):
    from sim.viz.scene import pose_matrix

    env = viewer.env
    for _ in range(3):
        viewer.tick()
    assert int(env.episode_length_buf.min()) >= 3
    press(viewer, "r")
    assert torch.equal(env.episode_length_buf, torch.zeros_like(env.episode_length_buf))
    press(viewer, "w")  # VTK's own one-letter keys (w: wireframe) are off
    assert all(actor.prop.style == "Surface" for arm in viewer.scene.arms.values() for actor in arm.actors)
    for key, shown in (("bracketright", 1), ("Tab", 2), ("bracketright", 0), ("bracketleft", 2)):
        press(viewer, key)
        assert viewer.env_id == shown, key
        np.testing.assert_allclose(shown_pose(viewer), pose_matrix(env.poses[shown]), atol=1e-6)
        assert viewer.scene.patient == int(env.patient_idx[shown])
        assert f"env {shown + 1}/3" in viewer.scene.status.GetText(2)  # 2: upper left (pyvista get_text wants the int)
    viewer.tick()
    np.testing.assert_allclose(shown_pose(viewer), pose_matrix(env.poses[2]), atol=1e-6)


def test_arm_drawing_holds_the_probe_where_the_environment_has_it(viewer):
    from sim.viz.scene import pose_matrix

    viewer.tick()
    (arm,) = viewer.scene.arms.values()  # us_nav: one robot
    probe_link = np.array(arm.actors[arm.links.index("iiwa_probe")].user_matrix)
    tool = pose_matrix(viewer.env.poses[viewer.env_id])
    # iiwa14.urdf: the probe face (tool frame probe_tip) lies 0.12 m along the probe link's z axis.
    np.testing.assert_allclose(probe_link @ [0.0, 0.0, 0.12, 1.0], tool[:, 3], atol=1e-4)
    np.testing.assert_allclose(probe_link[:3, :3], tool[:3, :3], atol=1e-4)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the display check is for X11 / Wayland")
def test_viewer_without_a_display_says_so(monkeypatch):
    from sim.errors import InputError
    from sim.viz.viewer import PlayViewer

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(InputError, match="expected a display"):
        PlayViewer(None, None, ProbeSpec.preset("linear"))
