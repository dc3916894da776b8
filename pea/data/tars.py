"""Reading and writing webdataset tar shards safely.

Members are checked before use: an absolute path, a `..` component, a link or any member but a regular file
or a folder (skipped), and a member over MAX_MEMBER_BYTES are refused, since shards come from outside
(img2dataset output, users' existing shards). webdataset itself treats member names as keys and never checks them.
"""

import io
import posixpath
import tarfile
from collections.abc import Iterator

import webdataset as wds

from pea.errors import PeaError

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
# Larger members are refused before they are read, since a member is held whole in memory. A sample's members
# are an image (a web JPEG is well under 1 MB, a 64 MP photo's ~30 MB), a caption or one sample's cached
# features (a few MB), so 64 MiB only stops a forged or mistaken member (a video, a disk image).
MAX_MEMBER_BYTES = 64 * 2**20


def check_member(info: tarfile.TarInfo, source: str) -> None:
    name = info.name
    parts = name.split("/")
    if name.startswith("/") or posixpath.isabs(name) or ".." in parts or "\\" in name:
        raise PeaError(f"{source}: unsafe tar member path {name!r}", "rebuild the shard with plain relative member names")
    if not (info.isreg() or info.isdir()):
        raise PeaError(f"{source}: tar member {name!r} is not a regular file", "rebuild the shard without links or devices")
    if info.size > MAX_MEMBER_BYTES:
        raise PeaError(f"{source}: tar member {name!r} is {info.size / 2**20:.0f} MiB, over the "
                       f"{MAX_MEMBER_BYTES >> 20} MiB a sample's file may have", "rebuild the shard without it")


def iter_samples(fileobj, source: str) -> Iterator[dict]:
    """Samples of a webdataset tar stream: {'__key__': key, '<ext>': bytes, ...}, members checked first."""
    current: dict | None = None
    with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
        for info in tar:
            check_member(info, source)
            base = posixpath.basename(info.name)
            if info.isdir() or base.startswith("."):  # `tar -c folder`'s folder entries; hidden helper files
                continue
            key, _, ext = base.partition(".")
            key = posixpath.join(posixpath.dirname(info.name), key)
            data = tar.extractfile(info).read()
            if current is None or current["__key__"] != key:
                if current is not None:
                    yield current
                current = {"__key__": key}
            current[ext] = data
    if current is not None:
        yield current


def write_shard(samples: list[dict]) -> bytes:
    """A webdataset tar of `samples` ({'__key__': ..., '<ext>': bytes}) in memory."""
    buf = io.BytesIO()
    with wds.TarWriter(buf) as writer:
        for sample in samples:
            writer.write(sample)
    return buf.getvalue()
