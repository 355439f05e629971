"""``fedwsa supernode``: ``flower-supernode`` that first makes sure its SuperLink is reachable.

Flower 1.41's SuperNode retries an unreachable SuperLink forever by default, and even with
``--max-wait-time`` it names the address only in its ``--insecure`` start-up line (with TLS,
only at DEBUG level). This wrapper opens a TCP connection to ``--superlink`` first, for up to
``--connect-timeout`` seconds, and otherwise stops with one line naming the address (status 2).
Then it becomes ``flower-supernode`` with the same arguments (``exec``: same pid, signals and
exit status), so everything else is Flower's own behaviour.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from collections.abc import Sequence

CONNECT_TIMEOUT_S = 25.0


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) -> (host, port); ValueError naming the flag."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--superlink={address!r}: expected HOST:PORT, e.g. 10.0.0.5:9092")
    return host, int(port)


def wait_for_superlink(address: str, timeout_s: float) -> None:
    """Return once a TCP connection to ``address`` succeeds; ValueError after ``timeout_s``."""
    host, port = split_address(address)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(5.0, timeout_s)):
                return
        except OSError as err:
            reason = err.strerror or type(err).__name__
            if time.monotonic() >= deadline:
                raise ValueError(
                    f"cannot reach the SuperLink at {address} within {timeout_s:g} s ({reason});"
                    " is flower-superlink running there, and is that its Fleet API port?"
                ) from err
        time.sleep(0.5)


def cmd_supernode(args: argparse.Namespace, flower_args: Sequence[str]) -> int:
    from flwr.supercore.constant import SUPERLINK_DEFAULT_CLIENT_ADDRESS

    address = args.superlink or SUPERLINK_DEFAULT_CLIENT_ADDRESS
    wait_for_superlink(address, args.connect_timeout)
    print(f"fedwsa: SuperLink at {address} is reachable; starting flower-supernode",
          file=sys.stderr, flush=True)
    argv = ["flower-supernode", *(["--superlink", args.superlink] if args.superlink else []),
            *flower_args]
    os.execvp(argv[0], argv)
    return 0  # not reached: exec replaced this process


def add_supernode_command(sub: argparse._SubParsersAction) -> None:
    node = sub.add_parser(
        "supernode", help="flower-supernode, after checking that the SuperLink is reachable",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    node.add_argument("--superlink", help="SuperLink Fleet API address HOST:PORT (as for "
                                          "flower-supernode; default Flower's)")
    node.add_argument("--connect-timeout", type=float, default=CONNECT_TIMEOUT_S,
                      help=f"seconds to wait for the SuperLink (default {CONNECT_TIMEOUT_S:g})")
    node.set_defaults(func=cmd_supernode, passthrough=True)
