"""The ``gateway`` command: run, check-config, demo, hash-token.

Exit codes: 0 success, 2 a problem the operator must fix (bad config, unusable
journal, port taken) — printed as one line per problem on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway import __version__
from gateway.app import GatewayService, StartupError
from gateway.auth import hash_token
from gateway.config import load_site_config
from gateway.errors import ConfigError, JournalOpenError

EXIT_USAGE = 2

log = logging.getLogger("gateway")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )


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
    service = GatewayService(config)
    try:
        asyncio.run(service.run())
    except (JournalOpenError, StartupError) as exc:
        return _fail([str(exc)])
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="Site Gateway")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the gateway for a site")
    run.add_argument("-c", "--config", type=Path, required=True, help="site TOML file")
    run.add_argument("-v", "--verbose", action="store_true")
    run.set_defaults(handler=cmd_run)

    check = sub.add_parser("check-config", help="validate a site file; exit 2 on problems")
    check.add_argument("file", type=Path)
    check.set_defaults(handler=cmd_check_config)

    demo = sub.add_parser("demo", help="run the demo site with simulated devices")
    demo.add_argument("--duration", type=float, default=None, help="stop after N seconds")
    demo.add_argument("--port", type=int, default=8080, help="API port (0 = any free port)")
    demo.add_argument("--data", type=Path, default=Path("demo-data"), help="journal folder")
    demo.add_argument("-v", "--verbose", action="store_true")
    demo.set_defaults(handler=cmd_demo)

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
