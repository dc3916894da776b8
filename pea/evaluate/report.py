"""The evaluation report a person opens to judge an adapter at a glance: one self-contained HTML page
(images inlined) with the metrics table in the paper's layout (pea/evaluate/table.py), sample prompts
(native + English) with every system's image side by side, and the training curves; plus the same samples
as one PNG grid."""

import base64
import html
from pathlib import Path

from PIL import Image, ImageDraw

from pea.evaluate.run import EvalResult, image_path
from pea.evaluate.table import table_html

CELL = 160  # px per image in the grid and the page


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _systems(result: EvalResult) -> list[str]:
    """The systems that drew images, in the table's order."""
    return [row["system"] for row in result.table["rows"] if "scores" in row]


def _samples(result: EvalResult, n: int) -> dict[str, list]:
    """`n` prompts per set, spread over the set (its prompts are grouped by subject)."""
    return {set_name: prompts[:: max(1, len(prompts) // n)][:n] for set_name, prompts in result.prompts.items()}


def _cell(result: EvalResult, set_name: str, system: str, prompt) -> Path | None:
    path = image_path(result.images, set_name, system, prompt, 0)
    return path if path.exists() else None


def write_grid(result: EvalResult, out: Path, n: int) -> Path:
    """Rows: sample prompts of each set; columns: systems. Labels are ids (PIL's default font is Latin only)."""
    systems = _systems(result)
    rows = [(s, p) for s, prompts in _samples(result, n).items() for p in prompts]
    label_w, head_h = 220, 24
    grid = Image.new("RGB", (label_w + CELL * len(systems), head_h + CELL * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    for j, system in enumerate(systems):
        draw.text((label_w + j * CELL + 4, 6), system, fill="black")
    for i, (set_name, prompt) in enumerate(rows):
        y = head_h + i * CELL
        draw.text((4, y + CELL // 2 - 6), f"{set_name.upper()} {prompt.id}"[:34], fill="black")
        for j, system in enumerate(systems):
            path = _cell(result, set_name, system, prompt)
            if path:
                grid.paste(Image.open(path).convert("RGB").resize((CELL, CELL)), (label_w + j * CELL, y))
    grid.save(out)
    return out


def write_curves(history: dict[str, list[tuple[int, float]]], out: Path) -> Path | None:
    """Loss terms and learning rate over steps, from the training run's MLflow metric history."""
    series = {k: v for k, v in history.items() if v and k not in ("step", "samples", "samples_per_s")}
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = {k: v for k, v in series.items() if k != "lr"}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    for key, points in sorted(losses.items()):
        axes[0].plot(*zip(*points), label=key)
    axes[0].set(title="training losses", xlabel="step", yscale="log")
    axes[0].legend(fontsize=7)
    if "lr" in series:
        axes[1].plot(*zip(*series["lr"]), color="tab:gray")
    axes[1].set(title="learning rate", xlabel="step")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def _gallery(result: EvalResult, n: int) -> str:
    systems = _systems(result)
    parts = []
    for set_name, prompts in _samples(result, n).items():
        parts.append(f"<h2>{set_name.upper()} samples</h2><table class='gallery'><tr><th>prompt</th>"
                     + "".join(f"<th>{s}</th>" for s in systems) + "</tr>")
        for p in prompts:
            cells = []
            for s in systems:
                path = _cell(result, set_name, s, p)
                cells.append(f"<td><img src='{_data_uri(path)}' width='{CELL}' height='{CELL}'></td>" if path else "<td>–</td>")
            parts.append(f"<tr><td class='prompt'><b>{html.escape(p.native)}</b><br><i>{html.escape(p.english)}</i>"
                         f"<br><small>{html.escape(p.id)}</small></td>{''.join(cells)}</tr>")
        parts.append("</table>")
    return "".join(parts)


STYLE = """body{font-family:system-ui,sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ddd;padding:4px 8px;text-align:center}td.best{font-weight:bold;background:#eaf6ea}
td.prompt{text-align:left;max-width:320px}.note{color:#a33}tr.skipped td{color:#888;text-align:left}"""


def write_report(result: EvalResult, folder: Path, title: str, history: dict, n: int) -> dict[str, Path]:
    """index.html, grid.png and (when the run logged any) curves.png under `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"grid": write_grid(result, folder / "grid.png", n)}
    curves = write_curves(history, folder / "curves.png")
    notes = "".join(f"<p class='note'>{html.escape(note)}</p>" for note in result.notes)
    curves_html = f"<h2>Training</h2><img src='{_data_uri(curves)}'>" if curves else ""
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{notes}<h2>Metrics</h2>"
            f"{table_html(result.table, result.primary, result.guard)}"
            f"<p>The gate compares <b>{result.primary}</b> (higher is better) and guards <b>{result.guard}</b>.</p>"
            f"{_gallery(result, n)}{curves_html}</body></html>")
    (folder / "index.html").write_text(page, encoding="utf-8")
    if curves:
        files["curves"] = curves
    return files | {"html": folder / "index.html"}
