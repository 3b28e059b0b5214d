"""The shipped pipelines: demo, train, sweep, submission (``pipelines/NAME.py`` on the command line)."""
