"""The storage root: a local folder or s3://bucket/prefix, through fsspec (s3fs/boto3 underneath).

Stages address files by parts relative to the root and write through `write_bytes`, which is atomic on
both kinds (a temporary name then a rename locally; S3 objects appear whole by nature), so a killed stage
never leaves a half-written file behind. Credentials come from boto3's usual chain and are never logged.

A write the filesystem refuses (read-only, permission denied, disk full) is a `PeaError` naming the file and
the OS's reason, with its temporary file removed: `write_files` and `write_error` do the same for the files
pea writes outside the root (adapters, checkpoints, `pea generate --out`).
"""

import errno
import json
import os
import posixpath
import shutil
import uuid
from contextlib import suppress

import fsspec

from pea.errors import PeaError

ELSEWHERE = "set storage_root / PEA_STORAGE_ROOT to another place"
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_REFUSED = (errno.EROFS, errno.EACCES, errno.EPERM)


def write_error(path: str, e: OSError, elsewhere: str, action: str = "write") -> PeaError:
    """The one line for an OSError met writing `path`: the path, the OS's reason and the fix that reason calls
    for, or `elsewhere` (a sentence saying how to write to another place)."""
    reason = e.strerror or str(e)
    folder = posixpath.dirname(path.rstrip("/")) or path
    if e.errno in _FULL:
        fix = f"free space on the disk holding {folder}, or {elsewhere}"
    elif e.errno in _REFUSED:
        fix = f"make {folder} writable, or {elsewhere}"
    else:
        fix = elsewhere
    return PeaError(f"cannot {action} {path}: {reason[:1].lower()}{reason[1:]}", fix)


def write_files(files: dict[str, bytes], elsewhere: str) -> None:
    """Write local files atomically: each under a temporary name beside it, then all renamed into place, so that
    readers find the old set or the new one, never half a file (and rarely a mix: the renames come last). On any
    failure the temporary files are removed; an OSError becomes `write_error`'s PeaError."""
    tmps = {}
    try:
        for path, data in files.items():
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            tmps[path] = _tmp_name(path)
            with open(tmps[path], "wb") as f:
                f.write(data)
        for path, tmp in tmps.items():
            os.replace(tmp, path)
    except OSError as e:
        raise write_error(path, e, elsewhere) from e
    finally:
        _discard(*tmps.values())


def _tmp_name(path: str) -> str:
    """A hidden name beside `path`, unique so that two writers never share one."""
    return posixpath.join(posixpath.dirname(path), f".{posixpath.basename(path)}.{uuid.uuid4().hex}.tmp")


def _discard(*paths: str) -> None:
    """Remove what is left of temporary files; never hides the error that left them."""
    for path in paths:
        with suppress(OSError):
            os.remove(path)


class Storage:
    def __init__(self, root: str, endpoint_url: str | None = None):
        # other processes write beside this one (Ray Data's workers, another run): a cached listing would hide
        # their files, so every glob and exists asks S3 itself
        options = {"use_listings_cache": False} if root.startswith("s3://") else {}
        if root.startswith("s3://") and endpoint_url:
            options["client_kwargs"] = {"endpoint_url": endpoint_url}
            # img2dataset and webdataset open s3:// URIs themselves, without our options: give fsspec the
            # endpoint as its default for s3 so that they reach the same server
            fsspec.config.conf.setdefault("s3", {}).setdefault("client_kwargs", {})["endpoint_url"] = endpoint_url
        self.fs, self.base = fsspec.core.url_to_fs(root, **options)
        self.protocol = "s3" if root.startswith("s3://") else "file"
        self.root = root.rstrip("/")
        self.endpoint_url = endpoint_url

    def __reduce__(self):
        """Pickled as what made it (Ray Data's workers open their own filesystem), never as the fs object."""
        return Storage, (self.root, self.endpoint_url)

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

    def listing(self, *parts: str) -> set[str]:
        """Every file under a folder, at any depth, by its path relative to that folder (empty when there is no
        such folder). On S3 this is one paginated ListObjectsV2 however many files there are, where an `exists`
        per file is a HEAD request each and a glob lists each subfolder: a stage resuming 250 k units of work
        finds the finished ones with a few hundred requests instead of 250 k."""
        folder = self.path(*parts).rstrip("/")
        return {p.removeprefix(folder + "/") for p in self.fs.find(folder)}

    def makedirs(self, *parts: str) -> None:
        if not self.is_local:
            return
        try:
            self.fs.makedirs(self.path(*parts), exist_ok=True)
        except OSError as e:
            raise write_error(self.uri(*parts), e, ELSEWHERE, action="create folder") from e

    def open(self, *parts: str, mode: str = "rb"):
        return self.fs.open(self.path(*parts), mode)

    def read_bytes(self, *parts: str) -> bytes:
        try:
            return self.fs.cat_file(self.path(*parts))
        except FileNotFoundError as e:
            raise PeaError(f"{self.uri(*parts)} does not exist", "run the stage that writes it first") from e

    def write_bytes(self, data: bytes, *parts: str) -> None:
        if self.is_local:
            write_files({self.path(*parts): data}, ELSEWHERE)
            return
        try:
            self.fs.pipe_file(self.path(*parts), data)
        except OSError as e:
            raise write_error(self.uri(*parts), e, ELSEWHERE) from e

    def put_file(self, local_path: str, *parts: str) -> None:
        """Upload (or, locally, move into place) a finished file."""
        target = self.path(*parts)
        try:
            if self.is_local:
                self._move_into_place(local_path, target)
            else:
                self.fs.put_file(local_path, target)
        except OSError as e:
            raise write_error(self.uri(*parts), e, ELSEWHERE) from e

    def _move_into_place(self, local_path: str, target: str) -> None:
        """A move across disks is a copy: made under a temporary name, so a full disk leaves no half of it."""
        self.fs.makedirs(posixpath.dirname(target), exist_ok=True)
        tmp = _tmp_name(target)
        try:
            shutil.move(local_path, tmp)
            os.replace(tmp, target)
        finally:
            _discard(tmp)

    def read_json(self, *parts: str):
        return json.loads(self.read_bytes(*parts))

    def write_json(self, obj, *parts: str) -> None:
        self.write_bytes(json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True).encode(), *parts)

    def remove(self, *parts: str) -> None:
        if self.exists(*parts):
            self.fs.rm(self.path(*parts), recursive=True)
