"""Actions: one module per action (respond, headers, record, notify) behind one registry.

See decorator.actions.registry for the contract. Must not import proxy internals (only proxy.hooks).
"""
