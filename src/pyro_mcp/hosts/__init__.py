"""Chat hosts: registering pyro with Claude Code, Codex and OpenCode, and checking it."""
