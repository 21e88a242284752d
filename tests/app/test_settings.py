import pytest

from app.settings import Settings, SettingsError


def test_defaults_run_alone() -> None:
    s = Settings.from_env({})
    assert (s.host, s.port) == ("127.0.0.1", 4000)
    assert s.database_url.startswith("sqlite+aiosqlite:///")
    assert s.redis_url is None
    assert (s.window_min_ms, s.window_max_ms) == (30.0, 150.0)


def test_reads_host_port_and_urls() -> None:
    s = Settings.from_env(
        {
            "HOST": "0.0.0.0",
            "PORT": "8080",
            "REDIS_URL": "redis://x:1/0",
            "DATABASE_URL": "sqlite://",
        }
    )
    assert (s.host, s.port, s.redis_url, s.database_url) == (
        "0.0.0.0",
        8080,
        "redis://x:1/0",
        "sqlite://",
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "http"),
        ("PORT", "70000"),
        ("WINDOW_MIN_MS", "nan"),
        ("WINDOW_MAX_MS", "-1"),
        ("ZSTD_LEVEL", "23"),
        ("COMPRESSION_THRESHOLD", "-5"),
        ("LOG_LEVEL", "loud"),
    ],
)
def test_bad_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_window_bounds_must_be_ordered() -> None:
    with pytest.raises(SettingsError, match="WINDOW_MIN_MS"):
        Settings.from_env({"WINDOW_MIN_MS": "200", "WINDOW_MAX_MS": "150"})
