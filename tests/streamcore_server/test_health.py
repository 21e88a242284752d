from sqlalchemy.ext.asyncio import create_async_engine
from starlette.testclient import TestClient

from streamcore_server.main import create_app
from streamcore_server.settings import Settings


def test_healthz_and_readyz_with_embedded_defaults(tmp_path) -> None:
    app = create_app(
        Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/db.sqlite", data_dir=str(tmp_path))
    )
    with TestClient(app) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["status"] == "ready"


def test_readyz_reports_redis(redis_url: str, tmp_path) -> None:
    app = create_app(
        Settings(
            redis_url=redis_url,
            database_url=f"sqlite+aiosqlite:///{tmp_path}/db.sqlite",
            data_dir=str(tmp_path),
        )
    )
    with TestClient(app) as client:
        body = client.get("/readyz").json()
        assert body["checks"]["redis"] == "ok"


def test_readyz_is_503_when_redis_is_down(tmp_path) -> None:
    # Port 1 on loopback refuses connections: a dependency that does not answer.
    app = create_app(
        Settings(
            redis_url="redis://127.0.0.1:1/0", database_url=f"sqlite+aiosqlite:///{tmp_path}/d"
        )
    )
    with TestClient(app) as client:
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["checks"]["redis"].startswith("error")


def test_readyz_checks_the_database(tmp_path) -> None:
    app = create_app(
        Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/db.sqlite", data_dir=str(tmp_path))
    )
    with TestClient(app) as client:
        assert client.get("/readyz").json()["checks"]["database"] == "ok"

        # A database that cannot be opened: SQLite refuses a directory as its file.
        working, app.state.db = app.state.db, create_async_engine(f"sqlite+aiosqlite:///{tmp_path}")
        try:
            response = client.get("/readyz")
            assert response.status_code == 503
            assert response.json()["checks"]["database"].startswith("error")
        finally:
            client.portal.call(app.state.db.dispose)
            app.state.db = working


def test_unknown_path_is_json_404(tmp_path) -> None:
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/db", data_dir=str(tmp_path))
    with TestClient(create_app(settings)) as client:
        response = client.get("/nope")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
