"""`decorator pack new NAME`: a pack that passes `decorator test` as generated.

Owns the template files only (manifest, rules, tests, a page, README). Must not import proxy.
"""

from __future__ import annotations

import os
import re

from decorator.errors import UsageError
from decorator.packs.manifest import NAME_PATTERN

_MANIFEST = """\
# yaml-language-server: $schema=https://example.invalid/decorator/pack.schema.json
# The pack's manifest: `decorator pack show {name}`, and docs/packs.md.
name: {name}
version: 0.1.0
description: Serves a page at a path of its own and tags every response
requires: ">=0.1"
params:
  enabled:
    type: boolean
    default: true
    var: {var}_ENABLED
    description: Switch the page off with false
  path:
    default: /hello
    var: {var}_PATH
    description: Path glob the page answers
  tag:
    default: "{name}"
    var: {var}_TAG
    description: Value of the X-Pack header added to every response
"""

_RULES = """\
# {name}: rules. Params come from pack.yaml: `include: [{{pack: {name}, with: {{path: /hi}}}}]`.
rules:
  - name: page
    description: Answers the path with the pack's page instead of the app.
    enabled: ${{{var}_ENABLED}}
    match: {{ method: [GET, HEAD], path: "${{{var}_PATH}}" }}
    respond: {{ status: 200, file: {name}-page.html }}

  - name: tag
    description: Tags every response (the app's and the page).
    headers:
      response:
        set: {{ X-Pack: "${{{var}_TAG}}" }}
"""

_TESTS = """\
# {name}: tests, run by `decorator test` (no network). Rule names are the pack's own.
tests:
  - name: the page answers its path
    request: GET /hello
    expect: {{ status: 200, body_contains: "Hello from {name}", headers: {{ X-Pack: {name} }}, fired: [page, tag] }}

  - name: other paths reach the app, tagged
    request: GET /other
    upstream: {{ status: 200, body: from the app }}
    expect: {{ status: 200, body: from the app, headers: {{ X-Pack: {name} }}, not_fired: [page] }}

  - name: the page can be switched off
    env: {{ {var}_ENABLED: "false" }}
    request: GET /hello
    upstream: {{ status: 404 }}
    expect: {{ status: 404, not_fired: [page] }}
"""

_PAGE = """\
<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{name}</title></head>
<body><h1>Hello from {name}</h1></body></html>
"""

_README = """\
# {name}

A rule pack for the decorator sidecar. Use it from your rules:

```yaml
include:
  - pack: {name}
    version: "^0.1"
    with: {{ path: /hello, tag: my-service }}
```

`decorator pack show {name}` lists its params; `decorator test .` runs its tests. Bump `version`
in pack.yaml on every change (semver: a new param with a default is a minor version, a removed or
renamed one a major), and publish it as a directory on DECORATOR_PACK_PATH or as a Python
distribution with a `decorator.packs` entry point (see docs/packs.md).
"""


def scaffold(name: str, parent: str = ".") -> str:
    if not re.match(NAME_PATTERN, name):
        raise UsageError(f"pack name {name!r}: lowercase letters, digits, ., _ and -, starting with a letter or digit")
    d = os.path.join(parent, name)
    if os.path.exists(d):
        raise UsageError(f"{d} already exists")
    var = re.sub(r"[^A-Z0-9]", "_", name.upper())
    if var[0].isdigit():
        var = "P_" + var
    os.makedirs(d)
    files = {"pack.yaml": _MANIFEST, f"{name}.yaml": _RULES, f"{name}.tests.yaml": _TESTS,
             f"{name}-page.html": _PAGE, "README.md": _README}
    for fname, template in files.items():
        with open(os.path.join(d, fname), "w", encoding="utf-8") as f:
            f.write(template.format(name=name, var=var))
    return d
