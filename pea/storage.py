"""The storage root: a local folder or s3://bucket/prefix, through fsspec (s3fs/boto3 underneath).

Stages address files by parts relative to the root and write through `write_bytes`, which is atomic on
both kinds (a temporary name then a rename locally; S3 objects appear whole by nature), so a killed stage
never leaves a half-written file behind. Credentials come from boto3's usual chain and are never logged.
"""

import json
import posixpath
import uuid

import fsspec

from pea.errors import PeaError


class Storage:
    def __init__(self, root: str, endpoint_url: str | None = None):
        options = {}
        if root.startswith("s3://") and endpoint_url:
            options["client_kwargs"] = {"endpoint_url": endpoint_url}
            # img2dataset and webdataset open s3:// URIs themselves, without our options: give fsspec the
            # endpoint as its default for s3 so that they reach the same server
            fsspec.config.conf.setdefault("s3", {}).setdefault("client_kwargs", {})["endpoint_url"] = endpoint_url
        self.fs, self.base = fsspec.core.url_to_fs(root, **options)
        self.protocol = "s3" if root.startswith("s3://") else "file"
        self.root = root.rstrip("/")

    def __repr__(self) -> str:
        return f"Storage({self.root!r})"

    @property
    def is_local(self) -> bool:
        return self.protocol == "file"

    def path(self, *parts: str) -> str:
        """Path inside the filesystem (no protocol)."""
        return posixpath.join(self.base, *parts)

    def uri(self, *parts: str) -> str:
        """Full URI (with s3:// where needed), for libraries that open it themselves."""
        return self.path(*parts) if self.is_local else f"s3://{self.path(*parts)}"

    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.path(*parts))

    def glob(self, *parts: str) -> list[str]:
        """Matching paths, sorted, relative to the root."""
        prefix = self.base.rstrip("/") + "/"
        return sorted(p.removeprefix(prefix) for p in self.fs.glob(self.path(*parts)))

    def makedirs(self, *parts: str) -> None:
        if self.is_local:
            self.fs.makedirs(self.path(*parts), exist_ok=True)

    def open(self, *parts: str, mode: str = "rb"):
        return self.fs.open(self.path(*parts), mode)

    def read_bytes(self, *parts: str) -> bytes:
        try:
            return self.fs.cat_file(self.path(*parts))
        except FileNotFoundError as e:
            raise PeaError(f"{self.uri(*parts)} does not exist", "run the stage that writes it first") from e

    def write_bytes(self, data: bytes, *parts: str) -> None:
        target = self.path(*parts)
        if not self.is_local:
            self.fs.pipe_file(target, data)
            return
        self.fs.makedirs(posixpath.dirname(target), exist_ok=True)
        tmp = posixpath.join(posixpath.dirname(target), f".{posixpath.basename(target)}.{uuid.uuid4().hex}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        self.fs.mv(tmp, target)

    def put_file(self, local_path: str, *parts: str) -> None:
        """Upload (or, locally, move into place) a finished file."""
        target = self.path(*parts)
        if self.is_local:
            self.fs.makedirs(posixpath.dirname(target), exist_ok=True)
            self.fs.mv(local_path, target)
        else:
            self.fs.put_file(local_path, target)

    def read_json(self, *parts: str):
        return json.loads(self.read_bytes(*parts))

    def write_json(self, obj, *parts: str) -> None:
        self.write_bytes(json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True).encode(), *parts)

    def remove(self, *parts: str) -> None:
        if self.exists(*parts):
            self.fs.rm(self.path(*parts), recursive=True)
