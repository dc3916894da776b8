"""The MG (general) and MC (culture) prompt sets, loaded from the TSV files under pea/resources/prompts/.

mg.tsv: `id` then one column per language (`en` and every registered language but `multilingual`): the
same 200 general prompts (people, animals, landscapes, fantasy, in ten styles) in each. mc-<lang>.tsv:
`id`, `<lang>`, `en`: 200 prompts about that culture's food, architecture, clothing, festivals and places,
with an English gloss for the report and the English-only metrics. Every line is checked: UTF-8, no empty
line or cell, unique ids and prompts; a bad file fails with its path and line number.
"""

from dataclasses import dataclass
from pathlib import Path

from pea.errors import PeaError
from pea.resources import resource_path

MULTILINGUAL = "multilingual"


@dataclass(frozen=True)
class EvalPrompt:
    id: str
    native: str  # in the language being evaluated
    english: str  # the same prompt in English (MG), or its gloss (MC)
    lang: str  # the language `native` is in (the multilingual sets mix them)


def native(prompts: list[EvalPrompt]) -> list[str]:
    """What a system asked in the language draws from, per prompt."""
    return [p.native for p in prompts]


def english(prompts: list[EvalPrompt]) -> list[str]:
    """What a system asked in English (the base model, a compressed student) draws from, per prompt."""
    return [p.english for p in prompts]


def _bad(path: Path, line: int | None, problem: str) -> PeaError:
    where = f"{path}:{line}" if line else str(path)
    return PeaError(f"prompt file {where}: {problem}", "fix that line (UTF-8, tab-separated, no empty cells)")


def read_tsv(path: Path, required: list[str]) -> list[dict[str, str]]:
    """Rows of a tab-separated file with a header, each checked; `required` columns must be in the header."""
    if not path.is_file():
        raise PeaError(f"prompt file {path} does not exist", "restore it from the repository")
    rows, seen_ids, seen_text = [], set(), {}
    lines = path.read_bytes().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    header: list[str] = []
    for number, raw in enumerate(lines, start=1):
        try:
            text = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as e:
            raise _bad(path, number, f"not valid UTF-8 ({e.reason} at byte {e.start})") from e
        if not text.strip():
            raise _bad(path, number, "empty line")
        cells = text.split("\t")
        if number == 1:
            header = cells
            missing = [c for c in required if c not in header]
            if missing:
                raise _bad(path, 1, f"missing language column(s) {', '.join(missing)} (header: {', '.join(header)})")
            continue
        if len(cells) != len(header):
            raise _bad(path, number, f"{len(cells)} cells, the header has {len(header)}")
        row = dict(zip(header, cells))
        empty = [c for c, v in row.items() if not v.strip()]
        if empty:
            raise _bad(path, number, f"empty {', '.join(empty)}")
        if row["id"] in seen_ids:
            raise _bad(path, number, f"duplicate id {row['id']!r}")
        seen_ids.add(row["id"])
        for column in required[1:]:
            if (column, row[column]) in seen_text:
                raise _bad(path, number, f"duplicate {column} prompt (first on line {seen_text[(column, row[column])]})")
            seen_text[(column, row[column])] = number
        rows.append(row)
    if not rows:
        raise _bad(path, None, "holds no prompts")
    return rows


def prompt_languages() -> list[str]:
    """The languages that have their own prompts (every registered one but the multilingual entry)."""
    from pea.languages import registry

    return [code for code in registry() if code != MULTILINGUAL]


def mg_prompts(lang: str, folder: Path | None = None) -> list[EvalPrompt]:
    """MG in `lang`; the multilingual entry takes the languages in turn, prompt by prompt."""
    langs = prompt_languages()
    rows = read_tsv((folder or resource_path("prompts")) / "mg.tsv", ["id", "en", *langs])
    pick = (lambda i: langs[i % len(langs)]) if lang == MULTILINGUAL else (lambda i: lang)
    return [EvalPrompt(row["id"], row[pick(i)], row["en"], pick(i)) for i, row in enumerate(rows)]


def mc_prompts(lang: str, folder: Path | None = None) -> list[EvalPrompt]:
    """MC for `lang`; the multilingual entry takes an equal share of every language's culture prompts."""
    folder = folder or resource_path("prompts")
    if lang == MULTILINGUAL:
        per_lang = [mc_prompts(code, folder) for code in prompt_languages()]
        share = min(len(p) for p in per_lang) // len(per_lang)
        return [p for prompts in per_lang for p in prompts[:: max(1, len(prompts) // share)][:share]]
    rows = read_tsv(folder / f"mc-{lang}.tsv", ["id", lang, "en"])
    return [EvalPrompt(row["id"], row[lang], row["en"], lang) for row in rows]


def check_prompt_files(folder: Path | None = None) -> dict[str, int]:
    """Load every set once; the counts per set (used by tests and `pea evaluate --check`)."""
    counts = {f"mg-{lang}": len(mg_prompts(lang, folder)) for lang in prompt_languages()}
    counts |= {f"mc-{lang}": len(mc_prompts(lang, folder)) for lang in prompt_languages()}
    return counts
