import pyro_mcp


def test_the_public_surface_is_declared_and_importable() -> None:
    exported = set(pyro_mcp.__all__)
    public = {name for name in dir(pyro_mcp) if not name.startswith("_")}
    modules = {
        "errors",
        "sdk",
        "config",
        "models",
        "vms",
        "doctor",
        "host_tools",
        "environments",
        "store",
        "vm",
        "agent",
        "guest",
        "workspaces",
        "mcp",
        "prepare",
        "hosts",
        "TYPE_CHECKING",
        "Any",
    }
    assert public - modules <= exported
    for name in exported:
        assert hasattr(pyro_mcp, name)
