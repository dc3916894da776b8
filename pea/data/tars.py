"""Reading and writing webdataset tar shards safely.

Members are checked before use: an absolute path, a `..` component, a link or any member but a regular file
or a folder (skipped), and a member over MAX_MEMBER_BYTES are refused, since shards come from outside
(img2dataset output, users' existing shards). webdataset itself treats member names as keys and never checks them.

Damage is handled by what it leaves readable:
- file-level, one PeaError naming the file: a stream whose first header cannot be read (not a tar, empty, cut
  off before its first member), since nothing of it can be used; an unsafe or oversized member too, since it
  marks a forged or mistaken shard rather than one bad sample.
- sample-level: a tar that ends early (cut off inside a member or a header, without its end-of-archive blocks,
  or unreadable past some point) keeps the samples before the damage; the sample being read when it ended is
  dropped and counted `truncated` in the caller's `dropped` counts. A caller without counts (pea's own bucketed
  and feature shards, which are written whole) gets a PeaError naming the file instead.
"""

import io
import posixpath
import tarfile
from collections.abc import Iterable, Iterator

import webdataset as wds

from pea.errors import PeaError

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
# Larger members are refused before they are read, since a member is held whole in memory. A sample's members
# are an image (a web JPEG is well under 1 MB, a 64 MP photo's ~30 MB), a caption or one sample's cached
# features (a few MB), so 64 MiB only stops a forged or mistaken member (a video, a disk image).
MAX_MEMBER_BYTES = 64 * 2**20


class BadSample(Exception):
    """One sample of external data that is skipped and counted under `reason`; the rest of its file is kept."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def count(dropped: dict[str, int], reason: str) -> None:
    dropped[reason] = dropped.get(reason, 0) + 1


class _TarInfo(tarfile.TarInfo):
    @classmethod
    def fromtarfile(cls, tar):
        try:
            return super().fromtarfile(tar)
        except tarfile.EOFHeaderError:  # a block of zeros: the end-of-archive marker
            tar.ended = True
            raise


class _Tar(tarfile.TarFile):
    """A tar stream that knows whether it reached its end-of-archive blocks: tarfile's stream mode ends a tar
    cut off in or before a header, or with a damaged header, as quietly as a whole one."""

    tarinfo = _TarInfo
    ended = False


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


def iter_samples(fileobj, source: str, dropped: dict[str, int] | None = None) -> Iterator[dict]:
    """Samples of a webdataset tar stream: {'__key__': key, '<ext>': bytes, ...}, members checked first, one
    sample in memory at a time. A tar that ends early is counted in `dropped` (see the module docstring)."""
    tar = _open(fileobj, source)
    current: dict | None = None
    try:
        with tar:
            for key, ext, data in _members(tar, source):
                if current is None or current["__key__"] != key:
                    if current is not None:
                        yield current
                    current = {"__key__": key}
                current[ext] = data
    except tarfile.ReadError:  # cut off inside a member, or a compressed block that does not decompress
        pass
    if not tar.ended:
        _ended_early(source, dropped)
    elif current is not None:
        yield current


def _open(fileobj, source: str) -> _Tar:
    try:
        return _Tar.open(fileobj=fileobj, mode="r|*")
    except tarfile.TarError as e:
        raise PeaError(f"{source} is not a readable tar ({e})", "give webdataset .tar shards (plain, .gz, .bz2 "
                       "or .xz); fetch an empty or cut-off one again") from e


def _members(tar: _Tar, source: str) -> Iterator[tuple[str, str, bytes]]:
    """(key, extension, data) of each file of a sample in `tar`, checked before it is read."""
    for info in tar:
        check_member(info, source)
        base = posixpath.basename(info.name)
        # `tar -c folder`'s folder entries; hidden helper files; files without an extension belong to no sample
        if info.isdir() or base.startswith(".") or "." not in base:
            continue
        key, _, ext = base.partition(".")
        yield posixpath.join(posixpath.dirname(info.name), key), ext, tar.extractfile(info).read()


def _ended_early(source: str, dropped: dict[str, int] | None) -> None:
    if dropped is None:
        raise PeaError(f"{source}: the tar ends early (cut off or damaged)",
                       "write it again: re-run the stage that wrote it")
    count(dropped, "truncated")


def write_samples(samples: Iterable[dict], fileobj) -> int:
    """Write `samples` ({'__key__': ..., '<ext>': bytes}) into `fileobj` as a webdataset tar, one at a time;
    returns how many were written."""
    n = 0
    # mtime 0, not the time of writing: the same samples give the same bytes, so a shard's sha256 (manifests,
    # digests, cache keys) says what it holds, not when it was written
    with wds.TarWriter(fileobj, mtime=0) as writer:
        for n, sample in enumerate(samples, 1):
            writer.write(sample)
    return n


def write_shard(samples: list[dict]) -> bytes:
    """A webdataset tar of `samples` in memory."""
    buf = io.BytesIO()
    write_samples(samples, buf)
    return buf.getvalue()
