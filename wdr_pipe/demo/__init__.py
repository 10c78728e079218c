"""Generated data and the loopback server, and the demo that runs the pipeline on them.

Not pipeline stages: ``synth`` draws an FGVC5-style data set, ``serve`` serves a
folder on 127.0.0.1 with deterministic faults, ``demo`` runs every stage on them.
"""
