"""Jobs submitted to a cluster: scripts and notebooks run on the head node (see manager.py),
the client that submits them (client.py) and the notebook runner (notebook.py)."""
