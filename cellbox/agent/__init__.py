"""The agent: the cell's first process, serving the host over HTTP.

Standard library plus h11 only: it runs in every cell, from a read-only support
directory, under the cell's own interpreter. It must not import the server.
"""

VERSION = "0.1.0"
