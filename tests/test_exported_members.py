import types

import pyro_mcp


def test_the_public_surface_is_declared_and_importable() -> None:
    exported = set(pyro_mcp.__all__)
    # Submodules become attributes once anything imports them; they are internal.
    public = {
        name
        for name in dir(pyro_mcp)
        if not name.startswith("_")
        and not isinstance(getattr(pyro_mcp, name), types.ModuleType)
        and name not in ("TYPE_CHECKING", "Any")
    }
    assert public <= exported
    for name in exported:
        assert hasattr(pyro_mcp, name)


def test_every_export_is_named_in_all_even_after_every_module_loaded() -> None:
    import pyro_mcp.cli.main
    import pyro_mcp.mcp.server  # noqa: F401

    test_the_public_surface_is_declared_and_importable()
