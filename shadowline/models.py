"""Model adapters: turn a model reference from the config into ``predict_batch``.

References:
- ``package.module:attribute``: a callable taking a list of input dicts and
  returning a list of outputs (a class is instantiated with no arguments first);
- ``file:path.joblib``: a scikit-learn estimator saved with joblib;
- ``mlflow:<model uri>``: an MLflow pyfunc model (extra ``shadowline[mlflow]``);
- ``v2+http://host:port/v2/models/NAME`` or ``v1+http://…/v1/models/NAME``: a model
  served by KServe, Triton, MLServer or Seldon, called over HTTP (``shadowline.remote``).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from shadowline.errors import ModelLoadError


class Model(Protocol):
    """Anything that maps a batch of input dicts to as many outputs."""

    def predict_batch(self, inputs: Sequence[dict[str, Any]]) -> list[Any]: ...


class CallableModel:
    """A user callable: ``fn(list_of_inputs) -> list_of_outputs``."""

    def __init__(self, fn: Callable[[list[dict[str, Any]]], Sequence[Any]], name: str) -> None:
        self._fn = fn
        self.name = name

    def predict_batch(self, inputs: Sequence[dict[str, Any]]) -> list[Any]:
        outputs = self._fn(list(inputs))
        return _checked(outputs, len(inputs), self.name)


def _checked(outputs: Any, n: int, name: str) -> list[Any]:
    if outputs is None or isinstance(outputs, str | bytes | dict):
        raise TypeError(f"{name} returned {type(outputs).__name__}, expected a list of {n} outputs")
    outputs = list(outputs)
    if len(outputs) != n:
        raise ValueError(f"{name} returned {len(outputs)} outputs for {n} inputs")
    return outputs


class SklearnModel:
    """A scikit-learn estimator. Inputs give features by name or as a ``features`` list.

    Classifiers with ``predict_proba`` yield ``{"label", "probabilities"}``;
    others yield what ``predict`` returns, as plain JSON values.
    """

    def __init__(self, estimator: Any, name: str, feature_names: Sequence[str] | None) -> None:
        self._est = estimator
        self.name = name
        names = feature_names
        if names is None and hasattr(estimator, "feature_names_in_"):
            names = [str(n) for n in estimator.feature_names_in_]
        self._features = list(names) if names is not None else None
        self._proba = hasattr(estimator, "predict_proba") and hasattr(estimator, "classes_")

    def _matrix(self, inputs: Sequence[dict[str, Any]]) -> Any:
        import numpy as np

        rows = []
        for i, item in enumerate(inputs):
            if "features" in item and isinstance(item["features"], list):
                rows.append(item["features"])
            elif self._features is not None:
                try:
                    rows.append([item[f] for f in self._features])
                except KeyError as exc:
                    raise KeyError(f"input {i} lacks feature {exc.args[0]!r}") from None
            else:
                raise ValueError(
                    f"input {i} has no 'features' list and the model records no feature names"
                )
        return np.asarray(rows, dtype=float)

    def predict_batch(self, inputs: Sequence[dict[str, Any]]) -> list[Any]:
        x = self._matrix(inputs)
        if self._proba:
            proba = self._est.predict_proba(x)
            classes = [_plain(c) for c in self._est.classes_]
            out = []
            for row in proba:
                best = int(row.argmax())
                out.append(
                    {
                        "label": classes[best],
                        "probabilities": {
                            str(c): float(p) for c, p in zip(classes, row, strict=True)
                        },
                    }
                )
            return out
        return [_plain(v) for v in self._est.predict(x)]


def _plain(value: Any) -> Any:
    item = getattr(value, "item", None)
    return item() if callable(item) else value


class MlflowModel:
    """An MLflow pyfunc model, fed a DataFrame built from the input dicts."""

    def __init__(self, uri: str) -> None:
        try:
            import mlflow.pyfunc
            import pandas
        except ImportError as exc:
            raise ModelLoadError(
                "mlflow models need the extra: pip install 'shadowline[mlflow]'"
            ) from exc
        self._pd = pandas
        self.name = uri
        try:
            self._model = mlflow.pyfunc.load_model(uri)
        except Exception as exc:
            raise ModelLoadError(f"cannot load MLflow model {uri!r}: {exc}") from exc

    def predict_batch(self, inputs: Sequence[dict[str, Any]]) -> list[Any]:
        result = self._model.predict(self._pd.DataFrame(list(inputs)))
        if hasattr(result, "to_dict"):
            result = (
                result.to_dict(orient="records") if hasattr(result, "columns") else list(result)
            )
        return _checked([_plain(v) for v in result], len(inputs), self.name)


def load_model(
    ref: str, base_dir: Path | None = None, *, timeout_s: float = 1.0, max_connections: int = 16
) -> Model:
    """Resolve a model reference; raises ``ModelLoadError`` naming what went wrong.

    ``timeout_s`` and ``max_connections`` apply to model servers (the HTTP call's
    timeout, so a hung server frees its call slot; the connection pool's size)."""
    from shadowline.remote import RemoteModel, is_remote

    if is_remote(ref):
        return RemoteModel(ref, timeout_s=timeout_s, max_connections=max_connections)
    if ref.startswith("mlflow:"):
        return MlflowModel(ref.removeprefix("mlflow:"))
    if ref.startswith("file:"):
        return _load_file(ref.removeprefix("file:"), base_dir)
    module_name, _, attr = ref.partition(":")
    if base_dir is not None and str(base_dir) not in sys.path:
        sys.path.append(str(base_dir))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelLoadError(f"model {ref!r}: cannot import module {module_name!r}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ModelLoadError(
                f"model {ref!r}: {module_name} has no attribute {attr!r}"
            ) from None
    if isinstance(obj, type):
        try:
            obj = obj()
        except Exception as exc:
            raise ModelLoadError(f"model {ref!r}: constructing {attr} failed: {exc}") from exc
    if hasattr(obj, "predict_batch"):
        return obj  # type: ignore[no-any-return]
    if not callable(obj):
        raise ModelLoadError(f"model {ref!r} is not callable")
    return CallableModel(obj, ref)


def _load_file(path_text: str, base_dir: Path | None) -> Model:
    path = Path(path_text).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.exists():
        raise ModelLoadError(f"model file {path} does not exist")
    try:
        import joblib

        loaded = joblib.load(path)
    except Exception as exc:
        raise ModelLoadError(f"cannot load model file {path}: {exc}") from exc
    # A dict lets users ship the feature order alongside the estimator.
    if isinstance(loaded, dict) and "model" in loaded:
        return SklearnModel(loaded["model"], str(path), loaded.get("features"))
    if not hasattr(loaded, "predict"):
        raise ModelLoadError(f"model file {path} holds {type(loaded).__name__}, not an estimator")
    return SklearnModel(loaded, str(path), None)
