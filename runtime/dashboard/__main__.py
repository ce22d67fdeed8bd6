"""`python -m runtime.dashboard '{"fd": N, ...}'`: started by the control store (activation.py)."""

from .server import main

main()
