"""Benchmark: a dashboard page and the reports when one mirrored label is 1 MB.

    .venv/bin/python bench/pathological_page.py

Two experiments in one embedded warehouse, read over its HTTP endpoint as every reader
does: "clean" (2,000 comparisons, 20 labels) and "hostile" (the same plus one
1,000,000-character label full of pipes and HTML, and 500 distinct labels). Each page
is rendered 5 times, side by side; the medians, sizes and their ratios go to
bench/results/pathological_page.json and .md.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shadowline import dashboard, report  # noqa: E402
from shadowline.config import parse_config  # noqa: E402
from shadowline.envelopes import Comparison, now_ms  # noqa: E402
from shadowline.warehouse import Warehouse  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
HUGE = "A|B\n<script>alert(1)</script>" + "|" * 1_000_000


def rows(experiment: str, hostile: bool) -> list[Comparison]:
    t = now_ms()
    out = []
    for i in range(2000):
        label = f"label-{i % 20}"
        if hostile:
            label = HUGE if i == 0 else f"label-{i % 500}"
        out.append(
            Comparison(
                request_id=f"{experiment}-{i}",
                experiment=experiment,
                event_time=t - i * 50,
                production_model="prod",
                candidate_model="cand",
                status="matched",
                revision=1,
                output_type="classification",
                joined_at=t,
                agree=i % 3 != 0,
                divergence=float(i % 3 == 0),
                production_output={"label": label},
                candidate_output={"label": f"c-{i % 7}"},
                production_latency_ms=1.0,
                candidate_latency_ms=2.0,
                latency_delta_ms=1.0,
            )  # fmt: skip
        )
    return out


def timed(fn, runs: int = 5) -> tuple[float, int]:
    times, size = [], 0
    for _ in range(runs):
        start = time.perf_counter()
        size = len(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times), size


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="shadowline-pathological-"))
    experiments = [
        {"name": n, "production_model": "prod",
         "candidates": [{"name": "cand", "model": "shadowline.starter:candidate_model"}]}
        for n in ("clean", "hostile")
    ]  # fmt: skip
    config = parse_config(
        {"warehouse": {"path": str(tmp / "wh"), "port": 18231}, "experiments": experiments},
        env={},
    )
    wh = Warehouse.open_owner(config)
    wh.insert_comparisons(rows("clean", False) + rows("hostile", True))
    server = wh.serve_http()
    results = []
    try:
        for name, fn in (
            ("dashboard page", lambda e: dashboard.experiment_page(config, e, None, 10)),
            ("HTML report", lambda e: report.write(config, e, tmp / f"{e}.html").read_text()),
            ("Markdown report",
             lambda e: report.write(config, e, tmp / f"{e}.md", "md").read_text()),
        ):  # fmt: skip
            clean_s, clean_b = timed(lambda fn=fn: fn("clean"))
            bad_s, bad_b = timed(lambda fn=fn: fn("hostile"))
            results.append({
                "page": name, "clean_median_s": round(clean_s, 3),
                "hostile_median_s": round(bad_s, 3), "ratio": round(bad_s / clean_s, 2),
                "clean_bytes": clean_b, "hostile_bytes": bad_b,
            })  # fmt: skip
            print(json.dumps(results[-1]), flush=True)
    finally:
        server.shutdown()
        wh.close()
    OUT.mkdir(exist_ok=True)
    (OUT / "pathological_page.json").write_text(json.dumps(results, indent=2))
    lines = [
        "| page | clean: median s | 1 MB label: median s | ratio | clean bytes "
        "| 1 MB label bytes |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['page']} | {r['clean_median_s']} | {r['hostile_median_s']} | {r['ratio']} "
        f"| {r['clean_bytes']:,} | {r['hostile_bytes']:,} |"
        for r in results
    ]
    (OUT / "pathological_page.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
