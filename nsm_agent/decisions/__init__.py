"""Pure decisions (selection, path, names): no I/O, unit-tested without root."""
