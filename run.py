"""Start the chat server: python run.py [--host H] [--port P]."""

from __future__ import annotations

import argparse
import logging

from chat_server.server import serve
from chat_server.settings import Settings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    parser = argparse.ArgumentParser(description="chat_server: a real-time chat backend")
    parser.add_argument("--host", default=settings.host, help="address to bind (CHAT_HOST)")
    parser.add_argument("--port", type=int, default=settings.port, help="port to bind (CHAT_PORT)")
    parser.add_argument(
        "--workers",
        type=int,
        default=settings.workers,
        help="server processes sharing the port; above 1 needs REDIS_URL (CHAT_WORKERS)",
    )
    args = parser.parse_args()
    serve(settings, host=args.host, port=args.port, workers=args.workers)


if __name__ == "__main__":
    main()
