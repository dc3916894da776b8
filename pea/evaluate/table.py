"""One table of an evaluation in the paper's layout (Table 1): a row per system, the candidate first; the MC
column (CLIPScore in the language), then the MG columns (ImageReward, PickScore, CLIPScore_en, and CLIPScore in
the language where the suite scores it). A suite with other metrics (the toy world's judge) shows its own
columns after those, MC sets first. A skipped system is a row with the reason instead of numbers. The report
page, metrics.json and the leaderboard all show this table."""

import html

SKIPPED_TAG = "pea.eval.skipped."  # + system: the MLflow tag of the training run holding why it was skipped
PAPER_COLUMNS = {  # metric key -> (set, what the paper calls it)
    "mc_clipscore_native": ("MC", "CLIPScore (language)"),
    "mg_image_reward": ("MG", "ImageReward"),
    "mg_pickscore": ("MG", "PickScore"),
    "mg_clipscore_en": ("MG", "CLIPScore_en"),
    "mg_clipscore_native": ("MG", "CLIPScore (language)"),
}


def columns(metrics: dict[str, dict[str, float]]) -> list[str]:
    """The metric keys any system has, the paper's in its order, then the rest with MC sets first."""
    keys = {k for scores in metrics.values() for k in scores}
    rest = sorted(keys - set(PAPER_COLUMNS), key=lambda k: (not k.startswith("mc"), k))
    return [k for k in PAPER_COLUMNS if k in keys] + rest


def label(key: str) -> tuple[str, str]:
    """(set, metric) as a column header shows them: the paper's names, or the key split at its set."""
    if key in PAPER_COLUMNS:
        return PAPER_COLUMNS[key]
    set_name = "mg_seen" if key.startswith("mg_seen_") else key.partition("_")[0]
    return set_name.upper(), key.removeprefix(set_name + "_")


def build_table(metrics: dict[str, dict[str, float]], skipped: dict[str, str], order: list[str]) -> dict:
    """{"columns": [key, ...], "rows": [{"system", "scores"} or {"system", "skipped"}, ...]}: rows in `order`
    (systems in neither `metrics` nor `skipped` are left out: the champion when there is none), then any
    other system, scored or skipped."""
    names = list(dict.fromkeys([s for s in order if s in metrics or s in skipped] + [*metrics, *skipped]))
    cols = columns(metrics)
    rows = [{"system": s, "skipped": skipped[s]} if s in skipped else
            {"system": s, "scores": {k: metrics[s][k] for k in cols if k in metrics[s]}} for s in names]
    return {"columns": cols, "rows": rows}


def table_html(table: dict, primary: str | None = None, guard: str | None = None) -> str:
    """The evaluation's table (pea.evaluate.table.build_table) as HTML: a header row of sets, one of metrics
    with their keys, a row per system with the best value of each column in bold, a skipped system's reason."""
    cols = table["columns"]
    marks = {primary: " (gate)", guard: " (guard)"}
    sets = "".join(f"<th>{html.escape(label(k)[0])}</th>" for k in cols)
    head = "".join(f"<th>{html.escape(label(k)[1])}<br><small>{html.escape(k)}{marks.get(k, '')}</small></th>"
                   for k in cols)
    scored = [row["scores"] for row in table["rows"] if "scores" in row]
    rows = []
    for row in table["rows"]:
        name = f"<th>{html.escape(row['system'])}</th>"
        if "skipped" in row:
            rows.append(f"<tr class='skipped'>{name}<td colspan='{max(1, len(cols))}'>skipped: "
                        f"{html.escape(row['skipped'])}</td></tr>")
            continue
        cells = []
        for k in cols:
            value = row["scores"].get(k)
            best = value is not None and value == max(s.get(k, float("-inf")) for s in scored)
            cells.append(f"<td class='{'best' if best else ''}'>{'–' if value is None else f'{value:.4f}'}</td>")
        rows.append(f"<tr>{name}{''.join(cells)}</tr>")
    return (f"<table class='systems'><tr><th rowspan='2'>system</th>{sets}</tr><tr>{head}</tr>"
            f"{''.join(rows)}</table>")


def from_run(run_metrics: dict[str, float], run_tags: dict[str, str], order: list[str]) -> dict:
    """The table back from a training run in MLflow: its `eval.<system>.<key>` metrics and skipped tags."""
    metrics: dict[str, dict[str, float]] = {}
    for name, value in run_metrics.items():
        if name.startswith("eval."):
            system, _, key = name.removeprefix("eval.").partition(".")
            metrics.setdefault(system, {})[key] = value
    skipped = {k.removeprefix(SKIPPED_TAG): v for k, v in run_tags.items() if k.startswith(SKIPPED_TAG)}
    return build_table(metrics, skipped, order)
