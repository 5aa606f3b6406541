"""/docs and /redoc work without internet: no external URL on the pages, and every asset they name answers."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

pytestmark = pytest.mark.timeout(60)

LINK_ATTRIBUTES = {"href", "src", "spec-url"}


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.urls += [value for name, value in attrs if name in LINK_ATTRIBUTES and value]


def referenced_urls(page: str) -> list[str]:
    parser = Links()
    parser.feed(page)
    # Swagger UI is told where the OpenAPI document is inside its script: `url: '/openapi.json'`.
    return parser.urls + re.findall(r"\burl:\s*'([^']+)'", page)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_page_names_no_external_url_and_its_assets_answer(stack, page):
    reply = await stack.api.get(page)
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/html")
    html = reply.text
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", html, re.IGNORECASE), html
    urls = referenced_urls(html)
    assert any(url.endswith(".js") for url in urls) and any("openapi.json" in url for url in urls), urls
    for url in urls:
        assert url.startswith("/"), url
        asset = await stack.api.get(url)
        assert asset.status_code == 200, (url, asset.status_code)
        assert len(asset.content) > 100, url


async def test_swagger_ui_assets_are_real_builds(stack):
    script = await stack.api.get("/docs-assets/swagger-ui-bundle.js")
    assert "SwaggerUIBundle" in script.text
    assert "javascript" in script.headers["content-type"]
    redoc = await stack.api.get("/docs-assets/redoc.standalone.js")
    assert "Redoc" in redoc.text
