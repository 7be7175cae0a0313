"""An arm drawn from its URDF's visual primitives, posed by forward kinematics.

Each `<visual>` (cylinder, box or sphere, with its origin and material colour) becomes one mesh
in its link's frame, added to a plotter once; `ArmDrawing.pose` then moves every actor through
its `user_matrix` from one forward-kinematics call over all links, so a frame costs a few 4 x 4
products instead of new meshes.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytorch_kinematics as pk
import pyvista as pv
import torch
from pytorch_kinematics.urdf_parser_py import urdf

from sim.errors import InputError
from sim.robot.arm import Arm
from sim.transforms import rpy_to_matrix

DEFAULT_RGB = (0.8, 0.8, 0.8)  # visuals without a material colour


def origin_matrix(origin: urdf.Pose | None) -> np.ndarray:
    """(4, 4) transform of a URDF origin: xyz (m), then rpy (rad) about fixed x, y, z axes."""
    m = np.eye(4)
    if origin is not None:
        m[:3, :3] = rpy_to_matrix(torch.tensor(origin.rpy or (0.0, 0.0, 0.0), dtype=torch.float64)).numpy()
        m[:3, 3] = origin.xyz or (0.0, 0.0, 0.0)
    return m


def visual_mesh(geometry: urdf.GeometricType) -> pv.PolyData | None:
    """A URDF primitive centred on its origin (cylinder axis along z), or None for other types."""
    if isinstance(geometry, urdf.Cylinder):
        return pv.Cylinder(direction=(0, 0, 1), radius=geometry.radius, height=geometry.length, resolution=32)
    if isinstance(geometry, urdf.Box):
        sx, sy, sz = (s / 2 for s in geometry.size)
        return pv.Box((-sx, sx, -sy, sy, -sz, sz))
    if isinstance(geometry, urdf.Sphere):
        return pv.Sphere(radius=geometry.radius)
    return None


def material_rgb(visual: urdf.Visual, materials: dict[str, tuple[float, ...]]) -> tuple[float, ...]:
    """The visual's colour (r, g, b in [0, 1]): its own material colour or the named robot material's."""
    material = visual.material
    if material is None:
        return DEFAULT_RGB
    if material.color is not None:
        return tuple(material.color.rgba[:3])
    return materials.get(material.name, DEFAULT_RGB)


class ArmDrawing:
    """Actors for every link visual of `arm`'s URDF on `plotter`, on the links from its root to the
    arm's tool frame.

    `pose(q, base)` places them: q (dof,) joint angles in radians, base (4, 4) transform of the
    robot base in the scene frame (for the torch backend: anchor offset @ `arm.base_pose`).
    Visuals that are not primitives (meshes) are skipped with a warning.
    """

    def __init__(self, plotter: pv.Plotter, arm: Arm) -> None:
        text = arm.urdf_path.read_text()
        robot = urdf.URDF.from_xml_string(text)
        self.chain = pk.build_chain_from_urdf(text).to(dtype=torch.float64)
        if self.chain.get_joint_parameter_names() != arm.joint_names:
            raise InputError(
                f"robot {arm.name} ({arm.urdf_path}): "
                f"expected the URDF's joints {self.chain.get_joint_parameter_names()} "
                f"to be the arm's {arm.joint_names} (a serial arm with no other movable joints)"
            )
        materials = {m.name: tuple(m.color.rgba[:3]) for m in robot.materials if m.color is not None}
        # Only the links from the root to the arm's tool frame: a URDF may carry other tools at its
        # flange (the Panda's probe housing beside its drill frame) that this arm does not hold.
        held = set(robot.get_chain(robot.get_root(), arm.tool_frame, joints=False, links=True))
        self.links: list[str] = []
        self.actors: list[pv.Actor] = []
        for link in robot.links:
            if link.name not in held:
                continue
            for visual in link.visuals:
                mesh = visual_mesh(visual.geometry)
                if mesh is None:
                    warnings.warn(
                        f"robot {arm.name}: link {link.name!r} visual "
                        f"{type(visual.geometry).__name__} is not drawn (cylinder, box and sphere are)"
                    )
                    continue
                mesh = mesh.transform(origin_matrix(visual.origin), inplace=False)
                self.actors.append(
                    plotter.add_mesh(mesh, color=material_rgb(visual, materials), smooth_shading=True, specular=0.3)
                )
                self.links.append(link.name)

    def pose(self, q: torch.Tensor, base: np.ndarray) -> None:
        """Move the link actors to joint angles q (dof,) with the base at `base` (4, 4)."""
        frames = self.chain.forward_kinematics(q.detach().to("cpu", torch.float64)[None])
        links = np.stack([frames[name].get_matrix()[0].numpy() for name in self.links])  # (V, 4, 4)
        for actor, matrix in zip(self.actors, base @ links):
            actor.user_matrix = matrix
