"""A workspace's egress policy: made at create, changed by update, applied at every boot.

The policy lives in the workspace's record (``egress``, JSON); each launch of
its VM gets an ``egress.json`` naming it plus where the secrets and the CA
key are, and a running VM is told to reload when the policy changes. Secrets
bound to hosts get a placeholder here, once: the guest only ever sees it.
"""

from __future__ import annotations

import secrets as random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pyro_mcp.egress import config as egress_config
from pyro_mcp.egress.policy import EgressPolicy, SecretBinding, parse_patterns
from pyro_mcp.egress.tls import create_ca
from pyro_mcp.errors import InvalidArgument
from pyro_mcp.workspaces import package_index

CA_FOLDER = "egress-ca"
# How many crossings the summary lists one by one (the rest are counted).
SUMMARY_HOSTS = 20


def build_policy(
    *,
    network: bool,
    allow_hosts: Sequence[str] | None,
    allow_package_index: bool,
    deny_hosts: Sequence[str],
    allow_private_egress: bool,
    allow_host_services: bool,
    secret_hosts: Mapping[str, Sequence[str]],
    secret_names: Sequence[str],
) -> EgressPolicy | None:
    """The policy for a new workspace (None without a network); InvalidArgument if wrong."""
    asked = allow_hosts is not None or deny_hosts or secret_hosts or allow_package_index
    if allow_package_index:
        index_hosts = package_index.index_hosts(package_index.host_settings())
        if not index_hosts:
            raise InvalidArgument(
                "allow_package_index",
                "this host names no package index (pip's index-url or extra-index-url, the "
                "PIP_/UV_ index variables, npm's registry); name the index hosts with "
                "--allow-host instead",
            )
        allow_hosts = [*(allow_hosts or ()), *index_hosts]
    if not network:
        if asked:
            raise InvalidArgument(
                "allow_hosts",
                'host rules need a network: add --network-policy egress (network_policy="egress")',
            )
        return None
    bindings: dict[str, SecretBinding] = {}
    for name, hosts in secret_hosts.items():
        if name not in secret_names:
            have = ", ".join(secret_names) or "none"
            raise InvalidArgument(
                "secret_hosts", f"no secret {name!r} to bind (the workspace's secrets: {have})"
            )
        patterns = parse_patterns(hosts, "secret_hosts")
        if not patterns:
            raise InvalidArgument("secret_hosts", f"secret {name} needs at least one host")
        bindings[name] = SecretBinding(
            placeholder=f"pyro_placeholder_{name}_{random.token_hex(16)}",
            hosts=tuple(patterns),
        )
    policy = EgressPolicy(
        allow_hosts=tuple(parse_patterns(allow_hosts)) if allow_hosts is not None else None,
        deny_hosts=tuple(parse_patterns(deny_hosts, "deny_hosts")),
        allow_private_egress=allow_private_egress,
        allow_host_services=allow_host_services,
        secrets=bindings,
    )
    policy.check()
    return policy


def policy_of(workspace: Mapping[str, Any]) -> EgressPolicy | None:
    """The stored policy; open egress for a networked workspace made before policies."""
    data = workspace.get("egress")
    if data:
        return EgressPolicy.from_dict(data)
    return EgressPolicy() if workspace.get("network_policy", "off") != "off" else None


def updated(policy: EgressPolicy | None, allow: Sequence[str], deny: Sequence[str]) -> EgressPolicy:
    """``policy`` with hosts allowed or denied; InvalidArgument if that cannot be."""
    if policy is None:
        raise InvalidArgument(
            "allow_hosts",
            "this workspace has no network (policy off); create one with "
            "--network-policy egress to use host rules",
        )
    changed = policy.updated(parse_patterns(allow), parse_patterns(deny, "deny_hosts"))
    changed.check(bindings=False)
    return changed


def ensure_ca(folder: Path, policy: EgressPolicy, label: str) -> None:
    """A workspace CA when secrets are bound to hosts (the proxy signs with it)."""
    if policy.secrets:
        create_ca(folder / CA_FOLDER, label)


def config_for(
    workspace: Mapping[str, Any], folder: Path, policy: EgressPolicy, db_path: Path
) -> egress_config.EgressConfig:
    ca_dir = folder / CA_FOLDER
    return egress_config.EgressConfig(
        policy=policy,
        secrets_dir=folder / "secrets",
        ca_dir=ca_dir if ca_dir.is_dir() else None,
        journal_db=db_path,
        workspace_id=str(workspace["workspace_id"]),
    )


def guest_values(policy: EgressPolicy | None, values: Mapping[str, bytes]) -> dict[str, bytes]:
    """What the guest gets for each secret: the placeholder for those bound to hosts."""
    bound = policy.secrets if policy is not None else {}
    return {
        name: bound[name].placeholder.encode() if name in bound else value
        for name, value in values.items()
    }


def describe(policy: EgressPolicy | None) -> dict[str, Any] | None:
    """What status shows: the rules and which secrets go where (placeholders too)."""
    return policy.to_dict() if policy is not None else None


def crossings(entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Egress journal entries folded per host and port, denied first, for the summary."""
    folded: dict[tuple[str, int, bool], dict[str, Any]] = {}
    for entry in entries:
        key = (str(entry.get("host")), int(entry.get("port") or 0), bool(entry.get("allowed")))
        item = folded.setdefault(
            key,
            {
                "kind": "egress",
                "host": key[0],
                "port": key[1],
                "allowed": key[2],
                "connections": 0,
                "bytes_sent": 0,
                "bytes_received": 0,
                "secrets": [],
                "reason": entry.get("reason", ""),
            },
        )
        item["connections"] += 1
        item["bytes_sent"] += int(entry.get("bytes_sent") or 0)
        item["bytes_received"] += int(entry.get("bytes_received") or 0)
        item["secrets"] = sorted(set(item["secrets"]) | set(entry.get("secrets") or ()))
    ordered = sorted(folded.values(), key=lambda i: (i["allowed"], -i["connections"]))
    if len(ordered) > SUMMARY_HOSTS:
        rest = ordered[SUMMARY_HOSTS:]
        more = {
            "kind": "egress",
            "host": f"({len(rest)} more hosts)",
            "connections": sum(i["connections"] for i in rest),
        }
        ordered = [*ordered[:SUMMARY_HOSTS], more]
    return ordered
