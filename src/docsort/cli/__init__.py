"""The ``docsort`` command line: one parser, one dispatch style."""
