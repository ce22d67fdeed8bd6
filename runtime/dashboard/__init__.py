"""The head's dashboard: Ray's job REST API (and, later, metrics, the state API and a web UI) on
HTTP, by default at http://127.0.0.1:8265.

It is started on first use: the launcher binds the port with the cluster, and the control
store starts `python -m runtime.dashboard` when the first connection waits on it (socket
activation, activation.py), so `init()` pays nothing for it. See docs/dashboard.md.
"""
