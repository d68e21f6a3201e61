"""``gateway demo``: the gateway on the demo site, nothing to install.

The demo site file ships inside the package; each run gets fresh random tokens
(printed once, never stored in clear) and keeps its journal under ``--data``,
so a second run continues the same journal.
"""

from __future__ import annotations

import asyncio
from importlib import resources
from pathlib import Path

from gateway.app import GatewayService, RunSummary
from gateway.auth import hash_token, new_token
from gateway.config import SiteConfig, parse_site_config
from gateway.journal.queries import count_events


def demo_config(data_dir: Path, port: int) -> tuple[SiteConfig, dict[str, str]]:
    """The demo site with its journal in ``data_dir`` and fresh tokens per user."""
    site_file = resources.files("gateway.sim").joinpath("demo-site.toml")
    config = parse_site_config(site_file.read_text(encoding="utf-8"), Path(str(site_file)))
    tokens = {user.name: new_token() for user in config.users}
    users = [
        user.model_copy(update={"token_sha256": hash_token(tokens[user.name])})
        for user in config.users
    ]
    journal = config.journal.model_copy(update={"path": data_dir.resolve() / "journal.db"})
    api = config.api.model_copy(update={"port": port})
    updated = config.model_copy(update={"users": users, "journal": journal, "api": api})
    updated._source = config.source
    return updated, tokens


def _print_welcome(config: SiteConfig, url: str, tokens: dict[str, str]) -> None:
    print(f"\nSite Gateway demo — {config.site.name} / {config.site.name_en}")
    print(f"  API (OpenAPI docs):      {url}/docs")
    print(f"  health:                  {url}/healthz")
    print(f"  metrics:                 {url}/metrics   (needs a token)")
    print(f"  journal:                 {config.journal.path}")
    for name, token in tokens.items():
        print(f"  token for {name:<11} {token}")
    print("  Ctrl-C stops.\n", flush=True)


def _print_summary(config: SiteConfig, summary: RunSummary, total: int) -> None:
    parts = ", ".join(f"{name} {h.state.value}" for name, h in summary.parts.items())
    devices = len(config.device_ids())
    print(f"\nSite Gateway demo — summary ({summary.seconds:.0f} s)")
    print(f"  events ingested: {summary.events_this_run} this run, {total} in the journal")
    print(f"  parts:           {parts}")
    print(f"  devices:         {devices} configured")
    print("  alarms:          none raised (no alarm rules in this build)")
    print(f"  sync:            {'configured' if config.sync else 'not configured'}")


def run_demo(*, duration: float | None, port: int, data_dir: Path) -> int:
    """Run the demo until Ctrl-C, or for ``duration`` seconds; print a summary."""
    config, tokens = demo_config(data_dir, port)

    async def main() -> RunSummary:
        service = GatewayService(config, on_ready=lambda url: _print_welcome(config, url, tokens))
        if duration is not None:
            asyncio.get_running_loop().call_later(duration, service.stop.set)
        return await service.run()

    summary = asyncio.run(main())
    total = _count(config.journal.path)
    _print_summary(config, summary, total)
    return 0


def _count(path: Path) -> int:
    import sqlite3

    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return count_events(conn)
    finally:
        conn.close()
