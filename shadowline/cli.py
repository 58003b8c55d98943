"""The ``shadowline`` command."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from shadowline.config import DEFAULT_CONFIG, Config, load_config
from shadowline.errors import ConfigError, ShadowlineError
from shadowline.extras import MissingExtra

config_option = click.option(
    "-c",
    "--config",
    "config_path",
    default=DEFAULT_CONFIG,
    show_default=True,
    envvar="SHADOWLINE_CONFIG",
    show_envvar=True,
    type=click.Path(dir_okay=False),
    help="The shadowline TOML config file.",
)


def _load(path: str) -> Config:
    return load_config(path)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="shadowline")
def cli() -> None:
    """Validate candidate ML models on mirrored production traffic."""


# -- init ---------------------------------------------------------------------


@cli.command("init")
@click.option(
    "--dir", "directory", default=".", show_default=True, type=click.Path(file_okay=False),
    help="Where to write shadowline.toml and example-traffic.jsonl.",
)  # fmt: skip
@click.option("--force", is_flag=True, help="Overwrite files that exist.")
def init_cmd(directory: str, force: bool) -> None:
    """Write a commented starter config and example traffic that run as they are."""
    from shadowline.starter import write_starter

    for path in write_starter(Path(directory), force=force):
        click.echo(f"wrote {path}")
    click.echo(
        "next: shadowline kafka up; shadowline up --log-dir logs; (elsewhere) "
        "shadowline replay example-traffic.jsonl"
    )


# -- kafka --------------------------------------------------------------------


@cli.group()
def kafka() -> None:
    """Run a local single-node Kafka broker (KRaft) for development."""


@kafka.command("up")
@config_option
@click.option("--timeout", default=90.0, show_default=True, help="Seconds to wait for the broker.")
def kafka_up(config_path: str, timeout: float) -> None:
    """Fetch Kafka from Maven Central (first run), format storage, start, wait until it answers."""
    from shadowline import broker

    click.echo(broker.up(_load_or_default(config_path), timeout=timeout))


@kafka.command("down")
@config_option
def kafka_down(config_path: str) -> None:
    """Stop the local broker."""
    from shadowline import broker

    click.echo(broker.down(_load_or_default(config_path)))


@kafka.command("status")
@config_option
def kafka_status(config_path: str) -> None:
    """Say whether Kafka answers (exit code 0 if it does, 1 if not)."""
    from shadowline import broker

    running, message = broker.status(_load_or_default(config_path))
    click.echo(message)
    sys.exit(0 if running else 1)


def _load_or_default(path: str) -> Config:
    # kafka up/down/status work without a config file (defaults), but a file
    # that exists must be valid.
    if Path(path).exists() or path != DEFAULT_CONFIG:
        return _load(path)
    from shadowline.config import parse_config

    return parse_config({}, source="<defaults>")


# -- topics -------------------------------------------------------------------


@cli.group()
def topics() -> None:
    """Manage shadowline's Kafka topics."""


@topics.command("create")
@config_option
def topics_create(config_path: str) -> None:
    """Create every topic (requests, predictions, feedback, comparisons, control, deadletter)."""
    from shadowline.kafka import create_topics

    for name, outcome in create_topics(_load_or_default(config_path)).items():
        click.echo(f"{outcome:8} {name}")


# -- run / up -----------------------------------------------------------------


@cli.command("run")
@click.argument("component", type=click.Choice(["worker", "joiner", "sink"]))
@config_option
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    envvar="SHADOWLINE_LOG_LEVEL",
    show_envvar=True,
    help="Logging level.",
)
def run(component: str, config_path: str, log_level: str) -> None:
    """Run one pipeline component in the foreground until SIGINT/SIGTERM."""
    _setup_logging(log_level)
    config = _load(config_path)
    stats: object
    if component == "worker":
        from shadowline.consumers.worker import Worker

        stats = Worker(config).run()
    elif component == "sink":
        from shadowline.consumers.sink import Sink

        stats = Sink(config).run()
    else:
        from shadowline.streams.joiner import run as run_joiner

        run_joiner(config, loglevel=log_level)
        return
    logging.getLogger("shadowline").info("%s stopped: %s", component, stats)


@cli.command("up")
@config_option
@click.option(
    "--log-dir", type=click.Path(file_okay=False), help="Write each component's log here."
)
def up(config_path: str, log_dir: str | None) -> None:
    """Run worker, joiner and sink locally in the foreground; stop cleanly on SIGINT/SIGTERM."""
    from shadowline.kafka import create_topics, ping
    from shadowline.supervisor import Pipeline

    config = _load(config_path)
    if not ping(config.kafka):
        raise ShadowlineError(
            f"Kafka does not answer at {config.kafka.bootstrap_servers} (try: shadowline kafka up)"
        )
    create_topics(config)
    pipeline = Pipeline(config_path, log_dir=Path(log_dir) if log_dir else None)
    pipeline.start()
    click.echo(
        f"pipeline running (pids {[p.pid for p in pipeline.procs.values()]}); Ctrl-C stops it"
    )
    pipeline.wait()
    click.echo("pipeline stopped")


# -- replay -------------------------------------------------------------------


@cli.command("replay")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@config_option
@click.option("--no-progress", is_flag=True, help="Do not show a progress bar.")
def replay_cmd(file: str, config_path: str, no_progress: bool) -> None:
    """Replay recorded traffic (JSON lines) into requests/predictions/feedback."""
    from shadowline.replay import replay

    result = replay(_load(config_path), file, progress=not no_progress)
    click.echo(
        f"replayed {result.lines} lines: {result.requests} requests, "
        f"{result.predictions} predictions, {result.feedback} feedback; {len(result.bad)} rejected"
    )
    for line_no, reason in result.bad[:20]:
        click.echo(f"  line {line_no}: {reason}", err=True)
    sys.exit(1 if result.bad else 0)


# -- query --------------------------------------------------------------------


@cli.command("query")
@click.argument("sql")
@config_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "tsv"]),
    default="table",
    show_default=True,
    help="json prints one JSON array of row objects.",
)
def query_cmd(sql: str, config_path: str, fmt: str) -> None:
    """Run SQL against the configured warehouse (whether or not the pipeline runs)."""
    from shadowline.warehouse import Warehouse, rows_as_json

    config = _load(config_path)
    wh = Warehouse.open_reader(config)
    try:
        rows = wh.query(sql)
    finally:
        wh.close()
    if fmt == "json":
        click.echo(rows_as_json(rows).decode())
        return
    _print_rows(rows, tsv=fmt == "tsv")


def _print_rows(rows: list[dict[str, Any]], tsv: bool) -> None:
    if not rows:
        click.echo("(no rows)")
        return
    cols = list(rows[0])
    cells = [[_cell(r[c]) for c in cols] for r in rows]
    if tsv:
        click.echo("\t".join(cols))
        for row in cells:
            click.echo("\t".join(row))
        return
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "NULL" if value is None else str(value)


# -- gate ---------------------------------------------------------------------


def _verdict_error(exc: ShadowlineError, as_json: bool) -> NoReturn:
    """A verdict command's error: JSON too when asked, exit 3 (never a verdict's code)."""
    import orjson

    from shadowline.gates import EXIT_ERROR

    if as_json:
        click.echo(orjson.dumps({"verdict": "error", "error": str(exc)}).decode())
    click.echo(f"error: {exc}", err=True)
    sys.exit(EXIT_ERROR)


@cli.group()
def gate() -> None:
    """Judge an experiment's candidates against its [experiments.gates] rules."""


@gate.command("check")
@config_option
@click.argument("experiment")
@click.option("--candidate", default=None, help="Judge only this candidate.")
@click.option("--window", default=None, help="Only the last DURATION (30s, 5m, 2h, 1d).")
@click.option("--since", default=None, help="Start of the range (ISO 8601 or epoch ms).")
@click.option("--until", default=None, help="End of the range (ISO 8601 or epoch ms; now).")
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as one JSON object.")
def gate_check(
    config_path: str,
    experiment: str,
    candidate: str | None,
    window: str | None,
    since: str | None,
    until: str | None,
    as_json: bool,
) -> None:
    """Exit 0 on pass, 1 on fail, 2 on inconclusive, 3 on error."""
    from shadowline import gates

    try:
        report = gates.check(
            _load(config_path),
            experiment,
            candidate=candidate,
            window_s=gates.parse_duration(window) if window else None,
            since=gates.parse_time(since) if since else None,
            until=gates.parse_time(until) if until else None,
        )
    except ShadowlineError as exc:
        _verdict_error(exc, as_json)
    if as_json:
        import orjson

        click.echo(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(gates.format_report(report))
    sys.exit(report.exit_code)


# -- backtest -----------------------------------------------------------------


@cli.command("backtest")
@config_option
@click.argument("experiment")
@click.option(
    "--candidate", "candidate", required=True, metavar="NAME[=MODEL]",
    help="The candidate: NAME=MODEL (any model reference a config takes), or a "
    "configured candidate's NAME.",
)  # fmt: skip
@click.option("--since", default=None, help="Start of the range (ISO 8601 or epoch ms; the log's).")
@click.option("--until", default=None, help="End of the range (ISO 8601 or epoch ms; now).")
@click.option(
    "--source", default="auto", show_default=True,
    type=click.Choice(["auto", "kafka", "warehouse"]),
    help="Where the requests come from: auto reads Kafka's retained log, or the "
    "warehouse when retention deleted part of the range and the experiment stores them.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as one JSON object.")
@click.option(
    "--progress/--no-progress", default=None, help="Progress on stderr (default: on a terminal)."
)
def backtest_cmd(
    config_path: str, experiment: str, candidate: str, since: str | None, until: str | None,
    source: str, as_json: bool, progress: bool | None,
) -> None:  # fmt: skip
    """Judge a candidate on an experiment's mirrored traffic: exit 0 pass, 1 fail,
    2 inconclusive, 3 error (as gate check)."""
    import orjson

    from shadowline import backtest, gates

    try:
        result = backtest.run(
            _load(config_path), experiment, candidate,
            since=gates.parse_time(since) if since else None,
            until=gates.parse_time(until) if until else None,
            source=source, progress=progress,
        )  # fmt: skip
    except ShadowlineError as exc:
        _verdict_error(exc, as_json)
    if as_json:
        click.echo(orjson.dumps(result.as_dict(), option=orjson.OPT_INDENT_2).decode())
        click.echo(f"backtest {result.run}: {backtest.timing(result)}", err=True)
    else:
        click.echo(backtest.format_result(result))
    sys.exit(result.exit_code)


@gate.command("serve")
@config_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8126, show_default=True, type=int)
def gate_serve(config_path: str, host: str, port: int) -> None:
    """Answer verdicts over HTTP: JSON for Argo Rollouts, status codes for Flagger."""
    from shadowline import gates

    server = gates.make_server(_load(config_path), host, port)
    _serve_until_interrupted(
        server, f"gates on http://{host}:{port}/gates/EXPERIMENT (and /verdict)"
    )


# -- ingest -------------------------------------------------------------------


@cli.command("ingest")
@config_option
@click.option("--host", default=None, help="Address to bind (default: ingest.host, loopback).")
@click.option("--port", default=None, type=int, help="Port (default: ingest.port, 8128).")
def ingest_cmd(config_path: str, host: str | None, port: int | None) -> None:
    """Take KServe / Seldon payload logs (CloudEvents) as mirrored traffic."""
    from shadowline.ingest import make_server

    config = _load(config_path)
    server = make_server(config, host, port)
    h, p = str(server.server_address[0]), int(server.server_address[1])
    try:
        _serve_until_interrupted(
            server,
            f"ingest on http://{h}:{p}/ingest/EXPERIMENT (and /, by ce-inferenceservicename)",
        )
    finally:
        server.ingest.close()  # type: ignore[attr-defined]


@cli.command("proxy")
@config_option
@click.option("--experiment", "-e", required=True, help="The experiment whose upstream to proxy.")
@click.option("--host", default=None, help="Address to bind (default: proxy.host, loopback).")
@click.option("--port", default=None, type=int, help="Port (default: proxy.port, 8129).")
@click.option("--engine", type=click.Choice(["python", "go"]), default=None,
              help="Data path (default: proxy.engine, python).")  # fmt: skip
def proxy_cmd(
    config_path: str, experiment: str, host: str | None, port: int | None, engine: str | None
) -> None:
    """Forward HTTP to production's endpoint and mirror each request and answer."""
    config = _load(config_path)
    if (engine or config.proxy.engine) == "go":
        from shadowline import proxy_native

        proxy_native.run(config, experiment, host, port)
        return
    from shadowline import proxy

    proxy.run(config, experiment, host, port)


@cli.command("proxy-build")
def proxy_build_cmd() -> None:
    """Build the Go proxy (proxy.engine = "go") now and print where it is."""
    from shadowline import proxy_native

    click.echo(proxy_native.binary())


# -- dashboard ----------------------------------------------------------------


@cli.command("dashboard")
@config_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8127, show_default=True, type=int)
@click.option("--refresh", default=10, show_default=True, help="Seconds between page refreshes.")
def dashboard_cmd(config_path: str, host: str, port: int, refresh: int) -> None:
    """Serve a live page per experiment (panels, verdict, divergent requests)."""
    from shadowline.dashboard import make_server

    server = make_server(_load(config_path), host, port, refresh)
    _serve_until_interrupted(server, f"dashboard on http://{host}:{port}/")


def _serve_until_interrupted(server: Any, banner: str) -> None:
    click.echo(banner, err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


# -- report -------------------------------------------------------------------


@cli.command("report")
@config_option
@click.argument("experiment")
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False))
@click.option(
    "--format", "fmt", type=click.Choice(["html", "md"]), default="html", show_default=True
)
@click.option("--window", default=None, help="Only the last DURATION (30s, 5m, 2h, 1d).")
def report_cmd(
    config_path: str, experiment: str, output: str, fmt: str, window: str | None
) -> None:
    """Write a report: self-contained HTML, or Markdown with SVG plots beside it."""
    from shadowline import gates, report

    path = report.write(
        _load(config_path), experiment, Path(output), fmt,
        window_s=gates.parse_duration(window) if window else None,
    )  # fmt: skip
    click.echo(f"wrote {path}")


# -- canary -------------------------------------------------------------------


@cli.group()
def canary() -> None:
    """Ramp a canary through its schedule, with automatic rollback."""


@canary.command("run")
@config_option
@click.argument("experiment")
def canary_run(config_path: str, experiment: str) -> None:
    """Walk the schedule; exit 0 when complete, 1 when rolled back, 3 on error."""
    import signal
    import threading

    from shadowline.canary import Controller

    controller = Controller(_load(config_path), experiment)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    final = controller.run(stop)
    click.echo(
        f"{experiment}: {final.action} at step {final.step} "
        f"(weight {final.weight:.4g}, verdict {final.verdict}): {final.reason}"
    )
    sys.exit({"complete": 0, "rollback": 1}.get(final.action, 2))


@canary.command("status")
@config_option
@click.argument("experiment")
@click.option("--json", "as_json", is_flag=True, help="Print the status as one JSON object.")
def canary_status(config_path: str, experiment: str, as_json: bool) -> None:
    """Show the latest decision and the recent rollout history."""
    import orjson

    from shadowline.canary import status

    info = status(_load(config_path), experiment)
    if as_json:
        click.echo(orjson.dumps(info, default=str, option=orjson.OPT_INDENT_2).decode())
        return
    latest = info["latest"]
    if latest is None:
        click.echo(f"{experiment}: no rollout decision yet")
        return
    click.echo(
        f"{experiment}: step {latest['step']}, weights {latest['weights']}, "
        f"verdict {latest['verdict']} at {latest['time']}\n  {latest['reason']}"
    )
    for row in info["history"]:
        click.echo(
            f"  v{row['version']:<5} {row['event_time']}  step {row['step']}  "
            f"weight {row['weight']:.4g}  {row['verdict']}  {row['reason']}"
        )


# -- demo ---------------------------------------------------------------------


@cli.command("demo")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.option(
    "--requests", "n_requests", default=5000, show_default=True, help="Requests to serve."
)
@click.option(
    "--dir",
    "demo_dir",
    default=".shadowline/demo",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where the demo keeps its config, models, warehouse and logs.",
)
def demo_cmd(as_json: bool, n_requests: int, demo_dir: str) -> None:
    """Train two models on a scikit-learn dataset, shadow one with the other, print the summary."""
    from shadowline.demo import format_summary, run_demo

    summary = run_demo(Path(demo_dir), n_requests=n_requests, quiet=as_json)
    if as_json:
        import orjson

        click.echo(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(format_summary(summary))


def main() -> None:
    """Entry point: run the CLI, turning shadowline errors into one-line messages."""
    # Pipelines read these commands' exit codes as verdicts (0 pass/complete, 1 fail/
    # rolled back, 2 inconclusive): any error must exit 3 so it cannot pass for one.
    verdicts = sys.argv[1:3] in (["gate", "check"], ["canary", "run"]) or sys.argv[1:2] == [
        "backtest"
    ]
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(3 if verdicts else exc.exit_code)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(3 if verdicts else 2)
    except ShadowlineError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(3 if verdicts else 1)
    except ModuleNotFoundError as exc:
        missing = MissingExtra.for_module(exc.name or "")
        if missing is None:
            raise
        click.echo(f"error: {missing}", err=True)
        sys.exit(3 if verdicts else 1)
    except KeyboardInterrupt:
        sys.exit(130)
