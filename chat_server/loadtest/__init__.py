"""Load test: many SSE streams, messages at a steady rate, and what reached whom, when.

    python -m chat_server.loadtest --url http://127.0.0.1:8080 --streams 5000 --chats 1 \\
        --messages 100 --rate 10 [--processes P] [--server-pid PID] [--json-only]

1. Chats (`traffic`): with --chats 1 every stream follows General; with more, users lt_<i> log
   in (which makes their DM with admin) and the streams follow those DMs, as lt_<i> or admin.
2. Worker processes (`worker`, spawned and driven by `pool`, each with its own uvloop loop)
   open the streams in batches. A stream counts once it has received the preamble, which the
   server writes after subscribing it, so nothing posted afterwards can be missed.
3. The main process posts the messages through POST /api/messages at the given rate,
   round-robin over the chats. Each contenido is `lt:<run>:<seq>:<send time in ns>`, so a
   receiver on the same machine has the delivery latency from the text alone (`wire`).
4. Once everything expected has arrived, or after --drain-seconds, each worker compares what
   each of its streams received with the ids posted to that stream's chat: lost, duplicated,
   out of order (`report` adds it all up).

With --stream-url (repeatable) the streams are spread over other servers than the one posts go
to, e.g. several processes of one cluster; with --resume a stream that ends or breaks
reconnects with Last-Event-ID, as EventSource does (a server killed and restarted mid-run).
With --source-addresses the streams connect from several loopback addresses in turn: one
address reaches one server port through ~28,000 ephemeral ports at most, so 40,000 streams need
two or more (127.0.0.0/8 is all loopback on Linux, nothing to configure).
The server under test should run with NO_LIMITS in its environment (rate limits and stream cap
off): the tool is one address doing what thousands of people do.

Progress goes to stderr; one JSON summary line to stdout. Exit status: 0 when every stream
connected and every expected delivery arrived exactly once and in order, 1 otherwise, 2 when
the run could not be made (server unreachable, setup refused, a worker died).
"""

from .cli import cli, main, run
from .config import NO_LIMITS, Config, LoadTestError, parse_args
from .report import exit_code

__all__ = ["NO_LIMITS", "Config", "LoadTestError", "cli", "exit_code", "main", "parse_args", "run"]
