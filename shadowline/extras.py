"""Optional parts of shadowline and the install extra that brings each.

``pip install shadowline`` is what a serving process needs (the tap, the router,
in-process interleave and their codecs). The pipeline (workers, joiner, sink,
warehouse, gates, canary, dashboards, demo) comes with ``shadowline[pipeline]``, text
similarity with ``[text]``, MLflow models with ``[mlflow]``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

from shadowline.errors import ShadowlineError

# what each extra is for, for the message
EXTRAS = {
    "pipeline": "the pipeline, warehouse, gates and dashboards",
    "text": "semantic similarity of text outputs",
    "mlflow": "MLflow models as candidates",
}


# top-level modules of each extra's packages
_MODULES = {
    "pipeline": (
        "faust", "mode", "clickhouse_connect", "chdb", "cramjam", "tqdm", "numpy", "sklearn",
        "joblib", "rapidfuzz", "aiohttp",
    ),
    "text": ("wordllama",),
    "mlflow": ("mlflow",),
}  # fmt: skip


class MissingExtra(ShadowlineError):
    """A part of shadowline was used whose install extra is not installed."""

    @classmethod
    def for_module(cls, name: str) -> MissingExtra | None:
        """The error for a missing module ``name`` if an extra brings it, else None."""
        top = name.split(".", 1)[0]
        for extra, modules in _MODULES.items():
            if top in modules:
                return cls(
                    f"{top} is not installed: {EXTRAS[extra]} need "
                    f"`pip install 'shadowline[{extra}]'`"
                )
        return None


def need(module: str, extra: str) -> ModuleType:
    """Import ``module``, or raise ``MissingExtra`` naming the extra that brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = (exc.name or module).split(".", 1)[0]
        raise MissingExtra(
            f"{missing} is not installed: {EXTRAS.get(extra, extra)} need "
            f"`pip install 'shadowline[{extra}]'`"
        ) from exc


def require(extra: str) -> None:
    """Raise ``MissingExtra`` if any package of ``extra`` is not installed (cheap: finds
    the modules without importing them). The pipeline's modules call it first."""
    for module in _MODULES[extra]:
        # Faust replaces its module object (no __spec__) once imported: imported is found.
        if module not in sys.modules and importlib.util.find_spec(module) is None:
            raise MissingExtra(
                f"{module} is not installed: {EXTRAS[extra]} need "
                f"`pip install 'shadowline[{extra}]'`"
            )
