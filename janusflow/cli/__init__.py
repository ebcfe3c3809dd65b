"""The ``janusflow`` command line."""
