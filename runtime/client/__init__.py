"""Thin clients: `runtime.init("client://HOST:PORT")` from a machine outside the cluster.

A notebook far from the cluster cannot map the cluster's shared memory, and the cluster's
workers cannot connect back to it. So the head serves one extra port (the client server, in
the control store's process). Each client that connects there gets a proxy process of its own
on the head (`proxy.py`): a normal driver of the cluster, which owns every object and actor
the client makes. The client side (`worker.py`) stands in for the core worker in the client's
process and forwards each API call over its one connection; values travel pickled (protocol 5,
buffers out of band) in the frames. Output of the client's tasks is forwarded too, so it lands
where it would for a local driver (and in the right notebook cell).

`protocol.py` holds what both sides agree on. See docs/client.md.
"""
