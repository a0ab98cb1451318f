"""The ``trustlab`` command line: thin parsing around library calls."""
