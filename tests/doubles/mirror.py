"""A local artifact mirror for the boot tier: release-shaped tarballs of the test doubles,
served over HTTP on 127.0.0.1 (a QEMU guest with user networking reaches it as 10.0.2.2).

    with Mirror(release_files(ollama="0.12.6", qdrant="1.15.3")) as mirror:
        mirror.guest_url          # http://10.0.2.2:<port>, for the blueprint's `mirror:`
        mirror.sha256(name)       # for shared.ollama.sha256 / shared.qdrant.sha256
        mirror.requests           # the paths fetched so far

The tarballs are byte-for-byte reproducible (fixed mtimes, owners and order), so their
checksums, and everything rendered from them, are stable across runs.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

from owuibuild.artifacts import ollama_filename, qdrant_filename

HERE = Path(__file__).resolve().parent
OLLAMA_DOUBLE = HERE / "ollama_double.py"
QDRANT_DOUBLE = HERE / "qdrant_double.py"
GUEST_HOST = "10.0.2.2"  # the host as QEMU user networking shows it to the guest
MTIME = 946684800  # 2000-01-01, as the seed ISO uses


def _tar_gz(entries: Mapping[str, tuple[bytes | None, int]]) -> bytes:
    """A reproducible .tar.gz: path -> (content, mode); content None makes a directory."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in sorted(entries):
            content, mode = entries[name]
            info = tarfile.TarInfo(name)
            info.mtime, info.mode, info.uid, info.gid = MTIME, mode, 0, 0
            info.uname = info.gname = "root"
            if content is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=MTIME, filename="") as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def ollama_tarball() -> bytes:
    """Shaped like ollama-linux-amd64.tgz: bin/ollama and lib/ollama/."""
    return _tar_gz(
        {
            "bin": (None, 0o755),
            "bin/ollama": (OLLAMA_DOUBLE.read_bytes(), 0o755),
            "lib": (None, 0o755),
            "lib/ollama": (None, 0o755),
        }
    )


def qdrant_tarball() -> bytes:
    """Shaped like qdrant-x86_64-unknown-linux-musl.tar.gz: one file, qdrant."""
    return _tar_gz({"qdrant": (QDRANT_DOUBLE.read_bytes(), 0o755)})


def release_files(ollama: str, qdrant: str) -> dict[str, bytes]:
    """The mirror's files, under the names owuibuild fetches for these versions."""
    return {ollama_filename(ollama): ollama_tarball(), qdrant_filename(qdrant): qdrant_tarball()}


class Mirror:
    """Serve ``files`` (name -> bytes) on 127.0.0.1 until closed."""

    def __init__(self, files: Mapping[str, bytes]) -> None:
        self.files = dict(files)
        self.requests: list[str] = []
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                name = self.path.lstrip("/")
                mirror.requests.append(self.path)
                data = mirror.files.get(name)
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, fmt: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port: int = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def guest_url(self) -> str:
        return f"http://{GUEST_HOST}:{self.port}"

    def sha256(self, name: str) -> str:
        return hashlib.sha256(self.files[name]).hexdigest()

    def __enter__(self) -> Mirror:
        self.thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.server.shutdown()
        self.server.server_close()
