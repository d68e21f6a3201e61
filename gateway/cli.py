"""The ``gateway`` command: run, check-config, demo, hash-token, central-sim.

Exit codes: 0 success, 2 a problem the operator must fix (bad config, unusable
journal, port taken) — printed as one line per problem on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from gateway import __version__
from gateway.app import GatewayService, StartupError
from gateway.auth import hash_token
from gateway.config import load_site_config
from gateway.errors import ConfigError, JournalError, JournalOpenError
from gateway.heap import settle_heap
from gateway.journal.backup import backup, restore
from gateway.journal.schema import LATEST_VERSION
from gateway.secrets import resolve_secret

EXIT_USAGE = 2
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

log = logging.getLogger("gateway")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    # httpx logs every request at INFO: one line per sync batch and pull would bury
    # the lines a site engineer greps for. Its failures reach our own log lines.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)


def _fail(lines: Sequence[str]) -> int:
    for line in lines:
        print(line, file=sys.stderr)
    return EXIT_USAGE


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = load_site_config(args.file)
    except ConfigError as exc:
        return _fail(exc.problems)
    d = config.devices
    print(
        f"{args.file}: ok — site {config.site.id} ({config.site.name}), "
        f"{len(config.links)} links, {len(d.meters)} meters, {len(d.io_modules)} I/O modules, "
        f"{len(d.access_points)} access points, {len(d.patrol_wands)} patrol wands, "
        f"{len(config.users)} users"
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    _setup_logging(args.verbose)
    try:
        config = load_site_config(args.config)
    except ConfigError as exc:
        return _fail(exc.problems)
    service = GatewayService(config, on_ready=lambda _url: settle_heap())
    try:
        asyncio.run(service.run())
    except (JournalOpenError, StartupError) as exc:
        return _fail([str(exc)])
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    """Copy the site's journal while the gateway runs (SQLite online backup)."""
    try:
        config = load_site_config(args.config)
    except ConfigError as exc:
        return _fail(exc.problems)
    try:
        info = backup(config.journal.path, args.dest)
    except (JournalError, OSError) as exc:
        return _fail([f"backup: {exc}"])
    print(
        f"backup {info.path}: {info.size_bytes} bytes, schema {info.schema_version}, "
        f"events up to seq {info.last_seq}, integrity ok"
    )
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    """Replace a stopped gateway's journal with a backup (the old one is kept aside)."""
    try:
        config = load_site_config(args.config)
    except ConfigError as exc:
        return _fail(exc.problems)
    try:
        info, moved = restore(args.backup, config.journal.path, LATEST_VERSION)
    except (JournalError, OSError) as exc:
        return _fail([f"restore: {exc}"])
    print(
        f"restored {info.path} from {args.backup}: schema {info.schema_version}, "
        f"events up to seq {info.last_seq}"
        + (f"; the journal it replaced is {moved}" if moved else "")
    )
    return 0


def cmd_hash_token(args: argparse.Namespace) -> int:
    token = args.token if args.token is not None else sys.stdin.readline().strip()
    if not token:
        return _fail(["hash-token: give a token as argument or on stdin"])
    print(hash_token(token))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.sim.demo import run_demo  # the simulators load only for the demo

    _setup_logging(args.verbose)
    try:
        return run_demo(duration=args.duration, port=args.port, data_dir=args.data)
    except (ConfigError, JournalOpenError, StartupError) as exc:
        return _fail(str(exc).splitlines())


def cmd_central_sim(args: argparse.Namespace) -> int:
    """Run the reference central receiver until SIGTERM/SIGINT (for demos and benches)."""
    from gateway.sync.receiver import CentralReceiver, Faults  # only this command needs it

    _setup_logging(args.verbose)
    try:
        token = resolve_secret(args.token, Path.cwd()).get_secret_value()
        secrets = None
        if args.signing_secret is not None:
            secret = resolve_secret(args.signing_secret, Path.cwd()).get_secret_value()
            secrets = {args.site_id: secret}
        faults = Faults(
            error_rate=args.error_rate,
            throttle_rate=args.throttle_rate,
            retry_after_s=args.retry_after,
            delay_s=args.delay,
            reset_after_store_rate=args.reset_rate,
            silent=args.silent,
            unauthorized=args.unauthorized,
            seed=args.seed,
        )
        receiver = CentralReceiver(
            args.db,
            sites={args.site_id: token},
            signing_secrets=secrets,
            faults=faults,
            host=args.host,
            port=args.port,
        )
    except ValueError as exc:
        return _fail([f"central-sim: {exc}"])
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in _STOP_SIGNALS}
    try:
        try:
            url = receiver.start()
        except (OSError, ValueError) as exc:
            return _fail([f"central-sim: cannot start on {args.host}:{args.port}: {exc}"])
        print(f"central-sim listening on {url}", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        receiver.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("central-sim stopped")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="Site Gateway")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the gateway for a site")
    run.add_argument("-c", "--config", type=Path, required=True, help="site TOML file")
    run.add_argument("-v", "--verbose", action="store_true")
    run.set_defaults(handler=cmd_run)

    saver = sub.add_parser("backup", help="copy the site's journal (safe while it runs)")
    saver.add_argument("-c", "--config", type=Path, required=True, help="site TOML file")
    saver.add_argument("dest", type=Path, help="backup file, or a folder for a dated file")
    saver.set_defaults(handler=cmd_backup)

    restorer = sub.add_parser("restore", help="replace a stopped gateway's journal by a backup")
    restorer.add_argument("-c", "--config", type=Path, required=True, help="site TOML file")
    restorer.add_argument("backup", type=Path, help="a file made by `gateway backup`")
    restorer.set_defaults(handler=cmd_restore)

    check = sub.add_parser("check-config", help="validate a site file; exit 2 on problems")
    check.add_argument("file", type=Path)
    check.set_defaults(handler=cmd_check_config)

    demo = sub.add_parser("demo", help="run the demo site with simulated devices")
    demo.add_argument("--duration", type=float, default=None, help="stop after N seconds")
    demo.add_argument("--port", type=int, default=8080, help="API port (0 = any free port)")
    demo.add_argument("--data", type=Path, default=Path("demo-data"), help="journal folder")
    demo.add_argument("-v", "--verbose", action="store_true")
    demo.set_defaults(handler=cmd_demo)

    central = sub.add_parser(
        "central-sim",
        help="run the reference central receiver (optionally misbehaving)",
        description="Serve the central API (../shared/contracts/central-api.md) on HOST:PORT "
        "and store what it accepts in DB; prints 'central-sim listening on URL'. "
        "Secrets may be given as env:NAME or file:PATH.",
    )
    central.add_argument("--db", type=Path, required=True, help="receiver SQLite file")
    central.add_argument("--host", default="127.0.0.1")
    central.add_argument("--port", type=int, default=0, help="0 = any free port")
    central.add_argument("--site-id", required=True)
    central.add_argument("--token", required=True, help="the site's bearer token")
    central.add_argument("--signing-secret", default=None, help="require HMAC-signed bodies")
    central.add_argument("--error-rate", type=float, default=0.0, help="fraction answered 500")
    central.add_argument("--throttle-rate", type=float, default=0.0, help="fraction answered 429")
    central.add_argument("--retry-after", type=int, default=1, help="Retry-After of a 429 (s)")
    central.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    central.add_argument(
        "--reset-rate", type=float, default=0.0, help="fraction of POSTs stored, then reset"
    )
    central.add_argument("--silent", action="store_true", help="never answer API requests")
    central.add_argument("--unauthorized", action="store_true", help="answer 401 to everything")
    central.add_argument("--seed", type=int, default=0, help="seed of the fault draws")
    central.add_argument("-v", "--verbose", action="store_true")
    central.set_defaults(handler=cmd_central_sim)

    hasher = sub.add_parser("hash-token", help="print the SHA-256 to store for a user token")
    hasher.add_argument("token", nargs="?", help="the token (or one line on stdin)")
    hasher.set_defaults(handler=cmd_hash_token)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
