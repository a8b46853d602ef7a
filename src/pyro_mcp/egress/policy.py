"""Which hosts a workspace's guest may reach, and why a connection was refused.

A policy is an optional allow list of host patterns (no list: any public
host), a deny list checked first, two operator switches, and the secrets bound
to hosts. Patterns are ``name``, ``*.name`` (any subdomain, not the name
itself) or either with ``:port``; without a port every port matches. The name
``host.pyro.internal`` means the host's own 127.0.0.1 and needs a port and the
operator's ``allow_host_services``.

Decisions happen twice: on the name the guest asked for (``decide``), then on
the addresses that name resolves to (``check_addresses``), so an allowed name
cannot lead to the host's loopback, link-local (cloud metadata) or private
networks unless the operator allowed private egress.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pyro_mcp.egress import host_addresses
from pyro_mcp.errors import InvalidArgument

HOST_SERVICES = "host.pyro.internal"
MAX_PATTERNS = 64
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
# What the proxy's refusals tell the guest (and the journal) to do.
FIX_ALLOW = "allow it with `pyro workspace update WORKSPACE --allow-host {host}`"
FIX_PRIVATE = "the operator can allow private addresses with --allow-private-egress"
FIX_SERVICES = (
    "the operator can allow it with --allow-host-services, plus an "
    "--allow-host host.pyro.internal:PORT entry"
)


@dataclass(frozen=True)
class HostPattern:
    """One ``[*.]name[:port]`` entry, normalised (lower case, no trailing dot)."""

    name: str
    wildcard: bool = False
    port: int | None = None

    def __str__(self) -> str:
        text = ("*." if self.wildcard else "") + self.name
        return f"{text}:{self.port}" if self.port is not None else text

    def matches(self, host: str, port: int) -> bool:
        return (self.port is None or self.port == port) and self._matches_name(host)

    def covers(self, other: HostPattern) -> bool:
        """Whether every host:port ``other`` matches is also matched by this pattern."""
        if self.port is not None and self.port != other.port:
            return False
        if other.wildcard:
            return self.wildcard and (
                other.name == self.name or other.name.endswith("." + self.name)
            )
        return self._matches_name(other.name)

    def _matches_name(self, host: str) -> bool:
        return host.endswith("." + self.name) if self.wildcard else host == self.name


def parse_pattern(text: str, field_name: str = "allow_hosts") -> HostPattern:
    """A host pattern from user input; InvalidArgument says what is wrong and what works."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidArgument(field_name, "a host pattern cannot be empty")
    raw = text.strip()
    example = "use a name like pypi.example.org, *.example.com or git.example.net:22"
    host, port = _split_port(raw, field_name)
    host = host.lower().rstrip(".")
    if host in ("*", "*.", ""):
        raise InvalidArgument(
            field_name,
            f"{raw!r} would allow every host; leave out --allow-host for open egress, or {example}",
        )
    if _is_ip(host.strip("[]")):
        raise InvalidArgument(
            field_name, f"{raw!r} is an IP address; the policy matches host names: {example}"
        )
    wildcard = host.startswith("*.")
    name = host[2:] if wildcard else host
    if "*" in name:
        raise InvalidArgument(
            field_name, f"{raw!r}: a wildcard is only allowed as the first label ('*.'): {example}"
        )
    if not name.isascii():
        raise InvalidArgument(
            field_name, f"{raw!r}: give an internationalised name in its xn-- (punycode) form"
        )
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise InvalidArgument(field_name, f"{raw!r} is not a valid host name: {example}")
    if wildcard and len(labels) < 2:
        raise InvalidArgument(
            field_name, f"{raw!r} covers a whole top-level domain; name the domain: {example}"
        )
    if name == HOST_SERVICES and (wildcard or port is None):
        raise InvalidArgument(
            field_name, f"{raw!r}: name the host service's port, e.g. {HOST_SERVICES}:5432"
        )
    return HostPattern(name=name, wildcard=wildcard, port=port)


def _split_port(raw: str, field_name: str) -> tuple[str, int | None]:
    if raw.startswith("["):  # [v6]:port: parsed only so the error can say "IP address"
        host, _, rest = raw.partition("]")
        return host + "]", _port(rest[1:], raw, field_name) if rest.startswith(":") else None
    if raw.count(":") > 1:
        return raw, None
    host, colon, port = raw.partition(":")
    return host, _port(port, raw, field_name) if colon else None


def _port(text: str, raw: str, field_name: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise InvalidArgument(field_name, f"{raw!r}: the port must be a number from 1 to 65535")
    return int(text)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def parse_patterns(texts: Iterable[str], field_name: str = "allow_hosts") -> list[HostPattern]:
    """Patterns in the order given, duplicates dropped."""
    patterns: list[HostPattern] = []
    for text in texts:
        pattern = parse_pattern(text, field_name)
        if pattern not in patterns:
            patterns.append(pattern)
    if len(patterns) > MAX_PATTERNS:
        raise InvalidArgument(field_name, f"at most {MAX_PATTERNS} host patterns")
    return patterns


@dataclass(frozen=True)
class SecretBinding:
    """A secret the guest sees as ``placeholder``; the proxy sends the real value to ``hosts``."""

    placeholder: str
    hosts: tuple[HostPattern, ...]

    def matches(self, host: str, port: int) -> bool:
        return any(pattern.matches(host, port) for pattern in self.hosts)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    # Where to connect instead of resolving the name: host services go to 127.0.0.1.
    connect_to: str | None = None


@dataclass(frozen=True)
class EgressPolicy:
    """One workspace's egress rules; ``allow_hosts=None`` is open egress."""

    allow_hosts: tuple[HostPattern, ...] | None = None
    deny_hosts: tuple[HostPattern, ...] = ()
    allow_private_egress: bool = False
    allow_host_services: bool = False
    secrets: Mapping[str, SecretBinding] = field(default_factory=dict)

    @property
    def mode(self) -> str:
        return "open" if self.allow_hosts is None else "allow-list"

    def decide(self, host: str, port: int) -> Decision:
        """Whether the guest may connect to ``host:port`` by name (addresses come later)."""
        host = normalise_host(host)
        denied = next((p for p in self.deny_hosts if p.matches(host, port)), None)
        if denied is not None:
            return Decision(
                False,
                f"{host}:{port} is denied by the workspace's deny list ({denied}); "
                f"remove it with `pyro workspace update WORKSPACE --allow-host {denied}`",
            )
        if host == HOST_SERVICES:
            if not self.allow_host_services:
                return Decision(False, f"{host}:{port} is the host's own loopback; {FIX_SERVICES}")
            rule = next((p for p in self.allow_hosts or () if p.matches(host, port)), None)
            if rule is None:
                return Decision(
                    False,
                    f"{host}:{port} is not in the workspace's allow list; "
                    + FIX_ALLOW.format(host=f"{host}:{port}"),
                )
            return Decision(True, f"allowed by {rule}", connect_to="127.0.0.1")
        if self.allow_hosts is None:
            return Decision(True, "open egress")
        rule = next((p for p in self.allow_hosts if p.matches(host, port)), None)
        if rule is not None:
            return Decision(True, f"allowed by {rule}")
        return Decision(
            False,
            f"{host}:{port} is not in the workspace's allow list; "
            + FIX_ALLOW.format(host=host if port in (80, 443) else f"{host}:{port}"),
        )

    def check_addresses(self, host: str, addresses: Sequence[str]) -> tuple[str | None, str]:
        """The first address the guest may reach, or None and why not."""
        if self.allow_private_egress:
            return (addresses[0] if addresses else None), "no address"
        for address in addresses:
            if is_public(address):
                return address, ""
        shown = ", ".join(addresses[:3]) or "no address"
        return None, (
            f"{host} resolves to a private or local address, or one of this host's own "
            f"({shown}); {FIX_PRIVATE}"
        )

    def secrets_for(self, host: str, port: int) -> dict[str, SecretBinding]:
        host = normalise_host(host)
        return {name: b for name, b in self.secrets.items() if b.matches(host, port)}

    # ------------------------------------------------------------ changes

    def updated(self, allow: Sequence[HostPattern], deny: Sequence[HostPattern]) -> EgressPolicy:
        """This policy with ``allow`` added to the allow list and ``deny`` moved to the deny list.

        Allowing a pattern takes it off the deny list; denying one takes it off
        the allow list. Allowing on an open policy starts an allow list.
        """
        allowed = list(self.allow_hosts) if self.allow_hosts is not None else None
        denied = [p for p in self.deny_hosts if p not in allow]
        if allow:
            allowed = [p for p in allowed or [] if p not in deny]
            allowed += [p for p in allow if p not in allowed]
        elif allowed is not None:
            allowed = [p for p in allowed if p not in deny]
        denied += [p for p in deny if p not in denied]
        return EgressPolicy(
            allow_hosts=tuple(allowed) if allowed is not None else None,
            deny_hosts=tuple(denied),
            allow_private_egress=self.allow_private_egress,
            allow_host_services=self.allow_host_services,
            secrets=self.secrets,
        )

    def check(self, *, bindings: bool = True) -> None:
        """Operator switches (and, with ``bindings``, secret hosts) agree with the lists.

        Raises InvalidArgument. A later update may deny a bound host: the proxy
        then refuses it like any other (``bindings=False``).
        """
        for pattern in self.allow_hosts or ():
            if pattern.name == HOST_SERVICES and not self.allow_host_services:
                raise InvalidArgument(
                    "allow_hosts",
                    f"{pattern} reaches the host's own 127.0.0.1, which the operator must "
                    "allow: --allow-host-services on `pyro workspace create` or "
                    "`pyro mcp serve` (allow_host_services=True in the SDK)",
                )
        if len(self.allow_hosts or ()) + len(self.deny_hosts) > MAX_PATTERNS:
            raise InvalidArgument("allow_hosts", f"at most {MAX_PATTERNS} host patterns")
        for name, binding in self.secrets.items() if bindings else ():
            for pattern in binding.hosts:
                if not self.allows_pattern(pattern):
                    raise InvalidArgument(
                        "secret_hosts",
                        f"secret {name} is bound to {pattern}, which the workspace's egress "
                        f"policy does not allow; add --allow-host {pattern}",
                    )

    def allows_pattern(self, pattern: HostPattern) -> bool:
        if any(d.covers(pattern) or pattern.covers(d) for d in self.deny_hosts):
            return False
        if pattern.name == HOST_SERVICES:
            return self.allow_host_services and any(
                a.covers(pattern) for a in self.allow_hosts or ()
            )
        if self.allow_hosts is None:
            return True
        return any(a.covers(pattern) for a in self.allow_hosts)

    # ------------------------------------------------------- serialising

    def to_dict(self) -> dict[str, Any]:
        """The stored and shown form; placeholders included, real values never."""
        return {
            "mode": self.mode,
            "allow_hosts": (
                [str(p) for p in self.allow_hosts] if self.allow_hosts is not None else None
            ),
            "deny_hosts": [str(p) for p in self.deny_hosts],
            "allow_private_egress": self.allow_private_egress,
            "allow_host_services": self.allow_host_services,
            "secrets": {
                name: {"placeholder": b.placeholder, "hosts": [str(p) for p in b.hosts]}
                for name, b in sorted(self.secrets.items())
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EgressPolicy:
        allow = data.get("allow_hosts")
        secrets = data.get("secrets") or {}
        return cls(
            allow_hosts=tuple(parse_patterns(allow)) if allow is not None else None,
            deny_hosts=tuple(parse_patterns(data.get("deny_hosts") or (), "deny_hosts")),
            allow_private_egress=bool(data.get("allow_private_egress")),
            allow_host_services=bool(data.get("allow_host_services")),
            secrets={
                str(name): SecretBinding(
                    placeholder=str(b["placeholder"]),
                    hosts=tuple(parse_patterns(b.get("hosts") or (), "secret_hosts")),
                )
                for name, b in secrets.items()
            },
        )


def normalise_host(host: str) -> str:
    return host.strip().strip("[]").lower().rstrip(".")


# What "private" means here: the host's loopback, link-local (cloud metadata
# lives there), the RFC 1918 and unique-local networks, carrier-grade NAT,
# unspecified, multicast and reserved addresses. Python's ``is_private`` also
# counts the documentation ranges, which some networks route; these do not.
BLOCKED_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::/128",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
    )
)


def is_public(address: str) -> bool:
    """Whether the guest may reach ``address`` without the operator's private-egress
    switch: not in a blocked network, and not an address of this machine (whatever
    its class: a public address the host listens on is the host all the same)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip.version == net.version and ip in net for net in BLOCKED_NETWORKS):
        return False
    return ip not in host_addresses.own()
