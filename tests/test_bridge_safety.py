"""The robot bridge fails safe: bounded, deadline-limited, sequenced and authenticated frames,
validated messages, a runtime that stops the robot on any bridge failure, and a robot PC that
enforces its own limits. Everything runs on loopback."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.deploy.frames import DTYPES, LENGTH, MAX_PAYLOAD_BYTES, VERSION, Channel, ProtocolError
from policies.deploy.network import NetworkRobot, serve_robot
from policies.deploy.policy import read_spec
from policies.deploy.robot import RobotState, Session, check_state
from policies.deploy.runtime import Runtime
from policies.deploy.sim_robot import SimRobot
from policies.workflow import build_env, compose_config, trained_run
from sim.errors import InputError
from sim.robot.safety import SafetyLimits
from tests.tasks_helpers import SMALL_RUN
from tests.test_deploy import last_line, script

TINY = ["num_envs=4", "agent.num_steps_per_env=4", "agent.max_iterations=1", *SMALL_RUN]
SECRET = b"0123456789abcdef-test-secret"
TYPES = ("hello", "start", "target", "stop", "close", "session", "state")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """The exported folder of a tiny us_nav_state training."""
    root = tmp_path_factory.mktemp("bridge")
    script("train.py", "task=us_nav_state", *TINY, f"log_root={root}")
    return Path(
        last_line(
            script(
                "export.py", "task=us_nav_state", "checkpoint=last", f"log_root={root}", "export.samples=8", *SMALL_RUN
            )
        )
    )


def sim_robot(exported: Path, seed: int = 3) -> SimRobot:
    cfg = compose_config([f"seed={seed}", f"checkpoint={exported.parent}", *SMALL_RUN])
    trained_run(cfg)
    return SimRobot(build_env(cfg, "train", num_envs=1))


@pytest.fixture(scope="module")
def episode_start(exported) -> tuple[dict, RobotState]:
    """A real session (as arrays) and the first state of the simulator, for scripted peers."""
    robot = sim_robot(exported)
    return robot.start().to_arrays(), robot.read()


def pair(timeout_s: float = 1.0, secret: bytes | None = None) -> tuple[Channel, Channel]:
    """(runtime, robot PC) channels over a connected socket pair."""
    a, b = socket.socketpair()
    return Channel(a, "runtime", timeout_s, secret), Channel(b, "robot_pc", timeout_s, secret)


def receive_raw(data: bytes, timeout_s: float = 1.0):
    """What a runtime channel makes of `data` followed by the peer closing."""
    a, b = socket.socketpair()
    b.sendall(data)
    b.close()
    with a:
        return Channel(a, "runtime", timeout_s).receive(TYPES)


def frame(header: object, payload: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return LENGTH.pack(len(raw)) + raw + payload


# --- frames -------------------------------------------------------------------------------------

ARRAYS = st.dictionaries(
    st.text("abcdefgh_", min_size=1, max_size=8),
    st.tuples(st.sampled_from(DTYPES), st.lists(st.integers(0, 4), max_size=3)).map(
        lambda t: np.zeros(t[1], np.dtype(t[0]))
    ),
    max_size=4,
)
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
JSON = st.recursive(
    SCALARS, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3), max_leaves=10
)
HEADERS = st.fixed_dictionaries({"type": st.sampled_from(TYPES), "seq": st.just(0), "fields": JSON, "arrays": JSON})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(TYPES),
    fields=st.dictionaries(st.text(max_size=6), st.integers() | st.text(max_size=6) | st.booleans(), max_size=3),
    arrays=ARRAYS,
)
def test_valid_frames_round_trip(kind, fields, arrays):
    runtime, robot_pc = pair(secret=SECRET)
    with runtime.sock, robot_pc.sock:
        robot_pc.send(kind, fields, arrays)
        got_kind, got_fields, got_arrays = runtime.receive(TYPES)
    assert (got_kind, got_fields, sorted(got_arrays)) == (kind, fields, sorted(arrays))
    for name, value in arrays.items():
        assert got_arrays[name].dtype == value.dtype and got_arrays[name].shape == value.shape


@settings(max_examples=50, deadline=None)
@given(data=st.binary(max_size=2000) | JSON.map(frame) | st.builds(frame, HEADERS, st.binary(max_size=64)))
def test_any_bytes_give_a_message_or_a_protocol_error(data):
    try:
        kind, fields, arrays = receive_raw(data, timeout_s=0.5)
    except ProtocolError:
        return
    assert kind in TYPES and isinstance(fields, dict) and all(isinstance(a, np.ndarray) for a in arrays.values())


@pytest.mark.parametrize(
    "shape, dtype", [([1 << 40], "<f8"), ([1 << 32], "|u1"), ([65536, 65536, 2], "<f4"), ([1 << 62, 1 << 62], "<i8")]
)
def test_oversized_announcements_are_refused_before_allocation(shape, dtype):
    header = {"type": "state", "seq": 0, "fields": {}, "arrays": [{"name": "q", "dtype": dtype, "shape": shape}]}
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError, match=f"at most {MAX_PAYLOAD_BYTES} bytes"):
            receive_raw(frame(header, b"\0" * 64))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024 * 1024
    with pytest.raises(ProtocolError, match="header: expected at most 65536 bytes"):
        receive_raw(struct.pack(">I", 1 << 31))


@pytest.mark.parametrize(
    "header, match",
    [
        ({"type": "state", "seq": 0, "fields": {}, "arrays": [{"name": "q", "dtype": "O", "shape": [1]}]}, "dtype"),
        ({"type": "state", "seq": 0, "fields": {}, "arrays": [{"name": "q", "dtype": ">f8", "shape": [1]}]}, "dtype"),
        (
            {
                "type": "state",
                "seq": 0,
                "fields": {},
                "arrays": [{"name": "q", "dtype": "<f8", "shape": [1, 1, 1, 1, 1]}],
            },
            "shape",
        ),
        ({"type": "state", "seq": 0, "fields": {}, "arrays": [{"name": "q", "dtype": "<f8", "shape": [-1]}]}, "shape"),
        ({"type": "state", "seq": True, "fields": {}, "arrays": []}, "seq an int"),
        ({"type": "state", "seq": 0, "fields": {}}, "keys"),
        ({"type": "state", "seq": 3, "fields": {}, "arrays": []}, "expected seq 0, got 3"),
        ({"type": "launch", "seq": 0, "fields": {}, "arrays": []}, "expected one of"),
    ],
)
def test_malformed_headers_are_protocol_errors(header, match):
    with pytest.raises(ProtocolError, match=match):
        receive_raw(frame(header))


def test_nested_garbage_and_short_frames_are_protocol_errors():
    with pytest.raises(ProtocolError, match="UTF-8 JSON"):
        receive_raw(LENGTH.pack(5000) + b"[" * 5000)  # deeply nested JSON
    with pytest.raises(ProtocolError, match="closed the connection"):
        receive_raw(
            frame(
                {"type": "state", "seq": 0, "fields": {}, "arrays": [{"name": "q", "dtype": "<f8", "shape": [3]}]},
                b"\0" * 10,
            )
        )


def test_a_slow_peer_is_cut_off_at_the_message_deadline():
    runtime, robot_pc = pair(timeout_s=0.6)
    data = frame({"type": "state", "seq": 0, "fields": {}, "arrays": []})

    def trickle() -> None:  # one byte every 0.2 s: each recv returns in time, the message does not
        try:
            for byte in data:
                robot_pc.sock.send(bytes([byte]))
                time.sleep(0.2)
        except OSError:
            pass  # the runtime gave up and closed

    peer = threading.Thread(target=trickle)
    peer.start()
    began = time.monotonic()
    with pytest.raises(ProtocolError, match="no complete message from the robot_pc within 0.6 s"):
        runtime.receive(TYPES)
    assert time.monotonic() - began < 1.0
    runtime.sock.close()
    peer.join()
    robot_pc.sock.close()


def test_duplicates_forgeries_and_mismatched_auth_are_refused():
    runtime, robot_pc = pair(secret=SECRET)
    robot_pc.send("state")
    robot_pc.sent -= 1
    robot_pc.send("state")  # the same seq again: a duplicated message
    assert runtime.receive(TYPES)[0] == "state"
    with pytest.raises(ProtocolError, match="expected seq 1, got 0"):
        runtime.receive(TYPES)
    runtime, robot_pc = pair(secret=SECRET)
    forger = Channel(robot_pc.sock, "robot_pc", 1.0, b"another secret, 16 bytes or more")
    forger.send("state")
    with pytest.raises(ProtocolError, match="authentication failed"):
        runtime.receive(TYPES)
    runtime, robot_pc = pair(secret=SECRET)
    robot_pc.sent = 0
    reflected = Channel(robot_pc.sock, "runtime", 1.0, SECRET)  # a runtime frame sent back to the runtime
    reflected.send("state")
    with pytest.raises(ProtocolError, match="authentication failed"):
        runtime.receive(TYPES)
    runtime, robot_pc = pair(secret=SECRET)
    Channel(runtime.sock, "runtime", 1.0).send(
        "hello", {"version": VERSION, "auth": "none", "nonce": "0" * 32}
    )  # an unauthenticated runtime
    with pytest.raises(ProtocolError, match="auth 'hmac-sha256'"):
        robot_pc.handshake()
    with pytest.raises(InputError, match="at least 16 bytes"):
        Channel(robot_pc.sock, "robot_pc", 1.0, b"short")


# --- messages -----------------------------------------------------------------------------------


def test_states_and_sessions_are_validated(episode_start):
    arrays, state = episode_start
    assert check_state(state, 7).q.shape == (7,)
    bad = [
        (RobotState(state.q, state.probe_pose, -1e9), "force_n"),
        (RobotState(state.q, state.probe_pose, float("nan")), "force_n"),
        (RobotState(state.q, state.probe_pose, 5.0, done="no"), "done"),
        (RobotState(state.q[:6], state.probe_pose, 5.0), "q shape"),
        (RobotState(state.q, state.probe_pose * 2, 5.0), "quaternion"),
        (RobotState(state.q, state.probe_pose, 5.0, frame=np.full((4, 4), np.nan)), "frame"),
    ]
    for s, match in bad:
        with pytest.raises(InputError, match=match):
            check_state(s, 7)
    assert Session.from_arrays(arrays).anchor_m.shape == (3,)
    for change, match in [
        ({"anchor_m": np.zeros(2)}, "anchor_m shape"),
        ({"surface_dx": np.array(-1.0)}, "surface_dx"),
        ({"surface_normal": arrays["surface_normal"] * 3}, "unit normals"),
        ({"goal_pose": np.zeros(7)}, "goal_pose quaternion"),
        ({"extra": np.zeros(1)}, "expected arrays"),
    ]:
        with pytest.raises(InputError, match=match):
            Session.from_arrays({**arrays, **change})
    with pytest.raises(InputError, match="expected arrays"):
        Session.from_arrays({k: v for k, v in arrays.items() if k != "start_yaw"})


# --- the runtime against a misbehaving robot PC ----------------------------------------------------


def state_message(state: RobotState, ack: int, **changes) -> tuple[dict, dict]:
    fields = {"force_n": float(state.force_n), "done": False, "ack": ack, **changes}
    return fields, {"q": state.q, "probe_pose": state.probe_pose}


def misbehave(channel: Channel, case: str, arrays: dict, state: RobotState) -> None:
    """A robot PC that answers start properly, then breaks the protocol as `case` says."""
    channel.handshake()
    channel.receive(("start",))
    channel.send("session", arrays=arrays)
    channel.send("state", *state_message(state, 1))
    channel.receive(("target",))
    if case == "malformed json":
        channel.sock.sendall(LENGTH.pack(9) + b"{not json")
    elif case == "oversized":
        channel.sock.sendall(
            frame(
                {"type": "state", "seq": 3, "fields": {}, "arrays": [{"name": "q", "dtype": "<f8", "shape": [1 << 40]}]}
            )
        )
    elif case == "slow":  # a byte every 0.2 s until just before the runtime's 1 s deadline: the frame never completes
        for byte in frame({"type": "state", "seq": 3, "fields": {}, "arrays": []})[:4]:
            time.sleep(0.2)
            channel.sock.send(bytes([byte]))
    elif case == "duplicated":
        channel.sent -= 1
        channel.send("state", *state_message(state, 1))
    elif case == "stale ack":
        channel.send("state", *state_message(state, 1))
    else:
        channel.send("state", *state_message(state, 2, **{"force": {"force_n": -1e9}, "done": {"done": "no"}}[case]))


@pytest.mark.parametrize(
    "case, match",
    [
        ("malformed json", "UTF-8 JSON"),
        ("oversized", "at most"),
        ("slow", "within 1.0 s"),
        ("duplicated", "expected seq 3, got 2"),
        ("stale ack", "expected ack 2"),
        ("force", "force_n"),
        ("done", "field 'done': expected a JSON bool"),
    ],
)
def test_runtime_stops_the_robot_on_any_bridge_failure(exported, episode_start, case, match):
    runtime = Runtime(exported, "onnx")
    robot = NetworkRobot("127.0.0.1", 0, timeout_s=1.0, connect_timeout_s=5.0, secret=SECRET)
    got: dict = {}

    def peer() -> None:
        with socket.create_connection(("127.0.0.1", robot.port)) as sock:
            channel = Channel(sock, "robot_pc", 3.0, SECRET)
            misbehave(channel, case, *episode_start)
            while True:  # what the runtime commands after the failure (a frame cut short is garbage to it)
                kind, fields, _ = channel.receive(("stop", "target", "close"))
                if kind == "stop":
                    got.update(fields)
                    return

    thread = threading.Thread(target=peer)
    thread.start()
    began = time.monotonic()
    try:
        log = runtime.run_episode(robot)
    finally:
        robot.close()
        thread.join(timeout=10)
    assert log.status.startswith("stopped: ") and match in log.status, log.status
    assert got["reason"] == log.status and time.monotonic() - began < 5
    assert "failed earlier" in runtime.run_episode(robot).status  # a failed stream is never resumed


def test_network_robot_refuses_unauthenticated_or_unlisted_peers():
    for kwargs in ({}, {"secret": SECRET}, {"allow": ("10.0.0.2",)}):
        with pytest.raises(InputError, match="not a loopback address"):
            NetworkRobot("10.0.0.1", 0, **kwargs)  # refused before anything is bound
    with pytest.raises(InputError, match="expected an IP address"):
        NetworkRobot("robot.local", 0)
    robot = NetworkRobot("127.0.0.1", 0, connect_timeout_s=0.5, allow=("127.0.0.2",))
    with socket.create_connection(("127.0.0.1", robot.port)) as sock:
        with pytest.raises(ConnectionError, match="no robot connected"):
            robot.accept()
        assert sock.recv(1) == b""  # closed, nothing read or sent
    robot.close()


# --- the robot PC's own limits --------------------------------------------------------------------


def drive(exported: Path, move) -> tuple[dict, SimRobot, tuple, np.ndarray]:
    """serve_robot with the simulator, driven by a scripted runtime that sends move(pose) as its
    first target; returns what serve_robot reported, the robot, its answer and the start pose."""
    spec = read_spec(exported)
    robot = sim_robot(exported)
    server = socket.create_server(("127.0.0.1", 0))
    out: dict = {}
    pc = threading.Thread(
        target=lambda: out.update(
            serve_robot(
                robot,
                "127.0.0.1",
                server.getsockname()[1],
                SafetyLimits.from_dict(spec["safety"]),
                spec["control"]["dt_s"],
                timeout_s=2.0,
                secret=SECRET,
            )
        )
    )
    pc.start()
    conn, _ = server.accept()
    runtime = Channel(conn, "runtime", 2.0, SECRET)
    runtime.handshake()
    runtime.send("start")
    runtime.receive(("session",))
    _, _, arrays = runtime.receive(("state",))
    runtime.send("target", arrays={"pose": move(arrays["probe_pose"].astype(np.float32))})
    reply = runtime.receive(("stop", "state"))
    conn.close()
    pc.join(timeout=10)
    server.close()
    return out, robot, reply, arrays["probe_pose"]


def test_robot_pc_refuses_a_target_into_the_patient(exported):
    def into_patient(pose: np.ndarray) -> np.ndarray:
        return pose + np.array([0, 0.5, 0, 0, 0, 0, 0], np.float32)  # +y: anterior, into the prone patient's back

    out, robot, reply, start = drive(exported, into_patient)
    assert reply[0] == "stop" and "outside the workspace box" in reply[1]["reason"]
    assert out == {"targets": 0, "status": f"stopped: {reply[1]['reason']}"} and robot.done
    assert float(robot.env.force[0]) < 25.0 and np.array_equal(robot.env.poses[0].numpy(), start)  # it never moved

    out, robot, _, _ = drive(
        exported, lambda pose: pose + np.array([0, 0.012, 0, 0, 0, 0, 0], np.float32)
    )  # 12 mm deeper
    assert (
        "below the skin (at most 10 mm)" in out["status"] and out["targets"] == 0 and float(robot.env.force[0]) < 25.0
    )

    out, robot, reply, _ = drive(
        exported, lambda pose: pose + np.array([0.004, 0, 0, 0, 0, 0, 0], np.float32)
    )  # a fine step
    assert reply[0] == "state" and out["targets"] == 1 and "closed the connection" in out["status"] and robot.done


def test_authenticated_bridge_on_loopback_runs_an_episode(exported):
    runtime = Runtime(exported, "torchscript")
    robot = NetworkRobot("127.0.0.1", 0, timeout_s=5.0, secret=SECRET, allow=("127.0.0.1",))
    limits = SafetyLimits.from_dict(runtime.spec["safety"])
    served: dict = {}
    pc = threading.Thread(
        target=lambda: served.update(
            serve_robot(sim_robot(exported), "127.0.0.1", robot.port, limits, runtime.dt, 5.0, SECRET)
        )
    )
    pc.start()
    try:
        log = runtime.run_episode(robot, max_steps=4)
    finally:
        robot.close()
        pc.join(timeout=30)
    assert log.status in ("max_steps", "done") and served == {"targets": len(log), "status": "closed"}


def test_deploy_settings_are_checked():
    from scripts.deploy import check_settings, read_secret

    for override, match in [
        ("deploy.port=70000", "deploy.port"),
        ("deploy.episodes=0", "deploy.episodes"),
        ("deploy.episodes=1.5", "deploy.episodes"),
        ("deploy.engine=tflite", "deploy.engine"),
        ("deploy.realtime=maybe", "deploy.realtime"),
        ("deploy.host=robot.local", "IP address"),
        ("deploy.timeout_s=nan", "deploy.timeout_s"),
        ("deploy.role=both", "deploy.role"),
    ]:
        with pytest.raises(InputError, match=match):
            check_settings(compose_config([override]).deploy)
    with pytest.raises(InputError, match="at least 16 bytes"):
        read_secret(compose_config(["deploy.secret=short"]).deploy)
    with pytest.raises(InputError, match="deploy.port"):
        check_settings(compose_config(["deploy.role=robot_pc", "deploy.port=0"]).deploy)
