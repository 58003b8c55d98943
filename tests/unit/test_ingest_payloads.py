"""CloudEvent times and inference payloads as the ingest reads them, no server."""

from __future__ import annotations

import pytest

from shadowline.ingest import _ce_time_ms, payload_rows, production_output


def test_ce_time_reads_rfc3339_with_nanoseconds():
    assert _ce_time_ms("2021-04-10T00:23:26.0789529Z") == 1618014206078
    assert _ce_time_ms("2021-04-10T00:23:26.080736102Z") - _ce_time_ms(
        "2021-04-10T00:23:26.0789529Z"
    ) == 2  # fmt: skip
    assert _ce_time_ms("2021-04-10T02:23:26+02:00") == 1618014206000


@pytest.mark.parametrize("bad", [None, "", "yesterday", "2021-04-10T00:23:26", "9" * 400])
def test_ce_time_without_a_zone_or_unreadable_is_none(bad):
    assert _ce_time_ms(bad) is None


@pytest.mark.parametrize(
    ("payload", "rows"),
    [
        ({"instances": [[1, 2], [3, 4]]}, 2),
        ({"inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP32", "data": []}]}, 3),
        ({"data": {"ndarray": [[1.0, 2.0]]}}, 1),
    ],
)
def test_rows_of_v1_v2_and_seldon_payloads(payload, rows):
    assert payload_rows(payload) == rows


def test_a_payload_in_no_protocol_names_what_it_lacks():
    with pytest.raises(ValueError, match=r"none of 'instances' \(V1\).*keys: \['rows'\]"):
        payload_rows({"rows": []})


def test_production_outputs_take_the_candidates_shape_or_an_error():
    assert production_output({"predictions": [1]}, 1) == (1, None)
    assert production_output({"predictions": [1, 0]}, 2) == ([1, 0], None)
    v2 = {"outputs": [{"name": "predict", "shape": [1, 1], "datatype": "INT64", "data": [2]}]}
    assert production_output(v2, 1) == (2, None)
    assert production_output({"data": {"ndarray": [[0.1, 0.9]]}}, 1) == ([0.1, 0.9], None)
    out, err = production_output({"error": "boom"}, 1)
    assert out is None and err == "ModelServerError: boom"
    out, err = production_output({"predictions": [1]}, 2)
    assert out is None and "1 predictions for 2 instances" in err
    out, err = production_output({"weird": 1}, 1)
    assert out is None and "no predictions or outputs" in err
