"""Package data and extras: a broken or slim install says what is missing."""

from __future__ import annotations

import pytest

from shadowline import resources, warehouse
from shadowline.errors import ShadowlineError, WarehouseError
from shadowline.extras import MissingExtra, need


def test_the_data_packages_hold_what_the_code_reads():
    assert (resources.data_dir("shadowline.schemas", "request.avsc") / "previous").is_dir()
    ddl = warehouse.ddl_statements("db")
    assert ddl[0] == "CREATE DATABASE IF NOT EXISTS db"
    assert any(s.startswith("CREATE TABLE IF NOT EXISTS db.comparisons") for s in ddl)
    assert "FROM db.comparisons" in warehouse.named_query("gate_figures", "db")


def test_missing_ddl_is_an_error_not_an_empty_list(tmp_path, monkeypatch):
    (tmp_path / "001_comparisons.sql").write_text("CREATE TABLE IF NOT EXISTS {db}.x (a Int8)")
    monkeypatch.setattr(warehouse, "DDL_DIR", tmp_path)
    with pytest.raises(WarehouseError, match="holds 1 DDL files, 8 expected"):
        warehouse.ddl_statements("db")


def test_a_missing_data_package_or_file_names_itself():
    with pytest.raises(ShadowlineError, match="has no shadowline.nothing_here"):
        resources.data_dir("shadowline.nothing_here", "x")
    with pytest.raises(ShadowlineError, match="lacks missing.avsc"):
        resources.data_dir("shadowline.schemas", "missing.avsc")


def test_a_missing_extra_names_the_extra():
    err = MissingExtra.for_module("numpy.linalg")
    assert err is not None and "pip install 'shadowline[pipeline]'" in str(err)
    assert "shadowline[text]" in str(MissingExtra.for_module("wordllama"))
    assert MissingExtra.for_module("not_ours") is None
    with pytest.raises(MissingExtra, match=r"no_such_module is not installed.*\[mlflow\]"):
        need("no_such_module", "mlflow")
