"""The spacefs mount: datasets as a live, read-only directory tree (pyfuse3 + trio).

``tree`` says how datasets look as files (plain Python); ``fuse_ops`` adapts it to
pyfuse3; ``daemon`` runs a mount; ``control``/``protocol``/``client`` are the control
socket; ``launch`` starts and stops daemons from other processes.
"""
