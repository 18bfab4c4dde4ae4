"""The tools area: a registry of tools (builtin and HTTP) and their execution."""
