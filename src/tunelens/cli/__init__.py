"""The ``tunelens`` command line: thin typer commands mapping onto the Python API."""
