"""`nsmctl`, the command line."""
