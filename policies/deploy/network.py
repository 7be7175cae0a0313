"""A TCP bridge between the runtime and a robot PC, failing safe.

The runtime listens (`NetworkRobot`, a `RobotInterface`); the robot PC connects and answers
(`serve_robot`, which forwards any local `RobotInterface` and enforces its own safety limits).
Frames are the wire format of `policies.deploy.frames` (bounded, under a per-message deadline,
sequenced, HMAC-authenticated with a shared secret). After the hellos:

    runtime -> robot PC: start | target {pose (7,)} | stop {reason} | close
    robot PC -> runtime: session (`Session.to_arrays`) then state after start; state after each
                         target; stop {reason} when the robot PC stops on its own limits
    state: fields {force_n (N, in [0, 1000]), done (bool), ack (seq of the start or target it
           answers)}, arrays q (dof,), probe_pose (7,) and, for image policies, frame (H, W);
           a robot that reports more (deploy.json robot.reports) adds the field signals
           {name: number} and an array tool/<name> (7,) per other tracked tool

Either side stops its robot and ends the connection on any protocol error, timeout or
disconnect. Loopback (127.0.0.0/8, ::1) is the default; any other address needs a shared secret
and, on the runtime, an allow-list of robot PC addresses. A robot PC in another language needs
only the framing; `serve_robot` is the reference.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass

import numpy as np

from policies.deploy.frames import Channel, ProtocolError, check_secret, require_fields
from policies.deploy.robot import RobotInterface, RobotState, Session, check_state, checked_pose
from sim.anatomy.patient import SkinSurface
from sim.anatomy.surface import skin_point
from sim.errors import InputError, require
from sim.robot.safety import SafetyLimits, SafetyMonitor

MAX_REASON_CHARS = 500
STATE_FIELDS = {"force_n": float, "done": bool, "ack": int}
SIGNALS_FIELD = "signals"  # present only when the robot reports signals: a probe robot's frames are unchanged
TOOL_PREFIX = "tool/"  # the arrays of other tracked tools' poses
SPEED_TOLERANCE = 1.05  # the runtime clamps targets to the speed limits in float64 and sends float32
POSITION_TOLERANCE_M = 1e-4
MAX_PENETRATION_M = 0.01
FEED_TOLERANCE_M = 1e-5  # float32 targets: a feed at the limit may read a few micrometres over it


def is_loopback(host: str) -> bool:
    """Whether `host` (an IP address) is a loopback address; raise `InputError` if it is no IP address."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        raise InputError(f"bridge host {host!r}: expected an IP address such as 127.0.0.1 or 192.168.1.20") from None


def _reason(fields: dict, arrays: dict) -> str:
    """The checked reason of a stop message."""
    require_fields("stop", fields, arrays, {"reason": str})
    return fields["reason"][:MAX_REASON_CHARS]


def _short(reason: str) -> str:
    return reason[:MAX_REASON_CHARS]


class NetworkRobot:
    """The runtime's side: a robot PC connected over TCP. `port` 0 picks a free port (see .port).
    connect_timeout_s: how long to wait for the robot PC; timeout_s: for each whole message.
    Off loopback, `secret` (at least 16 bytes, shared with the robot PC) and `allow` (the robot
    PC's IP addresses) are required; connections from other addresses are closed unread."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 5555,
        timeout_s: float = 10.0,
        connect_timeout_s: float = 600.0,
        secret: bytes | None = None,
        allow: tuple[str, ...] = (),
    ) -> None:
        self.secret = check_secret(secret)
        self.allow = {ipaddress.ip_address(a) for a in _checked_allow(allow)}
        if not is_loopback(host) and (secret is None or not self.allow):
            raise InputError(
                f"bridge host {host!r} is not a loopback address: "
                "expected deploy.secret (or deploy.secret_file) and a non-empty "
                "deploy.allow list of robot PC addresses, so that only that robot PC can drive the runtime"
            )
        self.server = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.port = self.server.getsockname()[1]
        self.timeout_s, self.connect_timeout_s = timeout_s, connect_timeout_s
        self.channel: Channel | None = None
        self.failed: str | None = None  # why the bridge failed, once it has

    def accept(self) -> None:
        """Wait for the robot PC (from an allowed address) to connect, and exchange hellos."""
        deadline = time.monotonic() + self.connect_timeout_s
        while True:
            self.server.settimeout(max(deadline - time.monotonic(), 1e-3))
            try:
                conn, address = self.server.accept()
            except TimeoutError as err:
                raise ConnectionError(
                    f"no robot connected to port {self.port} within {self.connect_timeout_s} s"
                ) from err
            if not self.allow or ipaddress.ip_address(address[0]) in self.allow:
                break
            conn.close()  # not the robot PC: nothing is read from it
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.channel = Channel(conn, "runtime", self.timeout_s, self.secret)
        self.channel.handshake()

    def _guarded(self, step):
        """step(), refused once the bridge has failed: a failed stream is never resumed."""
        if self.failed is not None:
            raise ProtocolError(f"the bridge failed earlier ({self.failed}); restart the runtime and the robot PC")
        try:
            return step()
        except OSError as err:  # ProtocolError, or the socket failed
            self.failed = str(err)
            raise

    def start(self) -> Session:
        return self._guarded(self._start)

    def _start(self) -> Session:
        if self.channel is None:
            self.accept()
        self.channel.send("start")
        _, fields, arrays = self._receive("session")
        require_fields("session", fields, arrays, {}, tuple(arrays))
        try:
            return Session.from_arrays(arrays)
        except InputError as err:
            raise ProtocolError(f"session from the robot PC: {err}") from None

    def _receive(self, kind: str) -> tuple[str, dict, dict]:
        """The next message, which must be `kind`; a stop from the robot PC is a `ProtocolError` with its reason."""
        got, fields, arrays = self.channel.receive((kind, "stop"))
        if got == "stop":
            raise ProtocolError(f"the robot PC stopped: {_reason(fields, arrays)}")
        return got, fields, arrays

    def read(self) -> RobotState:
        """The robot PC's state answering the last start or target (its `ack`), checked."""
        return self._guarded(self._read)

    def _read(self) -> RobotState:
        _, fields, arrays = self._receive("state")
        expected = {**STATE_FIELDS, SIGNALS_FIELD: dict} if SIGNALS_FIELD in fields else STATE_FIELDS
        tools = sorted(k for k in arrays if k.startswith(TOOL_PREFIX))
        require_fields(
            "state",
            fields,
            arrays,
            expected,
            ("q", "probe_pose", *(("frame",) if "frame" in arrays else ()), *tools),
        )
        if fields["ack"] != self.channel.last_sent:
            raise ProtocolError(
                f"state from the robot PC: expected ack {self.channel.last_sent} (the last target), got {fields['ack']}"
            )
        try:
            return check_state(
                RobotState(
                    arrays["q"], arrays["probe_pose"], fields["force_n"], arrays.get("frame"), fields["done"],
                    {k[len(TOOL_PREFIX) :]: arrays[k] for k in tools}, dict(fields.get(SIGNALS_FIELD, {})),
                )
            )  # fmt: skip
        except InputError as err:
            raise ProtocolError(f"state from the robot PC: {err}") from None

    def send(self, target: np.ndarray) -> None:
        self._guarded(lambda: self.channel.send("target", arrays={"pose": np.asarray(target, np.float32)}))

    def stop(self, reason: str) -> None:
        if self.channel is not None:
            self.channel.send("stop", {"reason": _short(reason)})

    def close(self) -> None:
        if self.channel is not None:
            try:
                self.channel.send("close")
            except OSError:
                pass  # the robot PC is gone already
            self.channel.sock.close()
        self.server.close()


def _checked_allow(allow) -> tuple[str, ...]:
    """The allow-list as IP address strings; raise `InputError` naming a bad entry."""
    require(isinstance(allow, (list, tuple)), "deploy.allow", "a list of IP addresses", repr(allow))
    for a in allow:
        try:
            ipaddress.ip_address(str(a))
        except ValueError:
            raise InputError(f"deploy.allow entry {a!r}: expected an IP address such as 192.168.1.20") from None
    return tuple(str(a) for a in allow)


@dataclass
class RobotGuard:
    """The robot PC's own limits, independent of the runtime: every target must be finite with a
    unit quaternion, inside the workspace box around the session's anchor, within max speed * dt
    (x SPEED_TOLERANCE) of the previous target and at most max_penetration_m below the skin along
    its normal; every measured state must pass `SafetyMonitor.check` (force, thrust, box, speed).
    A robot with a feed limit (a drill) goes below the skin by design: for it the advance along the
    previous target's z axis (the bit) is bounded instead, by max_feed_m_s * dt (x SPEED_TOLERANCE)."""

    limits: SafetyLimits
    dt_s: float
    session: Session
    previous: np.ndarray  # (7,) the last target, or the measured pose at the start
    max_penetration_m: float = MAX_PENETRATION_M

    def __post_init__(self) -> None:
        self.monitor = SafetyMonitor(self.limits, self.session.anchor_m, self.dt_s)
        self.skin = SkinSurface(*(self.session.surface[k] for k in ("x0", "z0", "dx", "dz", "y", "normal")))

    def target(self, pose: np.ndarray) -> tuple[np.ndarray, str | None]:
        """(the checked pose (7,) float64, why the robot must not move there or None); a safe pose becomes the
        previous target."""
        try:
            pose = checked_pose("target pose", pose)
        except InputError as err:
            return pose, str(err)
        lim, position = self.limits, pose[:3]
        outside = float(np.maximum(self.monitor.low - position, position - self.monitor.high).max())
        if outside > POSITION_TOLERANCE_M:
            return pose, f"target {outside * 1000:.1f} mm outside the workspace box"
        step = float(np.linalg.norm(position - self.previous[:3]))
        if step > lim.max_speed_m_s * self.dt_s * SPEED_TOLERANCE + POSITION_TOLERANCE_M:
            return pose, f"target {step * 1000:.1f} mm from the previous one: above {lim.max_speed_m_s:.3f} m/s"
        cosine = abs(float(np.dot(pose[3:], self.previous[3:]))) / float(
            np.linalg.norm(pose[3:]) * np.linalg.norm(self.previous[3:])
        )
        turn = 2 * float(np.arccos(min(1.0, cosine)))
        if turn > lim.max_angular_speed_rad_s * self.dt_s * SPEED_TOLERANCE + 1e-3:
            return (
                pose,
                f"target turns {turn:.3f} rad from the previous one: above {lim.max_angular_speed_rad_s:.3f} rad/s",
            )
        why = self._feed(position) if lim.max_feed_m_s is not None else self._depth(position)
        if why is not None:
            return pose, why
        self.previous = pose
        return pose, None

    def _depth(self, position: np.ndarray) -> str | None:
        """Why a target at `position` (3,) is too deep below the session's skin, or None."""
        skin, normal = skin_point(self.skin, position[0], position[2])
        if not np.isfinite(skin).all():
            return "target is not above the skin surface of the session"
        depth = float(np.dot(skin - position, normal))  # outward normal: positive below the skin
        if depth > self.max_penetration_m:
            return f"target {depth * 1000:.1f} mm below the skin (at most {self.max_penetration_m * 1000:.0f} mm)"
        return None

    def _feed(self, position: np.ndarray) -> str | None:
        """Why a target at `position` (3,) advances along the bit faster than the feed limit, or None."""
        w, x, y, z = self.previous[3:] / np.linalg.norm(self.previous[3:])
        bit = np.array([2 * (x * z + y * w), 2 * (y * z - x * w), 1 - 2 * (x * x + y * y)])  # the rotation's z column
        advance = float(np.dot(position - self.previous[:3], bit))
        feed = self.limits.max_feed_m_s
        if advance > feed * self.dt_s * SPEED_TOLERANCE + FEED_TOLERANCE_M:
            return f"target advances {advance * 1000:.2f} mm along the bit: above {feed * 1000:.1f} mm/s"
        return None

    def state(self, state: RobotState) -> str | None:
        """Why the robot must stop in its measured `state`, or None."""
        return self.monitor.check(
            np.asarray(state.q), np.asarray(state.probe_pose), float(state.force_n), state.signals
        )


def _send_state(channel: Channel, state: RobotState, ack: int) -> None:
    arrays = {"q": state.q, "probe_pose": state.probe_pose}
    if state.frame is not None:
        arrays["frame"] = state.frame
    arrays.update({f"{TOOL_PREFIX}{name}": pose for name, pose in state.tools.items()})
    fields = {"force_n": float(state.force_n), "done": bool(state.done), "ack": ack}
    if state.signals:
        fields[SIGNALS_FIELD] = {name: float(v) for name, v in state.signals.items()}
    channel.send("state", fields, arrays)


def serve_robot(robot: RobotInterface, host: str, port: int, limits: SafetyLimits, dt_s: float, timeout_s: float = 10.0,
                secret: bytes | None = None, max_penetration_m: float = MAX_PENETRATION_M) -> dict:  # fmt: skip
    """The robot PC's side: connect to a runtime at host:port and let it drive `robot` within
    this side's own `limits` (control period dt_s) until it closes the bridge. On a protocol
    error, timeout, disconnect or a broken limit the robot is stopped (robot.stop(reason)), the
    runtime told why when the link still works, and the connection ended.
    Returns {"targets": executed targets, "status": "closed" or "stopped: <reason>"}."""
    require(
        is_loopback(host) or check_secret(secret) is not None,
        f"bridge host {host!r}",
        "a loopback address or deploy.secret",
        "no secret",
    )
    targets = 0
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        channel = Channel(sock, "robot_pc", timeout_s, secret)
        guard: RobotGuard | None = None
        try:
            channel.handshake()
            while True:
                kind, fields, arrays = channel.receive(("start", "target", "stop", "close"))
                if kind == "stop":
                    robot.stop(_reason(fields, arrays))
                    guard = None
                    continue
                require_fields(kind, fields, arrays, {}, ("pose",) if kind == "target" else ())
                if kind == "close":
                    return {"targets": targets, "status": "closed"}
                if kind == "start":
                    session = robot.start()
                    state = robot.read()
                    guard = RobotGuard(
                        limits, dt_s, session, np.asarray(state.probe_pose, np.float64), max_penetration_m
                    )
                    channel.send("session", arrays=session.to_arrays())
                else:
                    if guard is None:
                        raise ProtocolError("target from the runtime: expected a start first")
                    pose, why = guard.target(arrays["pose"])
                    if why is not None:
                        return _stop(robot, channel, targets, why)
                    robot.send(pose)
                    targets += 1
                    state = robot.read()
                why = guard.state(state)
                if why is not None:
                    return _stop(robot, channel, targets, why)
                _send_state(channel, state, channel.received - 1)
        except OSError as err:  # ProtocolError, or the socket failed
            return _stop(robot, channel, targets, str(err))
        except BaseException:
            robot.stop("the robot PC program failed")
            raise


def _stop(robot: RobotInterface, channel: Channel, targets: int, reason: str) -> dict:
    """Stop `robot`, tell the runtime why (best effort) and report it."""
    robot.stop(reason)
    try:
        channel.send("stop", {"reason": _short(reason)})
    except OSError:
        pass  # the link is gone: the robot is stopped all the same
    return {"targets": targets, "status": f"stopped: {reason}"}
