"""The analyses of the five papers, each a streaming reducer (see base.py)."""
