"""The robot bridge's wire format: bounded, deadline-limited, sequenced and optionally authenticated frames.

A frame is a 4-byte big-endian header length, a JSON header
{"type", "seq", "fields": {...}, "arrays": [{"name", "dtype", "shape"}]}, the arrays' raw
little-endian bytes in that order and, on an authenticated channel, a 32-byte HMAC-SHA256 tag.
Every bound is checked before anything is allocated: the header is at most MAX_HEADER_BYTES,
a frame has at most MAX_ARRAYS arrays of at most MAX_DIMS dimensions with dtypes in DTYPES, and
their announced sizes add up to at most MAX_PAYLOAD_BYTES. A whole frame must arrive within the
channel's deadline (not each recv), and each side's `seq` counts up by exactly one from 0.

Each connection starts with a "hello" each way (never tagged): {version, auth ("none" or
"hmac-sha256"), nonce (32 hex digits)}. With a shared secret every later frame's tag is
HMAC-SHA256(secret, CONTEXT | sender | runtime nonce | robot PC nonce | frame bytes), so a frame
cannot be forged, replayed from another connection or reflected back to its sender.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import secrets
import socket
import struct
import time

import numpy as np

from sim.errors import require

VERSION = "sonolab-bridge/1"
CONTEXT = VERSION.encode()
LENGTH = struct.Struct(">I")
TAG_BYTES = 32
MAX_HEADER_BYTES = 64 * 1024
MAX_PAYLOAD_BYTES = 64 * 1024 * 1024
MAX_ARRAYS = 16
MAX_DIMS = 4
MAX_NAME_CHARS = 64
DTYPES = ("<f4", "<f8", "<i4", "<i8", "|u1", "<u2")  # little-endian numbers only: no objects, strings or big-endian
MIN_SECRET_BYTES = 16
ROLES = ("runtime", "robot_pc")


class ProtocolError(ConnectionError):
    """The bridge's peer broke the protocol: a malformed, oversized, late, out-of-sequence or
    unauthenticated frame, a message of the wrong type or content, or a closed connection."""


def check_secret(secret: bytes | None) -> bytes | None:
    """The shared secret, checked (None: no authentication); raise `InputError` unless it is at least
    MIN_SECRET_BYTES bytes."""
    if secret is not None:
        got = f"{len(secret)} bytes" if isinstance(secret, bytes) else type(secret).__name__
        require(
            isinstance(secret, bytes) and len(secret) >= MIN_SECRET_BYTES,
            "bridge secret (deploy.secret)",
            f"at least {MIN_SECRET_BYTES} bytes",
            got,
        )
    return secret


def encode_arrays(arrays: dict[str, np.ndarray]) -> tuple[list[dict], bytes]:
    """(array specs for the header, payload bytes): each array little-endian, C order."""
    specs, chunks = [], []
    for name, value in arrays.items():
        value = np.asarray(value)
        value = np.asarray(value, dtype=value.dtype.newbyteorder("<"))  # tobytes writes C order
        specs.append({"name": name, "dtype": value.dtype.str, "shape": list(value.shape)})
        chunks.append(value.tobytes())
    return specs, b"".join(chunks)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_header(raw: bytes) -> tuple[dict, list[tuple[str, np.dtype, tuple[int, ...], int]]]:
    """The checked header of a frame and its arrays as (name, dtype, shape, bytes); raise
    `ProtocolError` for anything malformed or beyond the bounds, before any payload is read."""
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ProtocolError(f"frame header: expected UTF-8 JSON, got {raw[:80]!r} ({err})") from None
    if not isinstance(header, dict) or set(header) != {"type", "seq", "fields", "arrays"}:
        got = sorted(header) if isinstance(header, dict) else type(header).__name__
        raise ProtocolError(
            f"frame header: expected an object with keys ['arrays', 'fields', 'seq', 'type'], got {got}"
        )
    kind, seq, fields, arrays = header["type"], header["seq"], header["fields"], header["arrays"]
    if not (
        isinstance(kind, str) and _is_int(seq) and seq >= 0 and isinstance(fields, dict) and isinstance(arrays, list)
    ):
        raise ProtocolError(
            "frame header: expected type a string, seq an int >= 0, "
            f"fields an object, arrays a list; got {header!r:.200}"
        )
    if len(arrays) > MAX_ARRAYS:
        raise ProtocolError(f"frame header: expected at most {MAX_ARRAYS} arrays, got {len(arrays)}")
    specs, names, total = [], set(), 0
    for spec in arrays:
        if not (isinstance(spec, dict) and set(spec) == {"name", "dtype", "shape"}):
            raise ProtocolError(f"frame array: expected {{name, dtype, shape}}, got {spec!r:.200}")
        name, dtype, shape = spec["name"], spec["dtype"], spec["shape"]
        if not (isinstance(name, str) and 0 < len(name) <= MAX_NAME_CHARS and name not in names):
            raise ProtocolError(
                f"frame array name: expected a new string of 1-{MAX_NAME_CHARS} characters, got {name!r:.80}"
            )
        if dtype not in DTYPES:
            raise ProtocolError(f"frame array {name!r} dtype: expected one of {list(DTYPES)}, got {dtype!r:.80}")
        if not (isinstance(shape, list) and len(shape) <= MAX_DIMS and all(_is_int(n) and n >= 0 for n in shape)):
            raise ProtocolError(
                f"frame array {name!r} shape: expected at most {MAX_DIMS} ints >= 0, got {shape!r:.200}"
            )
        size = math.prod(shape) * np.dtype(dtype).itemsize  # Python ints: no overflow for huge announcements
        total += size
        if total > MAX_PAYLOAD_BYTES:
            raise ProtocolError(
                f"frame payload: expected at most {MAX_PAYLOAD_BYTES} bytes, "
                f"got arrays announcing {total} bytes or more"
            )
        names.add(name)
        specs.append((name, np.dtype(dtype), tuple(shape), size))
    return header, specs


class Channel:
    """One side (`role`, one of ROLES) of a bridge connection over `sock`: sends and receives
    frames with sequence numbers, each frame received within timeout_s, tagged with `secret`."""

    def __init__(self, sock: socket.socket, role: str, timeout_s: float, secret: bytes | None = None) -> None:
        self.sock, self.role, self.timeout_s, self.secret = sock, role, timeout_s, check_secret(secret)
        self.peer = ROLES[1 - ROLES.index(role)]
        self.sent = 0  # seq of the next frame sent
        self.received = 0  # seq expected of the next frame received
        self.nonces = {r: b"" for r in ROLES}

    @property
    def last_sent(self) -> int:
        """The seq of the last frame sent."""
        return self.sent - 1

    def _tag(self, sender: str, frame: bytes) -> bytes:
        message = b"|".join([CONTEXT, sender.encode(), self.nonces["runtime"], self.nonces["robot_pc"], frame])
        return hmac.new(self.secret, message, hashlib.sha256).digest()

    def send(self, kind: str, fields: dict | None = None, arrays: dict[str, np.ndarray] | None = None) -> int:
        """Send one message; returns its seq."""
        specs, payload = encode_arrays(arrays or {})
        header = json.dumps({"type": kind, "seq": self.sent, "fields": fields or {}, "arrays": specs}).encode()
        frame = LENGTH.pack(len(header)) + header + payload
        if self.secret is not None and kind != "hello":
            frame += self._tag(self.role, frame)
        self.sock.sendall(frame)
        self.sent += 1
        return self.sent - 1

    def _read(self, n: int, deadline: float) -> bytes:
        """Exactly n bytes, all before `deadline` (time.monotonic)."""
        chunks, left = [], n
        while left:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ProtocolError(f"no complete message from the {self.peer} within {self.timeout_s} s")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(min(left, 1 << 20))
            except TimeoutError:
                raise ProtocolError(f"no complete message from the {self.peer} within {self.timeout_s} s") from None
            except OSError as err:
                raise ProtocolError(f"the connection to the {self.peer} failed: {err}") from None
            if not chunk:
                raise ProtocolError(f"the {self.peer} closed the connection")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def receive(self, expect: tuple[str, ...]) -> tuple[str, dict, dict[str, np.ndarray]]:
        """(type, fields, arrays) of the next frame, whose type must be in `expect`; raise
        `ProtocolError` for anything else. The frame's structure is checked here; its content
        by the caller (`require_fields`, `policies.deploy.robot`)."""
        deadline = time.monotonic() + self.timeout_s
        prefix = self._read(LENGTH.size, deadline)
        (size,) = LENGTH.unpack(prefix)
        if size > MAX_HEADER_BYTES:
            raise ProtocolError(
                f"frame header: expected at most {MAX_HEADER_BYTES} bytes, got an announced {size} bytes"
            )
        raw = self._read(size, deadline)
        header, specs = parse_header(raw)
        payload = self._read(sum(s[3] for s in specs), deadline)
        kind = header["type"]
        if self.secret is not None and kind != "hello":
            tag = self._read(TAG_BYTES, deadline)
            if not hmac.compare_digest(tag, self._tag(self.peer, prefix + raw + payload)):
                raise ProtocolError(
                    f"frame seq {header['seq']} from the {self.peer}: "
                    "authentication failed (wrong secret or altered frame)"
                )
        if header["seq"] != self.received:
            raise ProtocolError(
                f"frame from the {self.peer}: expected seq {self.received}, "
                f"got {header['seq']} (a duplicated or lost message)"
            )
        self.received += 1
        if kind not in expect:
            raise ProtocolError(f"message from the {self.peer}: expected one of {list(expect)}, got {kind!r:.80}")
        arrays, offset = {}, 0
        for name, dtype, shape, nbytes in specs:
            arrays[name] = np.frombuffer(payload, dtype, count=math.prod(shape), offset=offset).reshape(shape)
            offset += nbytes
        return kind, header["fields"], arrays

    def handshake(self) -> None:
        """Exchange hellos: protocol version, authentication mode and this connection's nonces.
        The runtime speaks first."""
        nonce = secrets.token_hex(16)
        mine = {"version": VERSION, "auth": "none" if self.secret is None else "hmac-sha256", "nonce": nonce}
        if self.role == "runtime":
            self.send("hello", mine)
        _, fields, arrays = self.receive(("hello",))
        require_fields("hello", fields, arrays, {"version": str, "auth": str, "nonce": str})
        if fields["version"] != VERSION or fields["auth"] != mine["auth"]:
            raise ProtocolError(
                f"hello from the {self.peer}: expected version {VERSION!r} with auth {mine['auth']!r} (deploy.secret "
                "must be set on both sides or neither), "
                f"got {fields['version']!r:.80} with auth {fields['auth']!r:.80}"
            )
        if len(fields["nonce"]) != 32 or any(c not in "0123456789abcdef" for c in fields["nonce"]):
            raise ProtocolError(
                f"hello from the {self.peer}: expected a nonce of 32 hex digits, got {fields['nonce']!r:.80}"
            )
        if self.role == "robot_pc":
            self.send("hello", mine)
        self.nonces[self.role], self.nonces[self.peer] = nonce.encode(), fields["nonce"].encode()


def require_fields(
    kind: str, fields: dict, arrays: dict, expected: dict[str, type], array_names: tuple[str, ...] = ()
) -> None:
    """Raise `ProtocolError` unless message `kind` has exactly the `expected` fields, each of
    its type (JSON: bool is not a number, float accepts ints), and exactly `array_names`."""
    if set(fields) != set(expected):
        raise ProtocolError(f"{kind} message fields: expected {sorted(expected)}, got {sorted(fields)}")
    for name, kind_of in expected.items():
        value = fields[name]
        ok = (
            isinstance(value, (int, float)) and not isinstance(value, bool)
            if kind_of is float
            else type(value) is kind_of
        )
        if not ok:
            raise ProtocolError(f"{kind} message field {name!r}: expected a JSON {kind_of.__name__}, got {value!r:.80}")
    if set(arrays) != set(array_names):
        raise ProtocolError(f"{kind} message arrays: expected {sorted(array_names)}, got {sorted(arrays)}")
