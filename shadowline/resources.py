"""Where the installed package data lives (the schemas, the DDL, the broker's POM).

The repository keeps them in ``schemas/`` and ``deploy/``; the package installs them
as ``shadowline.schemas``, ``shadowline.clickhouse`` and ``shadowline.kafka_broker``,
so an editable checkout and a wheel find them the same way.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from shadowline.errors import ShadowlineError


def data_dir(package: str, must_hold: str) -> Path:
    """The directory of data package ``package``; raises naming what is missing when it
    is not installed or does not hold ``must_hold`` (a broken install, not a config
    problem)."""
    try:
        root = resources.files(package)
    except ModuleNotFoundError as exc:
        raise ShadowlineError(
            f"the installed shadowline has no {package} (a broken install: reinstall it)"
        ) from exc
    path = Path(str(root))
    if not (path / must_hold).is_file():
        raise ShadowlineError(
            f"the installed shadowline's {package} lacks {must_hold} at {path} "
            "(a broken install: reinstall it)"
        )
    return path
