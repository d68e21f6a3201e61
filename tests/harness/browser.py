"""Real headless Chromium for the page tests (Debian's ``chromium``, driven by playwright).

Its own browser download fails here (../shared/research/BROWSER.md), so the
``browser`` fixture launches /usr/bin/chromium with the flags that keep it
from reaching out; tests that need it are skipped where it is not installed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.site import Site

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium (make test installs it as root)"
)


@pytest.fixture
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            yield chromium
        finally:
            chromium.close()


# Luminance contrast of an element's text against the first opaque background up its tree.
CONTRAST_JS = """(el) => {
  const parse = (c) => (c.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const fg = parse(getComputedStyle(el).color);
  let node = el, bg = null;
  while (node && node.nodeType === 1) {
    const c = parse(getComputedStyle(node).backgroundColor);
    if (c.length === 3 || (c.length === 4 && c[3] > 0.9)) { bg = c; break; }
    node = node.parentElement;
  }
  bg = bg || [255, 255, 255];
  const [a, b] = [lum(fg), lum(bg)].sort((x, y) => y - x);
  return (a + 0.05) / (b + 0.05);
}"""

UNLABELLED_JS = """() => {
  const bad = [];
  for (const b of document.querySelectorAll('button, a')) {
    if (!(b.textContent.trim() || b.getAttribute('aria-label'))) bad.push(b.outerHTML);
  }
  for (const i of document.querySelectorAll('input:not([type=hidden]), select, textarea')) {
    if (!i.id || !document.querySelector(`label[for="${i.id}"]`)) bad.push(i.outerHTML);
  }
  return bad;
}"""


def login(browser: object, site: Site, role: str, width: int, height: int):  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": width, "height": height})  # type: ignore[attr-defined]
    page = context.new_page()
    page.goto(f"{site.url}/login")
    page.fill("#name", f"{role}1")
    page.fill("#token", site.tokens[role])
    page.keyboard.press("Enter")  # the form works from the keyboard
    page.wait_for_selector("#alarm-list")
    return page
