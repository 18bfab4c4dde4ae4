"""Rooms: shared conversations of agents and humans, and collaborations of
their agents (RunRoom)."""
