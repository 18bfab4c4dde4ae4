"""Embedders: turn texts into unit vectors, behind one interface (base.py)."""
