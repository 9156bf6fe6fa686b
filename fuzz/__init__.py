"""`make fuzz`: hostile inputs against the tunnel (both directions) and the rules loader.

Three targets (requests, responses, rules), each a campaign of generated and mutated inputs
(hypothesis draws them; the committed corpus under fuzz/corpus/ seeds the mutations), judged
by an oracle that is not decorator's own code (h11 for HTTP, the error contract for rules).
Imports decorator; decorator never imports this package.
"""
