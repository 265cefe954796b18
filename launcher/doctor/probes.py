"""What the checks look at on this machine, without starting a process: addresses, ports, /dev/shm, files."""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import re
import socket
import struct
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from launcher.doctor.checks import Reach
from launcher.preflight import nearest_existing

SHM = "/dev/shm"
# ioctl(2) request for an interface's IPv4 address (linux/sockios.h); the stdlib has no call for it.
_SIOCGIFADDR = 0x8915
_DEVICE_FILE = re.compile(r"^nvidia\d+$")
# A connect to the rendezvous host gets an answer well within this on any network that trains.
CONNECT_TIMEOUT_S = 3.0
PROBE_BYTES = 4096


def resolve(host: str) -> tuple[tuple[str, ...], str | None]:
    """The host's addresses (deduplicated, in resolver order), or () and why not."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as err:
        return (), str(err)
    return tuple(dict.fromkeys(str(info[4][0]) for info in infos)), None


def ipv4_interfaces() -> dict[str, str]:
    """This machine's non-loopback interfaces that have an IPv4 address: name to address."""
    found: dict[str, str] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            try:
                answer = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:  # no IPv4 address on it
                continue
            address = socket.inet_ntoa(answer[20:24])
            if not ipaddress.ip_address(address).is_loopback:
                found[name] = address
    return found


def is_local(addresses: tuple[str, ...]) -> bool:
    """Whether one of the addresses is this machine's: loopback, an interface's, or its own name's."""
    own = set(ipv4_interfaces().values())
    with contextlib.suppress(socket.gaierror):
        own |= {str(info[4][0]) for info in socket.getaddrinfo(socket.gethostname(), None)}
    return any(ipaddress.ip_address(a.split("%")[0]).is_loopback or a in own for a in addresses)


def reach(address: str, port: int, timeout_s: float = CONNECT_TIMEOUT_S) -> Reach:
    """How a TCP connect to ``address:port`` ends: accepted, refused (a host answered), or silence."""
    try:
        with socket.create_connection((address, port), timeout=timeout_s):
            return "accepted"
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timeout"
    except OSError:
        return "unreachable"


def bind_error(port: int) -> str | None:
    """Why the rendezvous store could not listen on ``port`` here, or None when it could.

    The store listens on every address, so this binds the wildcard; SO_REUSEADDR as the store sets
    it, so a port left in TIME_WAIT by the last run counts as free, a listening socket as in use.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError as err:
            return err.strerror or str(err)
    return None


def free_bytes(path: str) -> int | None:
    """Bytes an unprivileged writer may still use on the filesystem holding ``path``; None when it is not there."""
    try:
        stat = os.statvfs(path)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def visible_gpus(environ: Mapping[str, str], dev: str = "/dev") -> tuple[int, str]:
    """GPUs the workers will see, and from what: CUDA_VISIBLE_DEVICES when set, else NVIDIA's device files."""
    value = environ.get("CUDA_VISIBLE_DEVICES")
    if value is not None:
        entries = [e for e in value.split(",") if e.strip()]
        # CUDA stops at the first invalid entry; "-1" and Slurm's "NoDevFiles" hide every GPU.
        count = 0 if entries and entries[0].strip() in ("-1", "NoDevFiles") else len(entries)
        return count, f"CUDA_VISIBLE_DEVICES={value}"
    try:
        count = sum(1 for name in os.listdir(dev) if _DEVICE_FILE.match(name))
    except OSError:
        count = 0
    return count, f"{dev}/nvidia*"


def is_url(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


@dataclass(frozen=True)
class LocationProbe:
    """What a write, read and delete of a small file at a checkpoint location found."""

    location: str
    free: int | None
    error: str | None


def probe_location(location: str) -> LocationProbe:
    """Write, read back and delete a small file at ``location`` (a folder or an fsspec URL); nothing is left."""
    name = f".gangrun-doctor-{uuid.uuid4().hex[:12]}"
    payload = os.urandom(PROBE_BYTES)
    if is_url(location):
        return _probe_url(location, name, payload)
    folder = nearest_existing(Path(location.removeprefix("file://")).expanduser())
    probe = folder / name
    try:
        with probe.open("wb") as out:
            out.write(payload)
            out.flush()
            os.fsync(out.fileno())
        if probe.read_bytes() != payload:
            return LocationProbe(location, free_bytes(str(folder)), f"{probe} read back different bytes")
    except OSError as err:
        return LocationProbe(location, free_bytes(str(folder)), f"{err.strerror or err} in {folder}")
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return LocationProbe(location, free_bytes(str(folder)), None)


def _probe_url(location: str, name: str, payload: bytes) -> LocationProbe:
    import fsspec  # only for URLs: a plain folder needs no fsspec import

    url = f"{location.rstrip('/')}/{name}"
    try:
        fs, path = fsspec.core.url_to_fs(url)
        fs.pipe_file(path, payload)
        try:
            if fs.cat_file(path) != payload:
                return LocationProbe(location, None, f"{url} read back different bytes")
        finally:
            fs.rm_file(path)
    except Exception as err:  # every fsspec backend raises its own kinds; the check names the one it got
        return LocationProbe(location, None, f"{type(err).__name__}: {err}".splitlines()[0])
    return LocationProbe(location, None, None)


def write_token(folder: str) -> tuple[Path, str] | None:
    """A token file in ``folder`` for every node to read back (None when it cannot be written)."""
    token = uuid.uuid4().hex
    path = nearest_existing(Path(folder).expanduser()) / f".gangrun-doctor-token-{token[:12]}"
    try:
        path.write_text(token)
    except OSError:  # the location check already says why it cannot be written
        return None
    return path, token
