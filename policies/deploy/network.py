"""A TCP bridge between the runtime and a robot PC.

The runtime listens (`NetworkRobot`, a `RobotInterface`); the robot PC connects and answers
(`serve_robot`, which forwards any local `RobotInterface`). Every message is a 4-byte big-endian
header length, a JSON header {"type", "fields": {...}, "arrays": [{"name", "dtype", "shape"}]},
then the arrays' raw little-endian bytes in that order, so numbers cross the wire unchanged.

    runtime -> robot: start | target {pose (7,)} | stop {reason} | close
    robot -> runtime: session (`Session.to_arrays`) then state after start; state after each target

A robot PC in another language needs only this framing; `serve_robot` is the reference.
"""

from __future__ import annotations

import json
import socket
import struct

import numpy as np

from policies.deploy.robot import RobotInterface, RobotState, Session
from sim.errors import InputError

HEADER = struct.Struct(">I")


def send_message(sock: socket.socket, kind: str, fields: dict | None = None, arrays: dict[str, np.ndarray] | None = None) -> None:
    arrays = {k: np.asarray(v, dtype=np.asarray(v).dtype.newbyteorder("<")) for k, v in (arrays or {}).items()}  # tobytes: C order
    header = json.dumps(
        {"type": kind, "fields": fields or {}, "arrays": [{"name": k, "dtype": v.dtype.str, "shape": list(v.shape)} for k, v in arrays.items()]}
    ).encode()
    sock.sendall(HEADER.pack(len(header)) + header + b"".join(v.tobytes() for v in arrays.values()))


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise ConnectionError("the peer closed the connection")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def receive_message(sock: socket.socket, expect: tuple[str, ...]) -> tuple[str, dict, dict[str, np.ndarray]]:
    """(type, fields, arrays) of the next message, which must be one of `expect`."""
    (size,) = HEADER.unpack(_read_exactly(sock, HEADER.size))
    header = json.loads(_read_exactly(sock, size))
    arrays = {}
    for spec in header["arrays"]:
        dtype = np.dtype(spec["dtype"])
        count = int(np.prod(spec["shape"], dtype=np.int64))
        arrays[spec["name"]] = np.frombuffer(_read_exactly(sock, count * dtype.itemsize), dtype).reshape(spec["shape"])
    if header["type"] not in expect:
        raise InputError(f"bridge message: expected one of {list(expect)}, got {header['type']!r}")
    return header["type"], header["fields"], arrays


class NetworkRobot:
    """The runtime's side: a robot PC connected over TCP. `port` 0 picks a free port (see .port).
    connect_timeout_s: how long to wait for the robot PC; timeout_s: for each of its answers."""

    def __init__(self, host: str = "127.0.0.1", port: int = 5555, timeout_s: float = 10.0, connect_timeout_s: float = 600.0) -> None:
        self.server = socket.create_server((host, port))
        self.port = self.server.getsockname()[1]
        self.timeout_s, self.connect_timeout_s = timeout_s, connect_timeout_s
        self.conn: socket.socket | None = None

    def accept(self) -> None:
        """Wait for the robot PC to connect."""
        self.server.settimeout(self.connect_timeout_s)
        try:
            self.conn, _ = self.server.accept()
        except socket.timeout as err:
            raise ConnectionError(f"no robot connected to port {self.port} within {self.connect_timeout_s} s") from err
        self.conn.settimeout(self.timeout_s)
        self.conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def start(self) -> Session:
        if self.conn is None:
            self.accept()
        send_message(self.conn, "start")
        _, _, arrays = receive_message(self.conn, ("session",))
        return Session.from_arrays(arrays)

    def read(self) -> RobotState:
        _, fields, arrays = receive_message(self.conn, ("state",))
        return RobotState(arrays["q"], arrays["probe_pose"], float(fields["force_n"]), arrays.get("frame"), bool(fields["done"]))

    def send(self, target: np.ndarray) -> None:
        send_message(self.conn, "target", arrays={"pose": np.asarray(target, np.float32)})

    def stop(self, reason: str) -> None:
        send_message(self.conn, "stop", {"reason": reason})

    def close(self) -> None:
        if self.conn is not None:
            try:
                send_message(self.conn, "close")
            except OSError:
                pass  # the robot PC is gone already
            self.conn.close()
        self.server.close()


def _send_state(sock: socket.socket, state: RobotState) -> None:
    arrays = {"q": state.q, "probe_pose": state.probe_pose}
    if state.frame is not None:
        arrays["frame"] = state.frame
    send_message(sock, "state", {"force_n": float(state.force_n), "done": bool(state.done)}, arrays)


def serve_robot(robot: RobotInterface, host: str, port: int, timeout_s: float = 60.0) -> int:
    """The robot PC's side: connect to a runtime and let it drive `robot` until it closes the
    bridge; returns the number of targets executed."""
    targets = 0
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            kind, fields, arrays = receive_message(sock, ("start", "target", "stop", "close"))
            if kind == "start":
                send_message(sock, "session", arrays=robot.start().to_arrays())
                _send_state(sock, robot.read())
            elif kind == "target":
                robot.send(arrays["pose"])
                targets += 1
                _send_state(sock, robot.read())
            elif kind == "stop":
                robot.stop(fields["reason"])
            else:
                return targets
