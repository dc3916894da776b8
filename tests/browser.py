"""Headless Chromium (Debian's `chromium` package) for tests that look at a page as a person would."""

import shutil
import subprocess
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def render(url: str, profile_dir: Path, screenshot: Path | None = None, budget_ms: int = 20000) -> str:
    """The page's DOM after its scripts ran for `budget_ms` of virtual time (and a PNG of it, if asked)."""
    base = [chromium(), *FLAGS, f"--user-data-dir={profile_dir}", f"--virtual-time-budget={budget_ms}",
            "--window-size=1400,1000"]
    if screenshot is not None:
        subprocess.run([*base, f"--screenshot={screenshot}", url], capture_output=True, timeout=120, check=True)
    proc = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True)
    return proc.stdout
