"""Generated from proto/nsm_api by scripts/gen_proto.py; do not edit."""
