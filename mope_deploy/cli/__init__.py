"""The ``mope`` command line: argument parsing only; every command calls the library."""
