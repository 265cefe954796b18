"""A real S3-compatible server on loopback (moto's server mode) for checkpoint tests, and its client env.

The `s3_server` fixture in tests/conftest.py starts it; tests using it carry the `s3` marker.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.system import unavailable

BIN = Path(sys.executable).parent

BUCKET = "gangrun-checkpoints"


@dataclass(frozen=True)
class S3Server:
    endpoint: str

    def env(self) -> dict[str, str]:
        """What a client (s3fs via botocore) needs to reach this server instead of AWS."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}

    def filesystem(self) -> Any:
        """An s3fs filesystem on this server (s3fs ships no types)."""
        import s3fs

        return s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=self.endpoint,
                                 client_kwargs={"region_name": "us-east-1"})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _program() -> str:
    program = shutil.which("moto_server", path=str(BIN))
    if program is None:
        unavailable("moto's server is missing: pip install -e '.[dev]' (moto[server], s3fs)", provisioning=False)
    return program


@contextmanager
def running_s3_server(folder: Path) -> Iterator[S3Server]:
    """moto_server on a free loopback port, with one empty bucket, its log in folder; stopped on exit."""
    port = _free_port()
    log = folder / "moto.log"
    with log.open("w") as out:
        proc = subprocess.Popen([_program(), "-H", "127.0.0.1", "-p", str(port)], stdout=out,
                                stderr=subprocess.STDOUT)
    server = S3Server(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{server.endpoint}/moto-api/", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start:\n{log.read_text()}") from None
                time.sleep(0.2)
        # A plain PUT: s3fs's mkdir sends us-east-1 as a location constraint, which S3 rejects.
        urllib.request.urlopen(urllib.request.Request(f"{server.endpoint}/{BUCKET}", method="PUT"), timeout=10).close()
        yield server
    finally:
        proc.terminate()
        proc.wait(30)
