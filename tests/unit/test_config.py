"""Unit tests of configuration loading: flags > env > TOML file > defaults, and one clear
ConfigError naming the key for every bad value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gurukul_fast.config import Config, ConfigError, load_config


def write_toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "gurukul.toml"
    path.write_text(text)
    return str(path)


def config_error(**kwargs: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(**kwargs)
    message = str(caught.value)
    assert "\n" not in message.strip(), "a config error is one line"
    return message


def test_defaults_match_the_design() -> None:
    config = load_config(env={})
    assert config == Config()
    assert config.ws_port == 3001
    assert config.ws_path == "/ws"
    assert config.max_connections == 10_000
    assert config.message_rate_limit == 100
    assert config.max_message_length == 4000
    assert config.max_frame_bytes == 64 * 1024
    assert config.write_buffer_cap_bytes == 1024 * 1024
    assert config.connection_timeout == 10.0
    assert config.ping_interval == 30.0
    assert config.batch_interval_ms == 100
    assert config.history_page_size == 50
    assert config.jwt_secret is None
    assert config.jwt_algorithms == ("HS256",)


def test_environment_uses_spec_names() -> None:
    config = load_config(
        env={
            "WS_PORT": "4000",
            "WS_PATH": "/chat",
            "JWT_SECRET": "s3cret",
            "MAX_CONNECTIONS": "42",
            "MESSAGE_RATE_LIMIT": "7",
            "CONNECTION_TIMEOUT": "2.5",
            "JWT_ALGORITHMS": "HS256, HS512",
        }
    )
    assert config.ws_port == 4000
    assert config.ws_path == "/chat"
    assert config.jwt_secret == "s3cret"
    assert config.max_connections == 42
    assert config.message_rate_limit == 7
    assert config.connection_timeout == 2.5
    assert config.jwt_algorithms == ("HS256", "HS512")


def test_empty_environment_values_are_ignored() -> None:
    assert load_config(env={"WS_PORT": "", "JWT_SECRET": ""}) == Config()


def test_toml_file_keys_in_any_case(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        'WS_PORT = 4100\nmax_connections = 5\nJwt_Secret = "from-file"\n'
        'jwt_algorithms = ["HS384"]\nping_interval = 3\n',
    )
    config = load_config(env={}, config_file=path)
    assert config.ws_port == 4100
    assert config.max_connections == 5
    assert config.jwt_secret == "from-file"
    assert config.jwt_algorithms == ("HS384",)
    assert config.ping_interval == 3.0


def test_precedence_flags_over_env_over_file_over_defaults(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        "ws_port = 1111\nmax_connections = 11\nmessage_rate_limit = 12\nmax_message_length = 13\n",
    )
    config = load_config(
        {"ws_port": 3333},
        env={"WS_PORT": "2222", "MAX_CONNECTIONS": "22"},
        config_file=path,
    )
    assert config.ws_port == 3333  # flag beats env and file
    assert config.max_connections == 22  # env beats file
    assert config.message_rate_limit == 12  # file beats default
    assert config.max_message_length == 13
    assert config.ping_interval == 30.0  # default


def test_none_flag_means_not_given(tmp_path: Path) -> None:
    config = load_config({"ws_port": None}, env={"WS_PORT": "2222"})
    assert config.ws_port == 2222


def test_flags_accept_strings_like_the_cli_passes_them() -> None:
    config = load_config({"WS_PORT": "5000", "ping_timeout": "1.5"}, env={})
    assert config.ws_port == 5000
    assert config.ping_timeout == 1.5


def test_config_file_named_by_environment(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "max_connections = 77\n")
    assert load_config(env={"GURUKUL_CONFIG": path}).max_connections == 77


# ---------------------------------------------------------------- errors name the key


def test_bad_integer_in_env_names_the_key() -> None:
    message = config_error(env={"MAX_CONNECTIONS": "lots"})
    assert "MAX_CONNECTIONS" in message
    assert "lots" in message


def test_bad_float_in_env_names_the_key() -> None:
    assert "PING_INTERVAL" in config_error(env={"PING_INTERVAL": "soon"})


def test_bad_type_in_file_names_the_key(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'max_connections = "many"\n')
    assert "MAX_CONNECTIONS" in config_error(env={}, config_file=path)


def test_bad_flag_value_names_the_key() -> None:
    assert "WS_PORT" in config_error(overrides={"ws_port": "eighty"}, env={})


def test_unknown_key_in_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "ws_prot = 3001\n")
    message = config_error(env={}, config_file=path)
    assert "ws_prot" in message
    assert "unknown" in message.lower()


def test_unknown_flag() -> None:
    message = config_error(overrides={"max_conections": 3}, env={})
    assert "max_conections" in message


def test_unknown_environment_variables_are_not_config() -> None:
    # The environment holds everything (PATH, HOME…): only known names are read.
    assert load_config(env={"PATH": "/bin", "WS_PROT": "1"}) == Config()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("MAX_CONNECTIONS", "0"),
        ("MAX_CONNECTIONS_PER_USER", "-1"),
        ("MESSAGE_RATE_LIMIT", "0"),
        ("MAX_MESSAGE_LENGTH", "0"),
        ("MAX_FRAME_BYTES", "-5"),
        ("WRITE_BUFFER_CAP_BYTES", "0"),
        ("HISTORY_PAGE_SIZE", "0"),
        ("PING_INTERVAL", "0"),
        ("CONNECTION_TIMEOUT", "-1"),
        ("TYPING_TIMEOUT", "0"),
        ("DRAIN_TIMEOUT", "0"),
        ("WS_PORT", "70000"),
        ("WS_PORT", "-1"),
        ("WS_PATH", "ws"),
        ("LOG_FORMAT", "xml"),
    ],
)
def test_out_of_range_values_name_the_key(key: str, value: str) -> None:
    assert key in config_error(env={key: value})


def test_tls_cert_and_key_go_together() -> None:
    message = config_error(env={"TLS_CERT": "/etc/cert.pem"})
    assert "TLS_CERT" in message
    assert "TLS_KEY" in message


def test_missing_config_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.toml")
    assert missing in config_error(env={}, config_file=missing)


def test_invalid_toml(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "ws_port = = 1\n")
    assert "TOML" in config_error(env={}, config_file=path)


def test_zero_port_is_allowed_for_tests() -> None:
    assert load_config({"ws_port": 0}, env={}).ws_port == 0


def test_secret_file_lives_in_data_dir(tmp_path: Path) -> None:
    config = load_config({"data_dir": str(tmp_path)}, env={})
    assert config.secret_file == tmp_path / "jwt-secret"
