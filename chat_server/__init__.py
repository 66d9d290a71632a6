"""chat_server: a real-time chat backend on aiohttp with Server-Sent Events."""

__version__ = "0.1.0"
