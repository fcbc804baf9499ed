"""Policies in Rego: the engine, the defaults written here, a site's files, the input documents."""
