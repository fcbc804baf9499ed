"""The Kubernetes glue: upstream's pod annotation, the mutating admission webhook (`nsm-webhook`)
that injects a pod's client, and the namespace annotations it reads from the API server."""

from nsm_k8s.annotation import ANNOTATION, AnnotationError, Requested, parse, parse_awareness_groups

__all__ = ["ANNOTATION", "AnnotationError", "Requested", "parse", "parse_awareness_groups"]
