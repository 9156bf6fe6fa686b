"""The built-in dashboard (`decorator dashboard`): a separate process that receives sidecar telemetry.

server.py and store.py run only in the dashboard process; the sidecar imports nothing from here. What
both sides share, the wire format, lives in decorator.wire. Must not import proxy, rules or telemetry.
"""
