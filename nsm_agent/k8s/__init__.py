"""Kubernetes glue: the pod annotation, the admission webhook, the pod's client runtime."""
