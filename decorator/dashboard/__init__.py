"""The built-in dashboard (`decorator dashboard`): a separate process that receives sidecar telemetry.

wire.py is the only part the sidecar imports (the payload models); server.py and store.py run only in
the dashboard process. Must not import proxy, rules or telemetry.
"""
