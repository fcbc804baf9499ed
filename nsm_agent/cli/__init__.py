"""`nsmctl`: the command line for people."""
