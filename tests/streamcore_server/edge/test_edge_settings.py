"""EDGE_* settings: one provider names the purger and the headers; bad values fail start-up."""

from __future__ import annotations

import pytest

from streamcore_server.edge.policy import purger_for
from streamcore_server.edge.purge import CloudflarePurger, FastlyPurger, VarnishPurger
from streamcore_server.settings import Settings, SettingsError


def test_the_provider_picks_the_purger() -> None:
    varnish = Settings.from_env(
        {"EDGE_PROVIDER": "Varnish", "EDGE_PURGE_URLS": "http://127.0.0.1:6081/, http://h:1"}
    )
    assert varnish.edge_purge_urls == ("http://127.0.0.1:6081", "http://h:1")
    assert isinstance(purger_for(varnish), VarnishPurger)
    fastly = Settings.from_env(
        {
            "EDGE_PROVIDER": "fastly",
            "EDGE_FASTLY_SERVICE_ID": "s",
            "EDGE_FASTLY_API_TOKEN": "fastly-token-xyz",
        }
    )
    assert isinstance(purger_for(fastly), FastlyPurger)
    assert "fastly-token-xyz" not in repr(fastly)
    cloudflare = Settings.from_env(
        {
            "EDGE_PROVIDER": "cloudflare",
            "EDGE_CLOUDFLARE_ZONE_ID": "z",
            "EDGE_CLOUDFLARE_API_TOKEN": "t",
        }
    )
    assert isinstance(purger_for(cloudflare), CloudflarePurger)
    assert purger_for(Settings.from_env({})) is None


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"EDGE_PROVIDER": "akamai"}, "EDGE_PROVIDER"),
        ({"EDGE_PROVIDER": "varnish"}, "EDGE_PURGE_URLS"),
        ({"EDGE_PROVIDER": "fastly", "EDGE_FASTLY_SERVICE_ID": "s"}, "EDGE_FASTLY_API_TOKEN"),
        ({"EDGE_PROVIDER": "cloudflare"}, "EDGE_CLOUDFLARE_ZONE_ID"),
        ({"EDGE_PURGE_URLS": "127.0.0.1:6081"}, "EDGE_PURGE_URLS"),
        ({"EDGE_TTL_S": "0"}, "EDGE_TTL_S"),
        ({"EDGE_PURGE_REPEAT_S": "-1"}, "EDGE_PURGE_REPEAT_S"),
    ],
)
def test_bad_edge_settings_fail_naming_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(env)
