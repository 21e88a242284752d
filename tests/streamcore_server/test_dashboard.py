"""GET /dashboard and its static files: served from the app's origin with a strict CSP, the
JavaScript client as a module, the vendored zstd decoder the one the package pins."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from streamcore_server.main import create_app
from streamcore_server.settings import Settings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/db.sqlite", data_dir=str(tmp_path)
    )
    with TestClient(create_app(settings)) as c:
        yield c


def test_the_page_has_a_login_form_and_a_csp_that_allows_its_import_map(
    client: TestClient,
) -> None:
    r = client.get("/dashboard")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert r.headers["x-content-type-options"] == "nosniff"
    html = r.text
    assert '<form id="login-form">' in html
    assert 'type="email"' in html and 'type="password"' in html
    csp = dict(d.split(" ", 1) for d in r.headers["content-security-policy"].split("; "))
    assert csp["default-src"] == "'none'"
    assert csp["connect-src"] == "'self'"
    (importmap,) = re.findall(r'<script type="importmap">(.*?)</script>', html, re.S)
    digest = base64.b64encode(hashlib.sha256(importmap.encode()).digest()).decode()
    assert csp["script-src"] == f"'self' 'sha256-{digest}'"
    assert "'unsafe-inline'" not in r.headers["content-security-policy"]
    assert json.loads(importmap) == {"imports": {"fzstd": "/dashboard/static/vendor/fzstd.js"}}


@pytest.mark.parametrize(
    "path",
    ["dashboard.js", "client/index.js", "client/client.js", "client/frame.js", "vendor/fzstd.js"],
)
def test_scripts_are_served_as_javascript_modules(client: TestClient, path: str) -> None:
    r = client.get(f"/dashboard/static/{path}")
    assert r.status_code == 200
    # Browsers refuse a module script with any other type.
    assert r.headers["content-type"].split(";")[0] == "text/javascript"
    assert "default-src 'none'" in r.headers["content-security-policy"]


def test_the_page_runs_the_package_s_own_client_code(client: TestClient) -> None:
    served = client.get("/dashboard/static/client/client.js").content
    assert served == (REPO / "clients/js/src/client.js").read_bytes()


def test_a_missing_static_file_is_a_json_404(client: TestClient) -> None:
    r = client.get("/dashboard/static/nope.js")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"


def test_no_path_leaves_the_static_directory(client: TestClient) -> None:
    # client/ links to the package's src/; "..", even escaped, stays inside static/.
    for path in ("client/%2e%2e/%2e%2e/__init__.py", "%2e%2e/__init__.py", "client/../../x"):
        r = client.get(f"/dashboard/static/{path}")
        assert r.status_code == 404, path


def test_the_page_answers_other_methods_with_a_json_405(client: TestClient) -> None:
    r = client.post("/dashboard")
    assert r.status_code == 405
    assert r.json()["error"]["code"] == "method_not_allowed"
