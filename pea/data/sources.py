"""Where training pairs come from, and how each source's metadata maps onto pea's columns.

parallel sources give (or, after translation, get) both captions and feed the KD losses; culture sources are
native-only and feed the SD loss (paper Sec. 3.4: WuKong for zh).
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
    """Read a metadata parquet, check its columns, filter to `lang` and `min_side`, and normalize it."""
    mapping = COLUMNS[spec.kind]
    with fs_open(spec.uri, "rb") as f:
        table = pq.read_table(f)
    missing = [col for col in mapping.values() if col not in table.column_names]
    if missing:
        raise PeaError(
            f"{spec.uri}: column {missing[0]!r} is missing for a {spec.kind} source (has: {', '.join(table.column_names)})",
            f"give a {spec.kind} metadata parquet with columns {', '.join(mapping.values())}",
        )
    cols = {ours: table[theirs] for ours, theirs in mapping.items()}
    n = table.num_rows
    if "language" in cols:
        keep = pc.equal(cols["language"], lang)
        cols = {k: pc.filter(v, keep) for k, v in cols.items()}
        n = len(cols["url"])
    if spec.min_side and "width" in cols:
        keep = pc.and_(pc.greater_equal(cols["width"], spec.min_side), pc.greater_equal(cols["height"], spec.min_side))
        cols = {k: pc.filter(v, keep) for k, v in cols.items()}
        n = len(cols["url"])

    def column(name, typ, default):
        if name in cols:
            return pc.cast(cols[name], typ)
        return pa.array([default] * n, type=typ)

    return pa.table(
        [column("url", pa.string(), None), column("native", pa.string(), ""), column("english", pa.string(), ""),
         column("width", pa.int64(), 0), column("height", pa.int64(), 0),
         pa.array([spec.culture] * n, type=pa.bool_())],
        schema=NORMALIZED,
    )
