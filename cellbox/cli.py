"""``cellbox serve`` and ``cellbox keys ...``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from datetime import datetime
from pathlib import Path

from .config import Config
from .store import Store, ensure_data_dir, sqlite_url


def _data_dir_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, help="State directory (default $CELLBOX_DATA_DIR or /var/lib/cellbox)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cellbox", description="Self-hosted sandboxes for AI agents.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="Run the Cell API server in the foreground.")
    serve.add_argument("--host", help="Address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="Port (default 8001)")
    _data_dir_arg(serve)
    serve.add_argument("--runtime", help="OCI runtime binary: runc (default), crun, runsc, ...")
    serve.add_argument("--database-url", help="SQLAlchemy URL (default: SQLite in the data directory)")
    serve.add_argument("--retention", type=float, dest="retention_s", help="Seconds killed cells stay readable")
    serve.add_argument("--log-level", default="info")

    keys = sub.add_parser("keys", help="Manage API keys.").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="Create a key; it is printed once, on the last line.")
    create.add_argument("--name", default="")
    _data_dir_arg(create)
    listing = keys.add_parser("list", help="List keys (never the secrets).")
    _data_dir_arg(listing)
    revoke = keys.add_parser("revoke", help="Revoke a key by id or by its shown prefix.")
    revoke.add_argument("key_id")
    _data_dir_arg(revoke)
    return parser


def _config(args: argparse.Namespace) -> Config:
    overrides = {k: getattr(args, k, None) for k in ("host", "port", "data_dir", "runtime", "database_url", "retention_s")}
    return Config.from_env(**overrides)


async def _keys(args: argparse.Namespace, config: Config) -> int:
    ensure_data_dir(config.data_dir)
    store = Store(config.database_url or sqlite_url(config.data_dir))
    await store.open()
    try:
        if args.keys_command == "create":
            record, key = await store.create_key(args.name)
            print(f"created {record.id} ({record.name or 'unnamed'}); store the key now, it is not shown again:")
            print(key)
        elif args.keys_command == "list":
            for record in await store.list_keys():
                state = f"revoked {datetime.fromtimestamp(record.revoked_at):%Y-%m-%d %H:%M}" if record.revoked_at else "active"
                print(f"{record.id}\t{record.prefix}...\t{record.name}\t{state}")
        elif args.keys_command == "revoke":
            record = await store.revoke_key(args.key_id)
            if record is None:
                print(f"no single key matches {args.key_id!r}; see 'cellbox keys list'", file=sys.stderr)
                return 1
            print(f"revoked {record.id}")
    finally:
        await store.close()
    return 0


def serve(config: Config, log_level: str = "info") -> None:
    import uvicorn

    from .app import create_app

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    app = create_app(config)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: object) -> None:
            # Live event streams never end on their own; end them so a stop is prompt.
            events = getattr(app.state, "events", None)
            if events is not None:
                asyncio.get_event_loop().call_soon_threadsafe(events.bus.close)
            super().handle_exit(sig, frame)  # type: ignore[arg-type]

    Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level=log_level,
            timeout_graceful_shutdown=5,
            access_log=False,
        )
    ).run()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = _config(args)
    if args.command == "serve":
        serve(config, args.log_level)
        return 0
    return asyncio.run(_keys(args, config))


if __name__ == "__main__":
    sys.exit(main())
