"""Several worker processes behind one pod: the supervisor, the worker process and their channel.

`--workers 1` (the default) uses only `count` (to parse the flag): `decorator run` is then one process
as before, with no supervisor. Imports app, telemetry, reload and rules.isolated; proxy only via the app.
"""
