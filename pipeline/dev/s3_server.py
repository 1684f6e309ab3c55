"""An embedded S3 server on loopback for the demo and the tests: moto's server mode (the same server the
s3fs test suite runs against). Real HTTP, real S3 API, no network beyond 127.0.0.1."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

# Fake credentials for a local fake server; real runs use the normal AWS credential chain.
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedS3:
    """`with EmbeddedS3(buckets=["b"]) as s3: s3.endpoint_url`. Sets fake credentials in os.environ (only
    where unset) so that this process and Ray workers it starts afterwards can sign requests."""

    def __init__(self, buckets: list[str] | tuple[str, ...] = (), port: int | None = None) -> None:
        self.buckets = list(buckets)
        self.port = port or free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._server: Any = None

    def start(self) -> "EmbeddedS3":
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        for k, v in FAKE_CREDENTIALS.items():
            os.environ.setdefault(k, v)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        if self.buckets:
            fs = self.filesystem()
            for b in self.buckets:
                try:
                    fs.mkdir(b)
                except FileExistsError:  # moto's backend is per process: another server made it
                    pass
        return self

    def filesystem(self) -> Any:
        import s3fs

        return s3fs.S3FileSystem(endpoint_url=self.endpoint_url, skip_instance_cache=True)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> "EmbeddedS3":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
