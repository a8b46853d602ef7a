"""``pyro server``: the engine served over HTTP to other machines (issue #26)."""
