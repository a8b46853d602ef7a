"""Host patterns, decisions and address checks (no guest needed)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from pyro_mcp.egress.policy import (
    EgressPolicy,
    HostPattern,
    SecretBinding,
    is_public,
    parse_pattern,
    parse_patterns,
)
from pyro_mcp.errors import InvalidArgument


def policy(allow: list[str] | None, deny: Sequence[str] = (), **switches: bool) -> EgressPolicy:
    return EgressPolicy(
        allow_hosts=tuple(parse_patterns(allow)) if allow is not None else None,
        deny_hosts=tuple(parse_patterns(deny)),
        **switches,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("PyPI.Example.org.", HostPattern("pypi.example.org")),
        ("*.example.com", HostPattern("example.com", wildcard=True)),
        ("git.example.net:22", HostPattern("git.example.net", port=22)),
        ("host.pyro.internal:5432", HostPattern("host.pyro.internal", port=5432)),
        ("intranet", HostPattern("intranet")),
    ],
)
def test_patterns_parse(text: str, expected: HostPattern) -> None:
    assert parse_pattern(text) == expected
    assert parse_pattern(str(expected)) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("*", "every host"),
        ("*.", "every host"),
        ("", "empty"),
        ("*.com", "top-level"),
        ("a.*.example.com", "first label"),
        ("192.168.1.10", "IP address"),
        ("[fe80::1]:22", "IP address"),
        ("::1", "IP address"),
        ("under_score.example", "not a valid host name"),
        ("-lead.example", "not a valid host name"),
        ("a.example:0", "port"),
        ("a.example:http", "port"),
        ("bücher.example", "xn--"),
        ("host.pyro.internal", "port"),
        ("*.pyro.internal", None),
    ],
)
def test_bad_patterns_say_what_works(text: str, message: str | None) -> None:
    if message is None:
        parse_pattern(text)
        return
    with pytest.raises(InvalidArgument, match=message):
        parse_pattern(text)


def test_decisions_name_the_rule_or_the_fix() -> None:
    rules = policy(["pypi.example.org", "*.example.com", "git.example.net:22"])
    assert rules.decide("PYPI.example.org.", 443).allowed
    assert rules.decide("a.b.example.com", 8443).allowed
    assert not rules.decide("example.com", 443).allowed  # *. is subdomains only
    assert rules.decide("git.example.net", 22).allowed
    refused = rules.decide("git.example.net", 443)
    assert not refused.allowed and "--allow-host git.example.net" in refused.reason
    assert "allow list" in rules.decide("other.example.org", 443).reason


def test_deny_wins_and_update_moves_patterns() -> None:
    rules = policy(None, ["bad.example.com"])
    assert rules.mode == "open" and rules.decide("good.example.com", 443).allowed
    assert "deny list" in rules.decide("bad.example.com", 443).reason
    narrowed = rules.updated(parse_patterns(["a.example"]), [])
    assert narrowed.mode == "allow-list" and narrowed.decide("a.example", 443).allowed
    assert not narrowed.decide("b.example", 443).allowed
    moved = narrowed.updated([], parse_patterns(["a.example"]))
    assert moved.allow_hosts == () and "deny list" in moved.decide("a.example", 1).reason
    back = moved.updated(parse_patterns(["a.example"]), [])
    assert back.deny_hosts == (HostPattern("bad.example.com"),)
    assert back.decide("a.example", 443).allowed


def test_host_services_need_the_operator_and_a_port_rule() -> None:
    without = policy(["host.pyro.internal:5432"])
    with pytest.raises(InvalidArgument, match="--allow-host-services"):
        without.check()
    assert "--allow-host-services" in without.decide("host.pyro.internal", 5432).reason
    granted = policy(["host.pyro.internal:5432"], allow_host_services=True)
    granted.check()
    decision = granted.decide("host.pyro.internal", 5432)
    assert decision.allowed and decision.connect_to == "127.0.0.1"
    assert not granted.decide("host.pyro.internal", 22).allowed
    assert not policy(None, allow_host_services=True).decide("host.pyro.internal", 80).allowed


def test_secret_hosts_must_be_allowed() -> None:
    binding = SecretBinding("p", (HostPattern("api.example.com"),))
    EgressPolicy(allow_hosts=(HostPattern("example.com", True),), secrets={"T": binding}).check()
    EgressPolicy(secrets={"T": binding}).check()  # open egress allows it
    with pytest.raises(InvalidArgument, match="does not allow"):
        EgressPolicy(allow_hosts=(HostPattern("other.example"),), secrets={"T": binding}).check()
    with pytest.raises(InvalidArgument, match="does not allow"):
        EgressPolicy(deny_hosts=(HostPattern("api.example.com"),), secrets={"T": binding}).check()
    wide = SecretBinding("p", (HostPattern("example.com", True),))
    with pytest.raises(InvalidArgument, match="does not allow"):
        EgressPolicy(allow_hosts=(HostPattern("a.example.com"),), secrets={"T": wide}).check()


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.215.14", True),
        ("203.0.113.80", True),  # a documentation range: routed by some networks
        ("2606:4700::1111", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.20.0.1", False),
        ("192.168.0.1", False),
        ("169.254.169.254", False),
        ("100.100.1.1", False),
        ("0.0.0.0", False),
        ("::1", False),
        ("fe80::1%eth0", False),
        ("fd00::1", False),
        ("::ffff:127.0.0.1", False),
        ("224.0.0.1", False),
        ("not an address", False),
    ],
)
def test_private_addresses(address: str, public: bool) -> None:
    assert is_public(address) is public


def test_addresses_are_checked_after_resolution() -> None:
    rules = policy(None)
    assert rules.check_addresses("x", ["10.0.0.1", "93.184.215.14"])[0] == "93.184.215.14"
    address, why = rules.check_addresses("internal.example", ["10.0.0.1"])
    assert address is None and "--allow-private-egress" in why
    assert policy(None, allow_private_egress=True).check_addresses("x", ["10.0.0.1"])[0]


def test_round_trip_keeps_everything() -> None:
    rules = EgressPolicy(
        allow_hosts=(HostPattern("a.example", port=443),),
        deny_hosts=(HostPattern("b.example", True),),
        allow_private_egress=True,
        allow_host_services=True,
        secrets={"T": SecretBinding("ph", (HostPattern("a.example", port=443),))},
    )
    assert EgressPolicy.from_dict(rules.to_dict()) == rules
