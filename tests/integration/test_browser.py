"""The built-in dashboard and the report in headless Chromium, on the demo's data:
the pages render with their panels and tables, and screenshots are kept."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import matplotlib.image

from shadowline import report
from shadowline.config import load_config
from shadowline.dashboard import make_server

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / ".shadowline" / "test-output" / "browser"


def _chromium() -> str:
    path = shutil.which("chromium")
    assert path, "chromium is not on PATH: run deploy/browser/install-chromium.sh (make setup)"
    return path


def _browse(url: str, shot: Path, height: int) -> str:
    """Render ``url``: save a screenshot, return the DOM after rendering."""
    base = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--window-size=1280,{height}", "--virtual-time-budget=3000"]  # fmt: skip
    subprocess.run(
        [*base, f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True
    )
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    return dom.stdout


def _not_blank(png: Path) -> None:
    pixels = matplotlib.image.imread(png)
    assert pixels.shape[0] > 500 and pixels.shape[1] == 1280
    assert pixels.std() > 0.05  # text, plots and colours, not an empty page


def test_dashboard_and_report_render_in_chromium(kafka_bootstrap: str, tmp_path: Path) -> None:
    demo_dir = tmp_path / "demo"
    env = os.environ | {"SHADOWLINE_KAFKA_BOOTSTRAP": kafka_bootstrap}
    proc = subprocess.run(
        [sys.executable, "-m", "shadowline", "demo", "--json", "--requests", "1500",
         "--dir", str(demo_dir)],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    experiment = summary["experiment"]
    config = load_config(demo_dir / "shadowline.toml")
    OUTPUT.mkdir(parents=True, exist_ok=True)

    server = make_server(config, "127.0.0.1", 0, refresh_s=60)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        index = _browse(f"http://127.0.0.1:{port}/", OUTPUT / "dashboard-index.png", 600)
        assert f">{experiment}</a>" in index and 'class="fail"' in index
        page = _browse(
            f"http://127.0.0.1:{port}/experiments/{experiment}", OUTPUT / "dashboard.png", 2600
        )
    finally:
        server.shutdown()
        server.server_close()
    # The panels rendered with data: an SVG per panel with plotted lines, the rules
    # table with both candidates, and the divergent requests with both outputs.
    assert page.count("<svg") >= 4 and page.count("<polyline") >= 8
    assert "Gate verdict: FAIL" in page
    assert "forest" in page and "rules" in page and "max_error_rate" in page
    assert page.count("<tr>") >= 15
    report_file = tmp_path / "report.html"
    report.write(config, experiment, report_file)
    rendered = _browse(report_file.as_uri(), OUTPUT / "report.png", 2600)
    assert rendered.count("<svg") >= 4 and "Most divergent requests" in rendered
    for shot in ("dashboard-index.png", "dashboard.png", "report.png"):
        _not_blank(OUTPUT / shot)
