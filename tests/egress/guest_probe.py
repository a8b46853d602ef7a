"""Runs inside the guest (python3, standard library): one network probe, a JSON answer.

python3 probe.py get URL [HEADER=VALUE ...]   through the proxy variables
python3 probe.py direct URL                      with every proxy variable ignored
python3 probe.py tcp HOST PORT                   a raw TCP connect
python3 probe.py dns NAME                        a name lookup
python3 probe.py sni HOST PORT SNI               CONNECT HOST:PORT, then TLS naming SNI
"""

import json
import os
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request


def get(url, headers, proxies=None):
    handlers = [] if proxies is None else [urllib.request.ProxyHandler(proxies)]
    opener = urllib.request.build_opener(*handlers)
    request = urllib.request.Request(url, headers=headers)
    try:
        with opener.open(request, timeout=20) as response:
            return {"status": response.status, "body": response.read().decode(errors="replace")}
    except urllib.error.HTTPError as exc:
        return {"status": exc.code, "body": exc.read().decode(errors="replace")}


def main():
    kind, args = sys.argv[1], sys.argv[2:]
    started = time.monotonic()
    try:
        if kind == "get":
            headers = dict(a.split("=", 1) for a in args[1:])
            for name, value in headers.items():
                if value.startswith("@"):
                    with open(value[1:]) as handle:
                        headers[name] = handle.read().strip()
            result = get(args[0], headers)
        elif kind == "direct":
            result = get(args[0], {}, proxies={})
        elif kind == "tcp":
            socket.create_connection((args[0], int(args[1])), timeout=10).close()
            result = {"connected": True}
        elif kind == "dns":
            result = {"addresses": [i[4][0] for i in socket.getaddrinfo(args[0], 443)]}
        elif kind == "sni":
            proxy = os.environ["https_proxy"].rsplit("/", 1)[-1].rsplit(":", 1)
            raw = socket.create_connection((proxy[0], int(proxy[1])), timeout=10)
            target = f"{args[0]}:{args[1]}"
            raw.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            head = raw.recv(4096)
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            tls = context.wrap_socket(raw, server_hostname=args[2])
            result = {"head": head.decode(errors="replace"), "cipher": tls.cipher()[0]}
        else:
            result = {"error": f"unknown probe {kind}"}
    except Exception as exc:  # the probe reports every failure as data
        result = {"error": f"{type(exc).__name__}: {exc}"}
    result["seconds"] = round(time.monotonic() - started, 3)
    print(json.dumps(result))


main()
