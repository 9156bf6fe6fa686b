"""The acme-errors rule pack: its directory (pack.yaml, rules, page, tests) is the package data."""
