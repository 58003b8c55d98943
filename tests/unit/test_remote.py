"""Model-server references and the Open Inference Protocol / KServe V1 payloads, no server."""

from __future__ import annotations

import pytest

from shadowline.config import parse_config
from shadowline.errors import ConfigError
from shadowline.remote import RemoteModelError, _merge_v2, parse_ref, v1_outputs, v2_outputs


def test_v2_reference_becomes_the_infer_url_with_its_options():
    ref = parse_ref(
        "v2+https://models.example:8443/v2/models/fraud/versions/3"
        "?features=amount,age&input=x&datatype=fp32&outputs=predict_proba&host=fraud.ns.svc"
    )
    assert ref.url == "https://models.example:8443/v2/models/fraud/versions/3/infer"
    assert (ref.protocol, ref.model, ref.features) == ("v2", "fraud", ("amount", "age"))
    assert (ref.input_name, ref.datatype, ref.outputs, ref.host) == (
        "x", "FP32", ("predict_proba",), "fraud.ns.svc",
    )  # fmt: skip


def test_v1_reference_becomes_the_predict_url():
    ref = parse_ref("v1+http://127.0.0.1:8080/v1/models/iris")
    assert ref.url == "http://127.0.0.1:8080/v1/models/iris:predict"
    assert (ref.protocol, ref.features, ref.input_name) == ("v1", None, "input-0")


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("v2+http://h:1/v1/models/x", "/v2/models/NAME"),
        ("v2+http://h:1/v2/models/x/ver/2", "/v2/models/NAME"),
        ("v1+http://h:1/v1/model/x", "/v1/models/NAME"),
        ("v2+http:///v2/models/x", "no host"),
        ("v2+http://h/v2/models/x?colour=red", "unknown parameter"),
        ("v2+http://h/v2/models/x?features=a,,b", "empty name"),
        ("v2+http://h/v2/models/x?input=a&input=b", "exactly one"),
    ],
)
def test_bad_references_say_what_is_wrong(ref, message):
    with pytest.raises(ValueError, match=message):
        parse_ref(ref)


def test_config_refuses_a_bad_server_reference_naming_the_field():
    exp = {
        "name": "e", "production_model": "p",
        "candidates": [{"name": "c", "model": "v2+http://h:1/v2/model/x"}],
    }  # fmt: skip
    with pytest.raises(ConfigError) as err:
        parse_config({"experiments": [exp]}, env={})
    assert "experiments[0].candidates[0].model" in str(err.value)
    assert "/v2/models/NAME" in str(err.value)


def test_v2_outputs_split_by_rows_one_row_is_its_value():
    body = {"outputs": [{"name": "predict", "shape": [3, 1], "datatype": "INT64",
                         "data": [1, 0, 1]}]}  # fmt: skip
    assert v2_outputs(body, [1, 1, 1]) == [1, 0, 1]
    assert v2_outputs(body, [2, 1]) == [[1, 0], 1]


def test_v2_outputs_with_several_tensors_and_trailing_dimensions():
    body = {"outputs": [
        {"name": "label", "shape": [2], "datatype": "INT64", "data": [3, 1]},
        {"name": "proba", "shape": [2, 2], "datatype": "FP32", "data": [[0.1, 0.9], [0.8, 0.2]]},
    ]}  # fmt: skip
    assert v2_outputs(body, [1, 1]) == [
        {"label": 3, "proba": [0.1, 0.9]},
        {"label": 1, "proba": [0.8, 0.2]},
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "no 'outputs'"),
        ({"outputs": []}, "no output tensors"),
        ({"outputs": [{"name": "p", "shape": [2], "data": [1, 2]}]}, "2 rows for 3"),
        ({"outputs": [{"name": "p", "shape": [3, 2], "data": [1, 2]}]}, "2 values for shape"),
        ({"outputs": [{"shape": [3], "data": [1, 2, 3]}]}, "without 'name'"),
    ],
)
def test_v2_answers_outside_the_protocol_are_errors(body, message):
    with pytest.raises(RemoteModelError, match=message):
        v2_outputs(body, [1, 1, 1])


def test_v1_predictions_split_by_instances():
    assert v1_outputs({"predictions": [1, 2, 3]}, [1, 2]) == [1, [2, 3]]
    with pytest.raises(RemoteModelError, match="2 predictions for 3"):
        v1_outputs({"predictions": [1, 2]}, [1, 2])
    with pytest.raises(RemoteModelError, match="no 'predictions'"):
        v1_outputs({"outputs": []}, [1])


def test_v2_requests_are_concatenated_along_the_first_dimension():
    def req(rows):
        return {"inputs": [{"name": "x", "datatype": "FP64", "shape": [len(rows), 2],
                            "data": rows}]}  # fmt: skip

    body, rows = _merge_v2([req([[1, 2]]), req([[3, 4], [5, 6]])])
    assert rows == [1, 2]
    assert body["inputs"] == [{"name": "x", "datatype": "FP64", "shape": [3, 2],
                               "data": [1, 2, 3, 4, 5, 6]}]  # fmt: skip
    other = {"inputs": [{"name": "y", "datatype": "FP64", "shape": [1, 2], "data": [1, 2]}]}
    with pytest.raises(ValueError, match="differ from input 0"):
        _merge_v2([req([[1, 2]]), other])
