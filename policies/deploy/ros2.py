"""ROS 2 adapter: a robot under ROS 2 as a `RobotInterface` (rclpy is imported only when used).

In: the ultrasound image (sensor_msgs/Image), the probe pose in the task frame
(geometry_msgs/PoseStamped), joint states (sensor_msgs/JointState) and the probe's wrench
(geometry_msgs/WrenchStamped). Out: the probe target (geometry_msgs/PoseStamped) for a Cartesian
impedance controller, which keeps the probe compliant along its beam. The session (skin surface,
anchor, goal, task arrays) comes from an .npz file written with `Session.to_arrays` (numpy.savez).

Not supported: a robot that reports more than these (deploy.json robot.reports: other tracked
tools' poses, named signals such as us_surgery's drill thrust, drilled depth and in-bone state)
has no standard ROS 2 messages here; `Ros2Robot` refuses such a policy by name before it starts
(run it over the network bridge, whose robot PC sends them).

    python scripts/deploy.py checkpoint=last deploy.robot=ros2 deploy.session=session.npz
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from policies.deploy.robot import Reports, RobotState, Session
from sim.errors import InputError

TOPICS = {
    "image": "/ultrasound/image",
    "pose": "/probe/pose",
    "joints": "/joint_states",
    "wrench": "/probe/wrench",
    "target": "/probe/target_pose",
}
DEPTHS = {"mono8": (np.uint8, 255.0), "mono16": (np.uint16, 65535.0), "32FC1": (np.float32, 1.0)}


def image_to_array(msg) -> np.ndarray:
    """A sensor_msgs/Image (mono8, mono16, 32FC1, rgb8, bgr8) as (H, W) float32 in [0, 1]."""
    if msg.encoding in DEPTHS:
        dtype, full = DEPTHS[msg.encoding]
        row = msg.step // np.dtype(dtype).itemsize
        pixels = np.frombuffer(bytes(msg.data), dtype).reshape(msg.height, row)[:, : msg.width]
        return np.clip(pixels.astype(np.float32) / full, 0.0, 1.0)
    if msg.encoding in ("rgb8", "bgr8"):
        pixels = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.step)[:, : 3 * msg.width]
        return pixels.reshape(msg.height, msg.width, 3).mean(-1, dtype=np.float32) / 255.0
    raise InputError(f"ultrasound image encoding {msg.encoding!r}: expected one of {[*DEPTHS, 'rgb8', 'bgr8']}")


def pose_to_array(pose) -> np.ndarray:
    """A geometry_msgs/Pose as (x, y, z, qw, qx, qy, qz) float32."""
    p, o = pose.position, pose.orientation
    return np.array([p.x, p.y, p.z, o.w, o.x, o.y, o.z], np.float32)


def joint_positions(msg, names: list[str]) -> np.ndarray:
    """Joint angles (dof,) in deploy.json's order from a sensor_msgs/JointState."""
    index = {n: i for i, n in enumerate(msg.name)}
    missing = [n for n in names if n not in index]
    if missing:
        raise InputError(f"joint states: joints {missing} missing; got {list(msg.name)}")
    return np.array([msg.position[index[n]] for n in names], np.float32)


def contact_force(msg) -> float:
    """Magnitude of the probe's contact force (N) from a geometry_msgs/WrenchStamped."""
    f = msg.wrench.force
    return float(np.linalg.norm([f.x, f.y, f.z]))


def check_reports(reports: Reports | None) -> None:
    """InputError unless the robot reports nothing beyond what these topics carry (None: nothing)."""
    if reports is not None and (reports.tools or reports.signals):
        raise InputError(
            f"deploy.robot=ros2: this policy's robot reports {reports.describe()} (deploy.json robot.reports), "
            "which the ROS 2 adapter has no topics for; expected a policy whose robot reports joints, its tool's "
            "pose and wrench and the ultrasound image only (use deploy.robot=network, whose robot PC sends them)"
        )


class Ros2Robot:
    """`RobotInterface` over ROS 2 topics (see TOPICS; override any). read() waits until every
    input topic has a message newer than the last read, at most timeout_s. reports: what
    deploy.json says the robot reports beyond those topics; anything is refused (InputError)."""

    def __init__(
        self,
        session_file: str | Path,
        joint_names: list[str],
        topics: dict | None = None,
        frame_id: str = "patient",
        images: bool = True,
        timeout_s: float = 1.0,
        reports: Reports | None = None,
    ) -> None:
        check_reports(reports)
        try:
            import rclpy
            from geometry_msgs.msg import PoseStamped, WrenchStamped
            from sensor_msgs.msg import Image, JointState
        except ImportError as err:
            raise InputError(
                f"ROS 2 robot: rclpy is not importable ({err}); "
                "source your ROS 2 installation, e.g. /opt/ros/jazzy/setup.bash"
            ) from err
        self.rclpy, self.PoseStamped = rclpy, PoseStamped
        with np.load(session_file) as data:
            self.session = Session.from_arrays(data)
        self.topics = {**TOPICS, **(topics or {})}
        unknown = sorted(set(self.topics) - set(TOPICS))
        if unknown:
            raise InputError(f"ROS 2 topics {unknown}: expected keys among {sorted(TOPICS)}")
        self.joint_names, self.frame_id, self.timeout_s = joint_names, frame_id, timeout_s
        if not rclpy.ok():
            rclpy.init()
        self.node = rclpy.create_node("sonolab_runtime")
        self.latest: dict = {}
        self.fresh: set[str] = set()
        inputs = {"pose": PoseStamped, "joints": JointState, "wrench": WrenchStamped} | (
            {"image": Image} if images else {}
        )
        for key, kind in inputs.items():
            self.node.create_subscription(kind, self.topics[key], lambda msg, key=key: self._store(key, msg), 10)
        self.publisher = self.node.create_publisher(PoseStamped, self.topics["target"], 10)
        self.inputs = set(inputs)
        self.done = False

    def _store(self, key: str, msg) -> None:
        self.latest[key] = msg
        self.fresh.add(key)

    def start(self) -> Session:
        self.done = False
        return self.session

    def read(self) -> RobotState:
        deadline = self.node.get_clock().now().nanoseconds + int(self.timeout_s * 1e9)
        while self.fresh != self.inputs:
            if self.node.get_clock().now().nanoseconds > deadline:
                raise TimeoutError(
                    f"ROS 2 robot: no new message on {sorted(self.inputs - self.fresh)} within {self.timeout_s} s"
                )
            self.rclpy.spin_once(self.node, timeout_sec=0.01)
        self.fresh = set()
        m = self.latest
        frame = image_to_array(m["image"]) if "image" in m else None
        return RobotState(
            joint_positions(m["joints"], self.joint_names),
            pose_to_array(m["pose"].pose),
            contact_force(m["wrench"]),
            frame,
            self.done,
        )

    def _publish(self, pose: np.ndarray) -> None:
        msg = self.PoseStamped()
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.header.frame_id = self.frame_id
        x, y, z, qw, qx, qy, qz = (float(v) for v in pose)
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = x, y, z
        msg.pose.orientation.w, msg.pose.orientation.x, msg.pose.orientation.y, msg.pose.orientation.z = qw, qx, qy, qz
        self.publisher.publish(msg)

    def send(self, target: np.ndarray) -> None:
        self._publish(target)

    def stop(self, reason: str) -> None:
        """Hold: the last measured pose becomes the target."""
        self.done = True
        if "pose" in self.latest:
            self._publish(pose_to_array(self.latest["pose"].pose))
        self.node.get_logger().info(f"sonolab runtime stopped: {reason}")

    def close(self) -> None:
        self.node.destroy_node()
