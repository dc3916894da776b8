"""Where training pairs come from, and how each source's metadata maps onto pea's columns.

parallel sources give (or, after translation, get) both captions and feed the KD losses; culture sources are
native-only and feed the SD loss (paper Sec. 3.4: WuKong for zh). A metadata parquet is read whole, so damage to
it is file-level: one PeaError naming it and the fix (see read_metadata), never a traceback.
"""

from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
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
NORMALIZED = pa.schema([
    ("url", pa.string()), ("native", pa.string()), ("english", pa.string()),
    ("width", pa.int64()), ("height", pa.int64()), ("culture", pa.bool_()),
])
TYPES = {field.name: field.type for field in NORMALIZED} | {"language": pa.string()}  # what each column is cast to


class SourceSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: name_type("source name")  # folder name under raw/
    kind: SourceKind
    uri: str  # parquet file (metadata kinds), image folder, or shard glob
    culture: bool = False  # every sample is culture data (SD loss only), as WuKong is
    min_side: int = 0  # drop samples whose published width or height is smaller

    @property
    def downloads(self) -> bool:
        return self.kind in COLUMNS


def read_metadata(spec: SourceSpec, lang: str, fs_open=open) -> pa.Table:
    """Read a metadata parquet, check its columns, filter to `lang` and `min_side`, and normalize it.

    A parquet is read whole (its footer holds the schema), so any damage to it is one PeaError naming the file:
    not a parquet (or cut off), a column missing, or a column whose values are not the type pea needs."""
    table = _read_parquet(spec, fs_open)
    cols = {ours: _column(spec, table, theirs, TYPES[ours]) for ours, theirs in COLUMNS[spec.kind].items()}
    if "language" in cols:
        keep = pc.equal(cols["language"], lang)
        cols = {k: pc.filter(v, keep) for k, v in cols.items()}
    if spec.min_side and "width" in cols:
        keep = pc.and_(pc.greater_equal(cols["width"], spec.min_side), pc.greater_equal(cols["height"], spec.min_side))
        cols = {k: pc.filter(v, keep) for k, v in cols.items()}
    n = len(cols["url"])
    defaults = {"native": "", "english": "", "width": 0, "height": 0}
    return pa.table(
        [cols[name] if name in cols else pa.array([defaults[name]] * n, type=TYPES[name])
         for name in ("url", "native", "english", "width", "height")] + [pa.array([spec.culture] * n, type=pa.bool_())],
        schema=NORMALIZED,
    )


def _read_parquet(spec: SourceSpec, fs_open) -> pa.Table:
    try:
        with fs_open(spec.uri, "rb") as f:
            return pq.read_table(f)
    except FileNotFoundError as e:
        raise PeaError(f"{spec.uri} does not exist",
                       f"give --source-uri an existing {spec.kind} metadata parquet") from e
    except pa.ArrowException as e:
        raise PeaError(f"{spec.uri} is not a readable parquet file ({str(e).splitlines()[0]})",
                       f"{_fix(spec)}; fetch a cut-off one again") from e


def _column(spec: SourceSpec, table: pa.Table, name: str, typ: pa.DataType) -> pa.ChunkedArray:
    """Column `name` of `table` as `typ`, or a PeaError naming what is wrong with it."""
    if name not in table.column_names:
        raise PeaError(f"{spec.uri}: column {name!r} is missing for a {spec.kind} source "
                       f"(has: {', '.join(table.column_names)})", _fix(spec))
    try:
        return pc.cast(table[name], typ)
    except pa.ArrowException as e:
        raise PeaError(f"{spec.uri}: column {name!r} holds {table[name].type} values that are not {typ} "
                       f"({str(e).splitlines()[0]})", _fix(spec)) from e


def _fix(spec: SourceSpec) -> str:
    return f"give a {spec.kind} metadata parquet with columns {', '.join(COLUMNS[spec.kind].values())}"
