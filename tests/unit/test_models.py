import joblib
import numpy as np
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression

from shadowline.errors import ModelLoadError
from shadowline.models import load_model


def test_callable_and_class_references():
    echo = load_model("tests.fixtures.models:EchoModel")
    x = [{"label": 1, "probabilities": {"0": 0.0, "1": 1.0}}]
    assert echo.predict_batch(x) == x


def test_wrong_number_of_outputs_is_an_error():
    bad = load_model("tests.unit.test_models:_returns_too_few")
    with pytest.raises(ValueError, match="returned 0 outputs for 2 inputs"):
        bad.predict_batch([{}, {}])


def _returns_too_few(inputs):
    return []


def test_joblib_classifier_and_regressor(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2))
    clf = LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))
    joblib.dump({"model": clf, "features": ["a", "b"]}, tmp_path / "clf.joblib")
    model = load_model("file:clf.joblib", tmp_path)
    out = model.predict_batch([{"a": 3.0, "b": 0.0}, {"features": [-3.0, 0.0]}])
    assert out[0]["label"] == 1 and out[1]["label"] == 0
    assert sum(out[0]["probabilities"].values()) == pytest.approx(1.0)
    reg = LinearRegression().fit(x, x[:, 0] * 2)
    joblib.dump(reg, tmp_path / "reg.joblib")
    value = load_model(f"file:{tmp_path / 'reg.joblib'}").predict_batch([{"features": [1.0, 0.0]}])
    assert value[0] == pytest.approx(2.0)
    with pytest.raises(KeyError, match="lacks feature 'b'"):
        model.predict_batch([{"a": 1.0}])


@pytest.mark.parametrize(
    ("ref", "text"),
    [
        ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
        ("json:no_such_attr", "json has no attribute 'no_such_attr'"),
        ("file:/nonexistent/model.joblib", "does not exist"),
        ("json:__doc__", "is not callable"),
    ],
)
def test_bad_references_say_what_is_wrong(ref, text):
    with pytest.raises(ModelLoadError, match=text):
        load_model(ref)


def test_mlflow_without_the_extra_names_it():
    try:
        import mlflow  # noqa: F401
    except ImportError:
        with pytest.raises(ModelLoadError, match=r"shadowline\[mlflow\]"):
            load_model("mlflow:models:/x/1")
    else:
        with pytest.raises(ModelLoadError, match="cannot load MLflow model"):
            load_model("mlflow:/nonexistent/model")
