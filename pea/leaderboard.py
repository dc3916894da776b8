"""The leaderboard page: per language, the champion and the challenger from the MLflow registry with their
MG/MC metrics, the gate's last word, the table of every system their evaluation scored (the paper's layout,
pea/evaluate/table.py, read back from the training run's eval.* metrics) and its sample grid. One
self-contained HTML file."""

import base64
import html
import tempfile
from pathlib import Path

from pea import tracking
from pea.errors import redact
from pea.evaluate.systems import ALWAYS, BASELINES
from pea.evaluate.table import from_run, table_html
from pea.names import model_name
from pea.registry import CHALLENGER, CHAMPION
from pea.storage import write_files

STYLE = """body{font-family:system-ui,sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:6px 0}
td,th{border:1px solid #ddd;padding:4px 8px}th{background:#f4f4f4}.none{color:#888}img{max-width:640px;margin:4px}
.alias{font-weight:bold;color:#146c2e}td.best{font-weight:bold}tr.skipped td{color:#888}"""


def _entries(tracking_uri: str, lang: str) -> list[tuple[str, object]]:
    from mlflow.exceptions import MlflowException

    client = tracking.client(tracking_uri)
    try:
        aliases = client.get_registered_model(model_name(lang)).aliases or {}
    except MlflowException:
        return []
    return [(alias, client.get_model_version(model_name(lang), str(aliases[alias])))
            for alias in (CHAMPION, CHALLENGER) if alias in aliases]


def _grid(tracking_uri: str, run_id: str) -> str | None:
    """The evaluation's sample grid from the training run's artifacts, as a data URI."""

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = tracking.client(tracking_uri).download_artifacts(run_id, "report/grid.png", tmp)
        except Exception:  # noqa: BLE001 -- a version registered without an evaluation report shows no images
            return None
        return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def _systems_table(tracking_uri: str, alias: str, version) -> str:
    """Every system the version's evaluation scored or skipped, from its training run."""
    data = tracking.client(tracking_uri).get_run(version.run_id).data
    table = from_run(data.metrics, data.tags, list(ALWAYS + BASELINES))
    if not table["rows"]:
        return ""
    return (f"<h3>{alias} v{version.version}: every system of its evaluation</h3>"
            + table_html(table, version.tags.get("pea.primary"), version.tags.get("pea.guard")))


def _section(tracking_uri: str, lang: str) -> str:
    entries = _entries(tracking_uri, lang)
    title = f"<h2>{html.escape(model_name(lang))}</h2>"
    if not entries:
        return title + "<p class='none'>no registered versions yet</p>"
    metrics = sorted({k.removeprefix("pea.metric.") for _, v in entries for k in v.tags if k.startswith("pea.metric.")})
    head = "".join(f"<th>{html.escape(m)}</th>" for m in metrics)
    rows, images, tables = [], [], []
    for alias, v in entries:
        tables.append(_systems_table(tracking_uri, alias, v))
        cells = "".join(f"<td>{html.escape(v.tags.get(f'pea.metric.{m}', '-'))}</td>" for m in metrics)
        gate = html.escape(f"{v.tags.get('pea.gate.decision', '')}: {v.tags.get('pea.gate.reason', '')}")
        rows.append(f"<tr><td class='alias'>{alias}</td><td>v{v.version}</td>"
                    f"<td>{html.escape(v.tags.get('pea.train_run', ''))}</td>{cells}<td>{gate}</td></tr>")
        grid = _grid(tracking_uri, v.run_id)
        if grid:
            images.append(f"<figure><img src='{grid}' alt='{alias} samples'><figcaption>{alias} v{v.version}: "
                          f"candidate, champion and baselines on sample prompts</figcaption></figure>")
    return (title + f"<table><tr><th>alias</th><th>version</th><th>training run</th>{head}<th>gate</th></tr>"
            + "".join(rows) + "</table>" + "".join(tables) + "".join(images))


def write_leaderboard(tracking_uri: str, langs: list[str], out: Path) -> Path:
    body = "".join(_section(tracking_uri, lang) for lang in langs)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>pea leaderboard</title><style>{STYLE}</style>"
            f"</head><body><h1>pea leaderboard</h1><p>From {html.escape(redact(tracking_uri))}</p>{body}</body></html>")
    write_files({str(out): page.encode()}, "give `pea dashboard` another --out")
    return out
