"""Peak memory of a harvest whose set holds a decompression bomb.

    uv run python benchmarks/harvest_memory.py

harvest_peak_mb: the largest proportional set size (PSS: resident memory with each shared page divided among the
  processes that map it, so the torch libraries that the harvest process, img2dataset's download worker and its
  logger each load count once), summed over the harvest process and all its children, sampled every 10 ms with
  psutil (and never less than the largest single
  process's peak from getrusage), while it downloads a 30000x30000 RGB PNG of zeros (900 Mpx, 2.6 MB on disk,
  2.7 GB decoded) and four normal JPEGs from a loopback HTTP server. The harvest runs in a child process so
  that this one (which serves the files) is not counted.
The last line is one JSON object.
"""

import functools
import io
import json
import resource
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

BOMB_SIDE = 30000
HARVEST = """
import sys
from pea.data.harvest import HarvestConfig, harvest
from pea.data.sources import SourceSpec
from pea.storage import Storage
source = SourceSpec(name="bench", kind="laion-multi", uri=sys.argv[2])
counts = harvest(Storage(sys.argv[1]), "ko", source, HarvestConfig(threads=4, retries=0, timeout_s=60))["counts"]
print(counts, file=sys.stderr)  # the benchmark shows it: the bomb is counted 'image area too large'
"""


def bomb_png(side: int) -> bytes:
    """A real side x side RGB PNG of zeros, compressed row by row: the benchmark never holds it decoded."""
    deflate = zlib.compressobj(9)
    row = bytes(1 + 3 * side)  # filter byte 0, then the row's pixels
    data = b"".join(deflate.compress(row) for _ in range(side)) + deflate.flush()
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)) + \
        _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _jpeg(width: int, height: int, color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "JPEG")
    return buf.getvalue()


def _serve(folder: Path) -> ThreadingHTTPServer:
    """A static file server on 127.0.0.1 for `folder`, quiet; the caller shuts it down."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _metadata(path: Path, base: str, names: list[str]) -> None:
    n = len(names)
    pq.write_table(pa.table({"URL": [f"{base}/{name}" for name in names], "TEXT": ["빨간 원"] * n,
                             "ENG TEXT": ["a red circle"] * n, "LANGUAGE": ["ko"] * n,
                             "WIDTH": [256] * n, "HEIGHT": [256] * n}), path)


def _tree_pss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_full_info().pss
        except psutil.NoSuchProcess:
            pass
    return total


def _peak_while_running(args: list[str]) -> tuple[float, int]:
    """(peak summed PSS in bytes of the process tree started by `args`, its exit code)."""
    child = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    proc, peak = psutil.Process(child.pid), 0
    try:
        while child.poll() is None:
            try:
                peak = max(peak, _tree_pss(proc))
            except psutil.NoSuchProcess:
                pass
            time.sleep(0.01)
    finally:
        err = child.communicate()[1]
    print(err.strip().splitlines()[-1] if err.strip() else "", file=sys.stderr)
    largest_child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
    return max(peak, largest_child), child.returncode


def harvest_peak_mb(tmp: Path, bomb_side: int = BOMB_SIDE) -> float:
    """Peak MB (summed PSS) of a harvest of four JPEGs and a bomb_side^2 PNG bomb (900 Mpx) served on loopback."""
    www = tmp / "www"
    www.mkdir(parents=True)
    (www / "bomb.png").write_bytes(bomb_png(bomb_side))
    names = ["bomb.png"]
    for i in range(4):
        (www / f"ok{i}.jpg").write_bytes(_jpeg(320 + 16 * i, 240, (40 * i, 90, 160)))
        names.append(f"ok{i}.jpg")
    server = _serve(www)
    try:
        _metadata(tmp / "meta.parquet", f"http://127.0.0.1:{server.server_address[1]}", names)
        peak, rc = _peak_while_running([sys.executable, "-c", HARVEST, str(tmp / "root"), str(tmp / "meta.parquet")])
    finally:
        server.shutdown()
        server.server_close()
    if rc != 0:
        raise RuntimeError(f"the harvest exited with {rc}")
    return peak / 2**20


def main():
    with tempfile.TemporaryDirectory() as tmp:
        peak = harvest_peak_mb(Path(tmp))
    print(json.dumps({"harvest_peak_mb": round(peak, 1)}))


if __name__ == "__main__":
    main()
