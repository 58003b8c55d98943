"""``shadowline dashboard``: a live page per experiment, served on loopback.

Server-side rendered: every page is built from the warehouse when requested (the
same views and gate code as the Grafana dashboard and the report), with plots inlined
as SVG and a refresh header, so it needs no JavaScript and nothing from the network.

- ``/``: every experiment with its latest gate verdict;
- ``/experiments/NAME[?window=15m]``: the panels, the verdict with each rule, the
  rollout history and the most divergent requests (both outputs side by side);
  ``NAME@backtest:RUN`` is one backtest run (listed beneath its experiment).
"""

from __future__ import annotations

import html
import logging
from urllib.parse import quote, unquote, urlsplit

from shadowline import backtest, gates, report
from shadowline.config import Config
from shadowline.errors import ShadowlineError
from shadowline.httpserve import BoundedServer, HardenedHandler, Refused, query_fields
from shadowline.warehouse import Warehouse

log = logging.getLogger("shadowline.dashboard")


def index_page(config: Config, refresh_s: int) -> str:
    """The experiment list with each one's verdict."""
    rows = []
    wh = Warehouse.open_reader(config)
    try:
        for exp in config.experiments:
            verdict: str
            runs: list[dict[str, object]] = []
            try:
                verdict = gates.evaluate(wh, exp).verdict
                runs = backtest.judge_stored(wh, exp)
            except ShadowlineError as exc:
                verdict = f"error: {exc}"
            link = f"/experiments/{quote(exp.name)}"
            rows.append(
                f"<tr><td><a href='{link}'>{html.escape(exp.name)}</a></td>"
                f"<td>{html.escape(exp.mode)}</td><td>{len(exp.candidates)}</td>"
                f"<td class='{html.escape(verdict)}'>{html.escape(verdict)}</td></tr>"
            )
            # Its backtest runs beneath it, labelled, each with its own verdict.
            for b in runs:
                name, v = str(b["stored_as"]), str(b["verdict"])
                rows.append(
                    f"<tr class='backtest'><td>&#8627; <a href='/experiments/{quote(name)}'>"
                    f"backtest {html.escape(str(b['run']))}</a></td><td>backtest</td>"
                    f"<td>{html.escape(str(b['candidate']))}</td>"
                    f"<td class='{html.escape(v)}'>{html.escape(v)}</td></tr>"
                )
    finally:
        wh.close()
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<meta http-equiv='refresh' content='{refresh_s}'><title>shadowline</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:2em}"
        "td,th{border:1px solid #ccc;padding:4px 8px}table{border-collapse:collapse}"
        ".pass{background:#d9f2d9}.fail{background:#f8d0d0}.inconclusive{background:#fff3c4}"
        "</style></head><body><h1>shadowline experiments</h1>"
        "<table id='experiments'><thead><tr><th>experiment</th><th>mode</th>"
        "<th>candidates</th><th>gate verdict</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></body></html>"
    )


def experiment_page(config: Config, name: str, window_s: float | None, refresh_s: int) -> str:
    """One experiment: the report's content, refreshing itself."""
    page = report.to_html(report.build(config, name, window_s))
    head = (
        f"<meta http-equiv='refresh' content='{refresh_s}'>"
        "<p><a href='/'>&larr; all experiments</a></p>"
    )
    return page.replace("<meta charset='utf-8'>", "<meta charset='utf-8'>" + head, 1)


def make_server(
    config: Config, host: str = "127.0.0.1", port: int = 8127, refresh_s: int = 10
) -> BoundedServer:
    """The dashboard's HTTP server (not started)."""

    class Handler(HardenedHandler):
        def _send(self, code: int, body: str) -> None:
            self.answer(code, body.encode(), "text/html; charset=utf-8")

        def refuse(self, refused: Refused) -> None:
            self._send(refused.status, f"<p>{html.escape(refused.message)}</p>")

        def route(self) -> None:
            url = urlsplit(self.path)
            parts = [unquote(p) for p in url.path.strip("/").split("/") if p]
            q = query_fields(url.query)
            if unknown := sorted(set(q) - {"window"}):
                raise Refused(400, 0, f"unknown parameter {unknown[0][:40]!r}: use window")
            try:
                if not parts:
                    self._send(200, index_page(config, refresh_s))
                elif len(parts) == 2 and parts[0] == "experiments":
                    run = backtest.split_name(parts[1])
                    if config.experiment(run[0] if run else parts[1]) is None:
                        self._send(404, f"<p>no experiment {html.escape(parts[1][:200])!r} in "
                                        "the config: see <a href='/'>/</a></p>")  # fmt: skip
                        return
                    try:
                        window = gates.parse_duration(q["window"]) if q.get("window") else None
                    except gates.GateError as exc:
                        raise Refused(400, 0, str(exc)) from exc
                    try:
                        page = experiment_page(config, parts[1], window, refresh_s)
                    except backtest.BacktestError as exc:  # no such run stored
                        self._send(404, f"<p>{html.escape(str(exc))}</p>")
                        return
                    self._send(200, page)
                else:
                    self._send(404, "<p>not found: try <a href='/'>/</a></p>")
            except ShadowlineError as exc:
                self._send(500, f"<p>error: {html.escape(str(exc))}</p>")

    return BoundedServer((host, port), Handler)
