import subprocess
import sys

import pytest

from shadowline.config import load_config, parse_config
from shadowline.errors import ConfigError

EXP = {"name": "e", "production_model": "p", "candidates": [{"name": "c", "model": "m:f"}]}


def test_defaults_follow_the_design():
    cfg = parse_config({"experiments": [EXP]}, env={})
    assert cfg.kafka.namespace == "shadowline."
    assert cfg.kafka.topic("requests") == "shadowline.requests"
    assert cfg.warehouse.backend == "embedded"
    assert cfg.warehouse.flush_interval_s <= 1.0
    exp = cfg.experiment("e")
    assert exp is not None and exp.mode == "shadow" and exp.sampling == 1.0


def test_error_names_file_key_value_and_expectation(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(
        '[[experiments]]\nname = "e"\nproduction_model = "p"\nmode = "yolo"\n'
        '[[experiments.candidates]]\nname = "c"\nmodel = "m:f"\ntimeout_ms = -5\n'
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert str(path) in text
    assert "experiments[0].mode = 'yolo'" in text and "'shadow'" in text
    assert "experiments[0].candidates[0].timeout_ms = -5" in text and "greater than 0" in text


def test_unknown_keys_missing_keys_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match=r"warehouse.pth: unknown key"):
        parse_config({"warehouse": {"pth": "x"}}, "f.toml", env={})
    with pytest.raises(
        ConfigError, match=r"experiments\[0\].production_model: required key is missing"
    ):
        parse_config({"experiments": [{"name": "e", "candidates": [EXP["candidates"][0]]}]}, env={})
    bad = tmp_path / "x.toml"
    bad.write_text("[kafka\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.toml")


def test_model_reference_and_candidate_rules():
    bad = dict(EXP, candidates=[{"name": "c", "model": "nocolon"}])
    with pytest.raises(ConfigError, match="expected 'package.module:attribute'"):
        parse_config({"experiments": [bad]}, env={})
    dup = dict(EXP, candidates=[EXP["candidates"][0], EXP["candidates"][0]])
    with pytest.raises(ConfigError, match="candidate names must be unique"):
        parse_config({"experiments": [dup]}, env={})
    none = dict(EXP, candidates=[])
    with pytest.raises(ConfigError, match="at least one"):
        parse_config({"experiments": [none]}, env={})


def test_environment_overrides_and_secrets_stay_hidden():
    env = {
        "SHADOWLINE_KAFKA_BOOTSTRAP": "broker:9093",
        "SHADOWLINE_WAREHOUSE_BACKEND": "clickhouse",
        "SHADOWLINE_WAREHOUSE_URL": "http://u:hunter2@ch:8123/db",
    }
    cfg = parse_config({}, env=env)
    assert cfg.kafka.bootstrap_servers == "broker:9093"
    assert cfg.warehouse.backend == "clickhouse"
    assert "hunter2" not in repr(cfg)
    with pytest.raises(ConfigError) as err:
        parse_config({"warehouse": {"url": "http://u:hunter2@x", "port": "nope"}}, env={})
    assert "hunter2" not in str(err.value)


def test_server_backend_needs_a_url():
    with pytest.raises(ConfigError, match="backend 'clickhouse' needs url"):
        parse_config({"warehouse": {"backend": "clickhouse"}}, env={})


def test_cli_reports_a_bad_config_without_a_traceback(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[kafka]\npartitions = "many"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "shadowline", "query", "SELECT 1", "-c", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"{path}: invalid configuration" in proc.stderr
    assert "kafka.partitions = 'many'" in proc.stderr


def test_the_docker_compose_config_is_valid_with_its_environment():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    compose = (root / "docker-compose.yml").read_text()
    assert (
        "SHADOWLINE_WAREHOUSE_URL: http://shadowline:shadowline@clickhouse:8123/shadowline"
        in compose
    )
    import tomllib

    data = tomllib.loads((root / "deploy/docker/shadowline.toml").read_text())
    cfg = parse_config(
        data,
        env={"SHADOWLINE_WAREHOUSE_URL": "http://shadowline:shadowline@clickhouse:8123/shadowline"},
    )
    assert cfg.warehouse.backend == "clickhouse" and cfg.kafka.bootstrap_servers == "kafka:9092"
    for service in ("kafka:", "clickhouse:", "sink:", "joiner:", "worker:", "topics:"):
        assert f"\n  {service}" in compose


def test_sasl_and_ssl_settings_reach_every_client():
    from shadowline.kafka import client_settings

    cfg = parse_config(
        {
            "kafka": {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "SCRAM-SHA-512",
                "sasl_username": "svc",
                "ssl_ca_location": "/etc/ca.pem",
                "client": {"ssl.endpoint.identification.algorithm": "https"},
            }
        },
        env={"SHADOWLINE_KAFKA_SASL_PASSWORD": "s3cret"},
    )
    settings = client_settings(cfg.kafka)
    assert settings["security.protocol"] == "SASL_SSL"
    assert settings["sasl.mechanism"] == "SCRAM-SHA-512"
    assert settings["sasl.username"] == "svc" and settings["sasl.password"] == "s3cret"
    assert settings["ssl.ca.location"] == "/etc/ca.pem"
    assert settings["ssl.endpoint.identification.algorithm"] == "https"
    assert "s3cret" not in repr(cfg) and "s3cret" not in str(cfg.model_dump())


def test_gate_defaults_come_from_the_seed_and_false_turns_a_rule_off():
    exp = parse_config({"experiments": [EXP]}, env={}).experiments[0]
    assert (exp.gates.max_error_rate, exp.gates.max_p99_latency_ms) == (0.01, 100.0)
    off = dict(EXP, gates={"max_error_rate": False, "max_p99_latency_ms": 250})
    gates = parse_config({"experiments": [off]}, env={}).experiments[0].gates
    assert (gates.max_error_rate, gates.max_p99_latency_ms) == (None, 250.0)
    with pytest.raises(ConfigError, match="min_samples"):
        parse_config({"experiments": [dict(EXP, gates={"min_samples": False})]}, env={})


def test_canary_schedule_and_mode_rules():
    canary = dict(EXP, mode="canary", canary={"steps": [0.1, 0.05]})
    with pytest.raises(ConfigError, match="steps must strictly increase"):
        parse_config({"experiments": [canary]}, env={})
    two = dict(
        EXP, mode="canary", candidates=[EXP["candidates"][0], dict(EXP["candidates"][0], name="z")]
    )
    with pytest.raises(ConfigError, match="exactly one candidate"):
        parse_config({"experiments": [two]}, env={})


def test_new_gate_candidate_and_canary_keys_are_validated():
    gates = (
        parse_config(
            {"experiments": [dict(EXP, gates={"min_interleave_win_share": False})]}, env={}
        )
        .experiments[0]
        .gates
    )
    assert gates.min_interleave_win_share is None  # the gate's own message says to do this
    assert (gates.max_p99_latency_ratio, gates.max_output_shift) == (1.2, 0.1)
    # the retired drift rules stop with a message naming their replacement...
    with pytest.raises(ConfigError, match="max_output_psi.*max_output_shift"):
        parse_config({"experiments": [dict(EXP, gates={"max_output_psi": 0.25})]}, env={})
    # ...unless they only turn themselves off
    parse_config({"experiments": [dict(EXP, gates={"max_output_psi": False})]}, env={})
    cand = dict(EXP["candidates"][0], concurrency=32, max_in_flight=16)
    with pytest.raises(ConfigError, match=r"concurrency \(32\) cannot exceed max_in_flight"):
        parse_config({"experiments": [dict(EXP, candidates=[cand])]}, env={})
    canary = dict(EXP, mode="canary", canary={"min_dwell_s": 600, "max_step_s": 60})
    with pytest.raises(ConfigError, match=r"max_step_s \(60\) must be at least min_dwell_s"):
        parse_config({"experiments": [canary]}, env={})
    slow = dict(EXP, mode="canary", canary={"on_step_timeout": "promote", "max_step_s": 900})
    assert parse_config({"experiments": [slow]}, env={}).experiments[0].canary.on_step_timeout == (
        "promote"
    )


def test_mtls_settings_reach_librdkafka_and_the_key_password_stays_secret():
    from shadowline.kafka import client_settings

    cfg = parse_config(
        {
            "kafka": {
                "security_protocol": "SSL",
                "ssl_ca_location": "/ca.pem",
                "ssl_certificate_location": "/client.pem",
                "ssl_key_location": "/client.key",
                "ssl_key_password": "hunter2",
            }
        },
        env={},
    )
    got = client_settings(cfg.kafka)
    assert got["ssl.certificate.location"] == "/client.pem"
    assert got["ssl.key.location"] == "/client.key"
    assert got["ssl.key.password"] == "hunter2"
    assert "hunter2" not in repr(cfg)


def test_a_certificate_without_its_key_or_tls_is_refused_without_showing_secrets():
    with pytest.raises(ConfigError) as err:
        parse_config(
            {"kafka": {"ssl_certificate_location": "/c.pem", "sasl_password": "hunter2"}}, env={}
        )
    assert "set together (mTLS)" in str(err.value) and "hunter2" not in str(err.value)
    with pytest.raises(ConfigError, match="needs security_protocol SSL or SASL_SSL"):
        parse_config(
            {"kafka": {"ssl_certificate_location": "/c.pem", "ssl_key_location": "/k.pem"}},
            env={},
        )


def test_every_rule_that_can_be_off_accepts_false():
    from shadowline.config import GateConfig

    optional = [
        name for name, f in GateConfig.model_fields.items()
        if name.startswith(("max_", "min_")) and name != "min_samples"
    ]  # fmt: skip
    assert "min_interleave_win_share" in optional and len(optional) >= 12
    gates = GateConfig(**dict.fromkeys(optional, False))
    assert all(getattr(gates, name) is None for name in optional)


def test_the_joiner_state_is_in_the_namespace_unless_named():
    assert parse_config({}, env={}).joiner.app_id == "shadowline.joiner"
    staging = parse_config({"kafka": {"namespace": "staging."}}, env={})
    assert staging.joiner.app_id == "staging.joiner"
    from_env = parse_config({}, env={"SHADOWLINE_KAFKA_NAMESPACE": "prod."})
    assert from_env.joiner.app_id == "prod.joiner"
    named = parse_config({"kafka": {"namespace": "x."}, "joiner": {"app_id": "mine"}}, env={})
    assert named.joiner.app_id == "mine"


def test_a_clickhouse_server_gets_tls_client_certificates():
    from shadowline.warehouse import server_settings

    cfg = parse_config(
        {
            "warehouse": {
                "backend": "clickhouse", "url": "https://u:p@ch.internal:8443/db",
                "ca_cert": "/ca.pem", "client_cert": "/c.pem", "client_key": "/c.key",
            }
        },
        env={},
    )  # fmt: skip
    got = server_settings(cfg, "db")
    assert got["secure"] is True and got["port"] == 8443 and got["host"] == "ch.internal"
    assert (got["ca_cert"], got["client_cert"], got["client_cert_key"]) == (
        "/ca.pem", "/c.pem", "/c.key",
    )  # fmt: skip
    with pytest.raises(ConfigError, match="client_key needs client_cert"):
        parse_config({"warehouse": {"client_key": "/c.key"}}, env={})
