"""Where training pairs come from, and how each source's metadata maps onto pea's columns.

parallel sources give (or, after translation, get) both captions and feed the KD losses; culture sources are
native-only and feed the SD loss (paper Sec. 3.4: WuKong for zh). A metadata parquet (a LAION one may hold
160 M rows) is streamed, never read whole; damage to it is file-level: one PeaError naming it and the fix (see
read_metadata), never a traceback.
"""

from collections.abc import Iterator
from typing import Literal

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from pydantic import BaseModel, ConfigDict

from pea.errors import PeaError
from pea.names import name_type

SourceKind = Literal["laion-multi", "wukong", "laion-en", "folder", "webdataset"]

# metadata column names as the datasets publish them -> pea's columns
COLUMNS: dict[str, dict[str, str]] = {
    # LAION2B-multi joined with its English translations
    "laion-multi": {"url": "URL", "native": "TEXT", "english": "ENG TEXT", "language": "LANGUAGE",
                    "width": "WIDTH", "height": "HEIGHT"},
    "wukong": {"url": "url", "native": "caption"},
    "laion-en": {"url": "URL", "english": "TEXT", "width": "WIDTH", "height": "HEIGHT"},
}
# what read_metadata yields: what img2dataset downloads and keeps in each sample's .json
NORMALIZED = pa.schema([("url", pa.string()), ("native", pa.string()), ("english", pa.string()), ("culture", pa.bool_())])
TYPES = {"url": pa.string(), "native": pa.string(), "english": pa.string(), "width": pa.int64(), "height": pa.int64()}
# rows a scan decodes at once: with one row group's column chunks (read whole) the memory of reading metadata,
# whatever the file's size. The scan is kept to one thread and one batch ahead: else it reads ahead of a consumer
# slower than itself (the URL file writer) by a share of the file (~30% of a 170 MB table, measured)
BATCH_ROWS = 65536
SKIPPED = ("skipped_language", "skipped_no_url", "skipped_small")  # why a metadata row is not requested


class SourceSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: name_type("source name")  # folder name under raw/
    kind: SourceKind
    uri: str  # parquet file or folder of them (metadata kinds), image folder, or shard glob
    culture: bool = False  # every sample is culture data (SD loss only), as WuKong is
    min_side: int = 0  # drop samples whose published width or height is smaller

    @property
    def downloads(self) -> bool:
        return self.kind in COLUMNS


def read_metadata(spec: SourceSpec, lang: str, skipped: dict[str, int],
                  batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """The metadata rows to download for `lang`, as NORMALIZED batches of at most `batch_rows` rows; the rows left
    out are counted in `skipped` by SKIPPED reason (in that order of precedence), once the batches are exhausted.

    Only pea's columns are read, and the language filter is pushed into the scan (for LAION2B-multi it leaves a
    few percent of the rows); rows without a URL and those under `min_side` are dropped from each batch, where
    they can be counted. A schema error or damage met while scanning is one PeaError naming the file: not a
    parquet (or cut off), a column missing, or a column whose values are not the type pea needs."""
    dataset = _dataset(spec)
    names = COLUMNS[spec.kind]
    _check_columns(spec, dataset.schema)
    language = names.get("language")
    scan = dataset.scanner(columns=sorted(set(names.values()) - {language}), batch_size=batch_rows,
                           filter=ds.field(language).cast(pa.string()) == lang if language else None,
                           use_threads=False, batch_readahead=1, fragment_readahead=1)  # see BATCH_ROWS
    counts = dict.fromkeys(SKIPPED, 0)
    seen = 0
    for batch in _batches(spec, scan):
        seen += batch.num_rows
        kept = _normalized(spec, batch, counts)
        if kept.num_rows:
            yield kept
    counts["skipped_language"] = dataset.count_rows() - seen  # from the files' footers: nothing more is read
    for reason, n in counts.items():
        skipped[reason] = skipped.get(reason, 0) + n


def _dataset(spec: SourceSpec) -> ds.Dataset:
    """The parquet file(s) at `spec.uri`, read column chunk by column chunk: pre-buffering would read ahead
    every row group of a file, ~20% of its size held at once."""
    fs, path = fsspec.core.url_to_fs(spec.uri)
    parquet = ds.ParquetFileFormat(default_fragment_scan_options=ds.ParquetFragmentScanOptions(pre_buffer=False))
    try:
        return ds.dataset(path, filesystem=fs, format=parquet)
    except FileNotFoundError as e:
        raise PeaError(f"{spec.uri} does not exist",
                       f"give --source-uri an existing {spec.kind} metadata parquet") from e
    except pa.ArrowException as e:
        raise _unreadable(spec, e) from e


def _unreadable(spec: SourceSpec, e: Exception) -> PeaError:
    reason = str(e).splitlines()[0].rsplit("?: ", 1)[-1]  # without pyarrow's "Error creating dataset..." preamble
    return PeaError(f"{spec.uri} is not a readable parquet file ({reason})", f"{_fix(spec)}; fetch a cut-off one again")


def _check_columns(spec: SourceSpec, schema: pa.Schema) -> None:
    for name in COLUMNS[spec.kind].values():
        if name not in schema.names:
            raise PeaError(f"{spec.uri}: column {name!r} is missing for a {spec.kind} source "
                           f"(has: {', '.join(schema.names)})", _fix(spec))


def _batches(spec: SourceSpec, scan: ds.Scanner) -> Iterator[pa.RecordBatch]:
    """The scan's batches; damage found on the way (a bad page, a file of a folder that is no parquet) is
    `_unreadable`'s one line."""
    batches = scan.to_batches()
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except pa.ArrowException as e:
            raise _unreadable(spec, e) from e
        yield batch


def _normalized(spec: SourceSpec, batch: pa.RecordBatch, counts: dict[str, int]) -> pa.RecordBatch:
    """`batch` in NORMALIZED columns, less (and counting) the rows without a URL or under `min_side`."""
    cols = {ours: _column(spec, batch, theirs, TYPES[ours])
            for ours, theirs in COLUMNS[spec.kind].items() if ours != "language"}
    has_url = pc.fill_null(pc.not_equal(cols["url"], ""), False)
    keep = has_url
    if spec.min_side and "width" in cols:
        big = pc.and_(pc.greater_equal(cols["width"], spec.min_side), pc.greater_equal(cols["height"], spec.min_side))
        keep = pc.and_(keep, pc.fill_null(big, False))
    counts["skipped_no_url"] += batch.num_rows - has_url.true_count
    counts["skipped_small"] += pc.and_not(has_url, keep).true_count
    n = batch.num_rows
    columns = [cols.get(name, pa.repeat("", n)) for name in ("url", "native", "english")]
    return pa.record_batch(columns + [pa.repeat(spec.culture, n)], schema=NORMALIZED).filter(keep)


def _column(spec: SourceSpec, batch: pa.RecordBatch, name: str, typ: pa.DataType) -> pa.Array:
    """Column `name` of `batch` as `typ`, or a PeaError naming what is wrong with it."""
    column = batch.column(name)
    try:
        return pc.cast(column, typ)
    except pa.ArrowException as e:
        raise PeaError(f"{spec.uri}: column {name!r} holds {column.type} values that are not {typ} "
                       f"({str(e).splitlines()[0]})", _fix(spec)) from e


def _fix(spec: SourceSpec) -> str:
    return f"give a {spec.kind} metadata parquet with columns {', '.join(COLUMNS[spec.kind].values())}"
