"""The coverage page in a real browser: headless Chromium (Debian's chromium-headless-shell, which
`make test` installs) opens the page `guardlake coverage --html` wrote from a lake with one of each
gap; the rendered DOM has one grid cell per account × region with the expected colour classes,
and the screenshot shows each colour."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

from PIL import Image

from test_collect import guardlake
from test_coverage import GAPPY, MANAGEMENT, REGIONS, seed_gaps

# The colour of each class in src/page.rs.
COLOURS = {"ok": (0x2E, 0x7D, 0x32), "partial": (0xF9, 0xA8, 0x25), "gap": (0xC6, 0x28, 0x28),
           "optout": (0x9E, 0x9E, 0x9E), "denied": (0x6A, 0x1B, 0x9A)}  # fmt: skip


def browser() -> str:
    found = shutil.which("chromium-headless-shell") or shutil.which("chromium")
    assert found, "headless Chromium is missing: `make browser` installs Debian's chromium-headless-shell"
    return found


def chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([browser(), "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args],
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_the_coverage_page_renders_a_cell_per_account_and_region_in_its_colour(tmp_path):
    accounts = seed_gaps()
    lake, page, shot = tmp_path / "lake", tmp_path / "coverage.html", tmp_path / "coverage.png"
    guardlake("run", "--output", str(lake), "--regions", ",".join(REGIONS), "--exclude-accounts", MANAGEMENT)
    wrote = guardlake("coverage", "--output", str(lake), "--html", str(page), check_codes=(0,))
    assert f"{len(accounts) * len(REGIONS)} account × region cell(s)" in wrote.stdout, wrote.stdout

    dom = chromium("--dump-dom", page.as_uri())
    assert dom.returncode == 0 and "</html>" in dom.stdout, dom.stderr[-2000:]
    classes = Counter(re.findall(r'<td class="cell (\w+)"', dom.stdout))
    # role_denied: 1 account × 2 regions; not opted in: 1; gaps: no detector, disabled, runtime;
    # partial: S3 off; everything else covered.
    assert classes == {"denied": 2, "optout": 1, "gap": 3, "partial": 1, "ok": len(accounts) * len(REGIONS) - 7}, classes
    assert f'title="{accounts["s3off"]} {GAPPY}: feature_off:S3_DATA_EVENTS"' in dom.stdout
    assert 'id="features"' in dom.stdout, "the feature × account matrix"

    done = chromium(f"--screenshot={shot}", "--window-size=1200,1000", page.as_uri())
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    pixels = Counter(Image.open(shot).convert("RGB").get_flattened_data())
    for name, colour in COLOURS.items():
        assert pixels[colour] > 100, f"{name} ({colour}) is not on the screenshot"


def test_the_page_of_a_lake_without_coverage_says_so(tmp_path):
    lake = tmp_path / "lake"
    (lake / "_state").mkdir(parents=True)
    page = tmp_path / "page.html"
    wrote = guardlake("coverage", "--output", str(lake), "--html", str(page), check_codes=(0,))
    assert "0 account × region cell(s)" in wrote.stdout
    assert "rows collected up to never" in Path(page).read_text()
