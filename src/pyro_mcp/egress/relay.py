"""Hands one guest connection to the egress proxy, then exits.

QEMU's user-mode network runs this (``guestfwd=...-cmd:``) for every TCP
connection the guest opens to the proxy address, with the connection on
stdin. It passes that descriptor over the proxy's unix socket (SCM_RIGHTS),
so the proxy reads and writes the guest directly and no process sits in the
middle copying bytes. Standard library only: it starts with ``python -S -I``
for every connection, and fast.
"""

import socket
import sys


def main() -> int:
    proxy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        proxy.connect(sys.argv[1])
        socket.send_fds(proxy, [b"c"], [0])
    except OSError:
        return 1
    finally:
        proxy.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
