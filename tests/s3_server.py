"""An S3-compatible server on 127.0.0.1 for the object-storage tests (moto's threaded server, the `s3` extra).

`S3Server.start()` serves on a free port; `options()` are the storage options a user would pass
(`--storage-option key=... secret=... endpoint_url=...`); `filesystem()` is an s3fs client with them.
The credentials are ordinary-looking values the tests then search for in everything written.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

ACCESS_KEY = "AKIAMPTTESTKEY000001"
SECRET_KEY = "mpt-secret-7f3c9a1e5b2d4f6a8c0e"  # searched for in run folders and stores: must never be written


@dataclass
class S3Server:
    """A running moto S3 server; stop() ends it."""

    endpoint: str = ""
    _server: object = field(default=None, repr=False)

    @classmethod
    def start(cls) -> "S3Server":
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        return cls(f"http://{host}:{port}", server)

    def stop(self) -> None:
        self._server.stop()

    def options(self, **extra) -> dict:
        return {"key": ACCESS_KEY, "secret": SECRET_KEY, "endpoint_url": self.endpoint, **extra}

    def cli_options(self) -> list[str]:
        """The same options as `--storage-option` arguments."""
        return [a for k, v in self.options().items() for a in ("--storage-option", f"{k}={v}")]

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(**self.options())

    def new_bucket(self) -> str:
        """A fresh, empty bucket's name."""
        name = f"mpt-{uuid.uuid4().hex[:12]}"
        self.filesystem().mkdir(name)
        return name
