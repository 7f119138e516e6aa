"""/docs and /redoc load from this server alone: every page reference, no other host.

The real-server test starts ``twotower serve`` on a free loopback port, reads
each docs page, follows every ``src``/``href`` (and the schema URL the page's
script loads, and every ``url(...)`` in the stylesheets), and fetches each
from the same server. The in-process tests cover a root path (the app mounted
under a prefix), the metrics labels of the docs routes, and a server whose
docs assets are missing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.routing import Mount

from serving import docs
from tests.serving.artifact_factory import make_artifact
from tests.serving.server import running_server

PAGES = (docs.DOCS_PATH, docs.REDOC_PATH)
#: Content types by file suffix (.js: both names Python's mimetypes has used).
CONTENT_TYPES = {
    ".js": ("text/javascript", "application/javascript"),
    ".css": ("text/css",),
    ".png": ("image/png",),
    ".json": ("application/json",),
}
_SCRIPT_URL = re.compile(r"""\burl:\s*['"]([^'"]+)['"]""")
_CSS_URL = re.compile(r"""url\(\s*['"]?([^'")]+)['"]?\s*\)""")
_ABSOLUTE = re.compile(r"""(?:https?:)?//[^\s'"<>)]+""")


class _References(HTMLParser):
    """Every URL a docs page makes the browser load: attributes and the inline script's ``url``."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "spec-url") and value:
                self.refs.append(value)
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.refs.extend(_SCRIPT_URL.findall(data))


def page_references(html: str) -> list[str]:
    parser = _References()
    parser.feed(html)
    parser.close()
    return parser.refs


def _suffix(url: str) -> str:
    return Path(urlsplit(url).path).suffix


def check_page(get: Callable[[str], httpx.Response], page_url: str) -> dict[str, httpx.Response]:
    """GET ``page_url`` and everything it references from the same origin; return them by URL.

    Fails on a reference to another host (or scheme), on any non-200 or empty
    answer, and on a content type that does not match the file.
    """
    page = get(page_url)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    origin = urlsplit(page_url)[:2]
    own = "{}://{}".format(*origin)
    foreign = [u for u in _ABSOLUTE.findall(page.text) if not u.startswith(own)]
    assert foreign == [], f"{page_url} names other hosts"
    loaded: dict[str, httpx.Response] = {}
    todo = [urljoin(page_url, ref) for ref in page_references(page.text)]
    assert todo, f"{page_url} references nothing"
    while todo:
        url = todo.pop()
        if url in loaded:
            continue
        assert urlsplit(url)[:2] == origin, f"{page_url} references another host: {url}"
        r = get(url)
        assert r.status_code == 200, (url, r.status_code)
        assert r.content, f"{url} is empty"
        kind = r.headers.get("content-type", "").split(";")[0].strip()
        assert kind in CONTENT_TYPES[_suffix(url)], (url, kind)
        loaded[url] = r
        if _suffix(url) == ".css":
            for ref in _CSS_URL.findall(r.text):
                if not ref.startswith("data:"):
                    todo.append(urljoin(url, ref))
    return loaded


def _kinds(loaded: dict[str, httpx.Response]) -> set[str]:
    return {_suffix(url) for url in loaded}


@pytest.fixture(scope="module")
def docs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    d = tmp_path_factory.mktemp("docs-server")
    make_artifact(d / "art", num_items=30, dim=8, H=4, D=2, seed=0)
    with running_server(d / "art", f"sqlite:///{d / 'store.sqlite'}") as srv:
        yield srv.url


@pytest.mark.slow
def test_docs_pages_load_from_the_server_alone(docs_server: str) -> None:
    with httpx.Client(timeout=30) as http:
        swagger = check_page(http.get, docs_server + docs.DOCS_PATH)
        assert _kinds(swagger) == {".js", ".css", ".png", ".json"}
        bundle = next(r for url, r in swagger.items() if url.endswith(docs.SWAGGER_JS))
        assert "SwaggerUIBundle" in bundle.text
        schema = next(r for url, r in swagger.items() if url.endswith("/openapi.json"))
        assert "/v1/recommend" in schema.json()["paths"]
        redoc = check_page(http.get, docs_server + docs.REDOC_PATH)
        assert _kinds(redoc) == {".js", ".png", ".json"}
        assert "Redoc" in next(r for url, r in redoc.items() if url.endswith(docs.REDOC_JS)).text
        # The validator badge would send the schema to an outside service.
        assert '"validatorUrl": null' in http.get(docs_server + docs.DOCS_PATH).text


def test_docs_work_under_a_root_path(client: TestClient) -> None:
    """Mounted under /api (as behind a proxy prefix), every reference carries the prefix."""
    outer = TestClient(Starlette(routes=[Mount("/api", app=client.app)]))
    base = str(outer.base_url).rstrip("/")
    for page in PAGES:
        loaded = check_page(outer.get, f"{base}/api{page}")
        assert all(urlsplit(url).path.startswith("/api/") for url in loaded), list(loaded)
        assert f"{base}/api/openapi.json" in loaded


def test_docs_routes_have_their_own_metrics_labels(client: TestClient) -> None:
    """Asset files are one series under the mount path; none is counted as unmatched."""
    base = str(client.base_url).rstrip("/")
    for page in PAGES:
        check_page(client.get, base + page)
    assert client.get(f"{docs.ASSETS_PATH}/no-such-file.js").status_code == 404
    counts = [
        line
        for line in client.get("/metrics").text.splitlines()
        if line.startswith("twotower_http_request_duration_seconds_count{")
    ]
    routes = {re.search(r'route="([^"]*)"', line).group(1) for line in counts}  # type: ignore[union-attr]
    assert {docs.DOCS_PATH, docs.REDOC_PATH, docs.ASSETS_PATH, "/openapi.json"} <= routes
    assert "unmatched" not in routes, counts
    assert not any(r.startswith(docs.ASSETS_PATH + "/") for r in routes), routes


def test_without_the_assets_the_api_serves_and_says_why(
    make_client: Callable[..., TestClient],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(docs, "assets_dir", lambda: None)
    with caplog.at_level(logging.WARNING, logger="serving.docs"):
        c = make_client()
    assert "docs assets not installed" in caplog.text
    assert c.get(docs.DOCS_PATH).status_code == 404
    assert c.get("/openapi.json").status_code == 200
    assert c.post("/v1/recommend", json={"k": 3}).status_code == 200


def test_assets_are_installed() -> None:
    directory = docs.assets_dir()
    assert directory is not None, "fastapi-offline is not installed or lacks an asset"
    assert all((directory / name).stat().st_size > 0 for name in docs.ASSETS)
