"""Leasing: the pure protocol core (core.py) and the ready queue it dispatches from (queue.py)."""
