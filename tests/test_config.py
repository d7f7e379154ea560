"""Configuration: defaults run as they are; files and environment override, typos fail."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamer.runtime import config


def test_defaults_load_and_make_sense() -> None:
    cfg = config.load(env={})
    assert cfg.server.port == 8080
    assert cfg.model.name == "fake"
    assert cfg.model_count >= 1


def test_environment_overrides_by_derived_names() -> None:
    cfg = config.load(env={"STREAMER_SERVER_PORT": "9001", "STREAMER_MODEL_FAKE_CONSTANT_FACTOR": "0.25",
                           "STREAMER_ACTORS_MODELS": "3"})
    assert (cfg.server.port, cfg.model.fake.constant_factor, cfg.model_count) == (9001, 0.25, 3)


def test_file_overrides_defaults_and_env_overrides_file(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("[server]\nport = 7000\nhost = '0.0.0.0'\n")
    cfg = config.load(env={"STREAMER_CONFIG": str(f), "STREAMER_SERVER_PORT": "7001"})
    assert (cfg.server.host, cfg.server.port) == ("0.0.0.0", 7001)


def test_unknown_keys_and_bad_values_are_errors(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("[server]\nprot = 7000\n")
    with pytest.raises(ValueError, match=r"server\.prot"):
        config.load(env={"STREAMER_CONFIG": str(f)})
    with pytest.raises(ValueError, match="STREAMER_SERVER_PORT"):
        config.load(env={"STREAMER_SERVER_PORT": "eighty"})
    with pytest.raises(ValueError, match="read_hold_ms"):  # a longer hold would hold up pings and closes
        config.load(env={"STREAMER_FRONT_READ_HOLD_MS": "500"})
    for name in ("LIMITS_IDLE_TIMEOUT_S", "LIMITS_MAX_SESSION_S", "SECURITY_AUTH_TIMEOUT_S"):
        with pytest.raises(ValueError, match=name.split("_", 1)[1].lower()):  # due at once, for ever: refused
            config.load(env={f"STREAMER_{name}": "0"})


def test_round_trips_through_plain_data_for_children() -> None:
    cfg = config.load(env={})
    assert config.from_dict(cfg.to_dict()) == cfg


def test_pools_too_small_for_the_limits_are_refused_at_start() -> None:
    from streamer.runtime.topology import Topology

    Topology(config.load(env={})).check_pools()  # the defaults carry what they let in
    with pytest.raises(ValueError, match="max_frame_bytes"):
        Topology(config.load(env={"STREAMER_POOLS_FRONT_SLOTS": "64"})).check_pools()
    with pytest.raises(ValueError, match="max_segment_s"):
        Topology(config.load(env={"STREAMER_SEGMENTER_MAX_SEGMENT_S": "120"})).check_pools()


def test_lists_come_from_the_environment_as_json_arrays_or_comma_separated() -> None:
    both = ["https://a.example", "https://b.example"]
    for raw in ('["https://a.example", "https://b.example"]', "https://a.example,https://b.example",
                " https://a.example , https://b.example, "):
        assert config.load(env={"STREAMER_SECURITY_ORIGINS": raw}).security.origins == both, raw
    for raw in ("[]", ""):
        assert config.load(env={"STREAMER_SECURITY_ORIGINS": raw}).security.origins == []
    with pytest.raises(ValueError, match="STREAMER_SECURITY_ORIGINS must be a JSON array"):
        config.load(env={"STREAMER_SECURITY_ORIGINS": '["https://a.example"'})
    with pytest.raises(ValueError, match=r"origins\[0\]"):  # the items' type is checked with the rest
        config.load(env={"STREAMER_SECURITY_ORIGINS": "[1, 2]"})


def test_trusted_proxies_are_addresses_or_networks_and_anything_else_fails_at_start() -> None:
    assert config.load(env={}).server.trusted_proxies == []  # by default X-Forwarded-For is believed from nobody
    cfg = config.load(env={"STREAMER_SERVER_TRUSTED_PROXIES": "127.0.0.1,10.0.0.0/8,::1"})
    assert cfg.server.trusted_proxies == ["127.0.0.1", "10.0.0.0/8", "::1"]
    for bad in ("10.0.0.0/33", "haproxy", "127.0.0.1:8080"):
        with pytest.raises(ValueError, match=f"trusted_proxies.*{bad}"):
            config.load(env={"STREAMER_SERVER_TRUSTED_PROXIES": bad})


def test_one_port_for_both_apis_fails_at_start() -> None:
    """Both would listen with SO_REUSEPORT and share it, each taking half the other's clients."""
    with pytest.raises(ValueError, match=r"grpc_port: 9001 is also server\.port"):
        config.load(env={"STREAMER_SERVER_PORT": "9001", "STREAMER_SERVER_GRPC_PORT": "9001"})
    assert config.load(env={"STREAMER_SERVER_PORT": "9001", "STREAMER_SERVER_GRPC_PORT": "0"}).server.grpc_port == 0
