import pytest

from streamcore_server.settings import Settings, SettingsError


def test_defaults_run_alone() -> None:
    s = Settings.from_env({})
    assert (s.host, s.port) == ("127.0.0.1", 4000)
    assert s.database_url.startswith("sqlite+aiosqlite:///")
    assert s.redis_url is None
    assert (s.window_min_ms, s.window_max_ms, s.window_flush_budget) == (30.0, 150.0, 0.4)


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
        ("WINDOW_FLUSH_BUDGET", "0"),
        ("WINDOW_FLUSH_BUDGET", "1.5"),
        ("ZSTD_LEVEL", "23"),
        ("COMPRESSION_THRESHOLD", "-5"),
        ("LOG_LEVEL", "loud"),
        ("JWT_SECRET", "too-short"),
        ("TOKEN_TTL_S", "0"),
        ("MAX_BODY_BYTES", "-1"),
        ("MAX_BODY_BYTES", "32MiB"),
        ("CORS_ORIGINS", "*"),
        ("CORS_ORIGINS", "https://ok.test,ftp://files.test"),
        ("MAX_AMOUNT_CENTS", "0"),
        ("MAX_AMOUNT_CENTS", str(10**16)),
        ("PAGE_SIZE_DEFAULT", "500"),
        ("PAGE_SIZE_MAX", "0"),
        ("LOGIN_MAX_FAILURES", "none"),
        ("SEED_DEMO", "maybe"),
    ],
)
def test_bad_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name) as caught:
        Settings.from_env({name: value})
    if name == "JWT_SECRET":  # start-up prints the message: a secret's value stays out of it
        assert value not in str(caught.value)
    else:
        assert repr(value) in str(caught.value) or value in str(caught.value)


def test_every_bad_value_is_named_at_once() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"PORT": "http", "ZSTD_LEVEL": "23"})
    assert "PORT='http'" in str(caught.value) and "ZSTD_LEVEL='23'" in str(caught.value)


def test_names_are_read_exactly() -> None:
    s = Settings.from_env({"port": "1", "DATABASE_REPLICA_URLS": PG, "LOG_LEVEL": ""})
    assert (s.port, s.database_replica_urls, s.log_level) == (4000, (), "info")


def test_overrides_are_validated_like_the_environment() -> None:
    with pytest.raises(SettingsError, match="PORT=70000"):
        Settings(port=70000)
    with pytest.raises(SettingsError, match="WINDOW_MIN_MS"):
        Settings(window_min_ms=200.0)
    s = Settings(cors_origins=["https://a.test/"])
    assert s.cors_origins == ("https://a.test",)
    assert s.replace(workers=3).workers == 3
    with pytest.raises(SettingsError, match="WORKERS=0"):
        s.replace(workers=0)
    with pytest.raises(ValueError, match="frozen"):
        s.port = 1  # type: ignore[misc]


def test_window_bounds_must_be_ordered() -> None:
    with pytest.raises(SettingsError, match="WINDOW_MIN_MS"):
        Settings.from_env({"WINDOW_MIN_MS": "200", "WINDOW_MAX_MS": "150"})


def test_app_defaults() -> None:
    s = Settings.from_env({})
    assert s.max_body_bytes == 32 * 1024 * 1024
    assert len(s.cors_origins) == 3
    assert s.jwt_secret is None  # generated into DATA_DIR at start-up
    assert (s.data_dir, s.token_ttl_s) == ("./var", 3600)
    assert (s.page_size_default, s.page_size_max) == (50, 200)
    assert s.seed_demo is True


def test_reads_the_app_settings() -> None:
    s = Settings.from_env(
        {
            "JWT_SECRET": "k" * 32,
            "CORS_ORIGINS": " https://a.test/ , http://localhost:3000 ",
            "MAX_BODY_BYTES": "1024",
            "SEED_DEMO": "off",
            "PAGE_SIZE_MAX": "10",
            "PAGE_SIZE_DEFAULT": "10",
        }
    )
    assert s.cors_origins == ("https://a.test", "http://localhost:3000")
    assert (s.max_body_bytes, s.seed_demo, s.page_size_max) == (1024, False, 10)
    assert s.jwt_secret == "k" * 32


def test_the_secret_never_shows_in_repr() -> None:
    assert "k" * 32 not in repr(Settings.from_env({"JWT_SECRET": "k" * 32}))
    secrets = ("METRICS_TOKEN", "WATCH_PASSWORD", "WATCH_TOKEN", "EDGE_FASTLY_API_TOKEN")
    shown = repr(Settings.from_env({name: f"secret-of-{name}" for name in secrets}))
    assert "secret-of" not in shown


def test_no_password_in_a_url_shows_in_repr_or_in_an_error() -> None:
    env = {
        "DATABASE_URL": "postgresql+asyncpg://app:pw-of-db@db.test:5432/app",
        "DATABASE_REPLICA_URL": "postgresql+asyncpg://app:pw-of-replica@standby.test/app",
        "REDIS_URL": "redis://:pw-of-redis@cache.test:6379/0",
    }
    shown = repr(Settings.from_env(env))
    assert "pw-of" not in shown
    assert "postgresql+asyncpg://app:***@db.test:5432/app" in shown  # the rest stays readable
    assert "redis://:***@cache.test:6379/0" in shown
    # A field's error and a cross-field rule's both quote what was set, masked.
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({**env, "DATABASE_REPLICA_URL": "mysql://app:pw-of-mysql@m.test/app"})
    assert "pw-of" not in str(caught.value) and "mysql://app:***@m.test/app" in str(caught.value)
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({**env, "DATABASE_URL": "sqlite+aiosqlite://u:pw-of-sqlite@/x.db"})
    assert "pw-of" not in str(caught.value) and "DATABASE_URL=" in str(caught.value)


PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/app"


def test_replicas_are_a_list_of_postgresql_standbys() -> None:
    s = Settings.from_env(
        {
            "DATABASE_URL": PG,
            "DATABASE_REPLICA_URL": f" {PG}1 , {PG}2,",
            "DATABASE_REPLICA_MAX_LAG_S": "2.5",
        }
    )
    assert s.database_replica_urls == (f"{PG}1", f"{PG}2")
    assert (s.database_replica_max_lag_s, s.read_your_writes_ttl_s) == (2.5, 10.0)
    assert Settings.from_env({}).database_replica_urls == ()


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"DATABASE_URL": PG, "DATABASE_REPLICA_URL": "sqlite+aiosqlite:///r.db"}, "REPLICA_URL"),
        ({"DATABASE_REPLICA_URL": PG}, "DATABASE_URL"),  # the embedded SQLite has no standby
        ({"DATABASE_URL": PG, "DATABASE_REPLICA_MAX_LAG_S": "0"}, "MAX_LAG_S"),
        ({"DATABASE_URL": PG, "DATABASE_REPLICA_MAX_LAG_S": "20"}, "READ_YOUR_WRITES_TTL_S"),
    ],
)
def test_bad_replica_settings_fail_start_up(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(env)
