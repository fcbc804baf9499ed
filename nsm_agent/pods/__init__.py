"""Sockets per pod: a caller on a pod's socket is that pod, confined to its own namespace
and its own connections."""
