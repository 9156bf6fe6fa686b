"""The Dockerfile's structure, linted without a Docker engine: multi-stage, no compilers in the final image,
non-root, `decorator run` as entrypoint, no HEALTHCHECK, the env defaults, and a build context that has
what the COPY lines need."""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMPILERS = re.compile(r"\b(build-essential|gcc|g\+\+|clang|cc|make|python3-dev|libc6-dev)\b")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def stages(text: str) -> tuple[dict[str, str], list[list[tuple[str, str]]]]:
    args, result = {}, []
    for word, rest in instructions(text):
        if word == "FROM":
            result.append([(word, rest)])
        elif not result and word == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
        else:
            result[-1].append((word, rest))
    return args, result


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_multi_stage_slim_final_image_without_compilers():
    args, st = stages(dockerfile())
    assert len(st) >= 2
    builder, final = st[0], st[-1]
    base = final[0][1].split()[0]
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    assert base == "python:3.11-slim"
    assert any(w == "RUN" and "pip wheel" in r for w, r in builder)
    # The hot path ships compiled: the builder fails unless its own wheel reports `(compiled)`.
    assert any(w == "RUN" and "decorator --version" in r and "'(compiled)'" in r for w, r in builder)
    assert any(w == "COPY" and "setup.py" in r.split() for w, r in builder)
    for word, rest in final:
        if word == "RUN":
            installs = re.findall(r"apt-get install[^&;]*", rest)
            assert not any(COMPILERS.search(i) for i in installs), rest
        if word == "COPY" and "--from=" in rest:
            assert "/wheels" in rest  # only built wheels cross over, never the toolchain
    assert any(w == "RUN" and "--no-index" in r and "/wheels" in r for w, r in final)


def test_runs_as_non_root_with_the_sidecar_as_entrypoint():
    _, st = stages(dockerfile())
    final = st[-1]
    users = [r for w, r in final if w == "USER"]
    assert users and users[-1].split(":")[0] == "10001"  # numeric: runAsNonRoot can verify it
    entry = [r for w, r in final if w == "ENTRYPOINT"]
    cmd = [r for w, r in final if w == "CMD"]
    assert json.loads(entry[-1]) == ["decorator"] and json.loads(cmd[-1]) == ["run"]  # exec form
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["decorator"] == "decorator.cli:main"
    assert not any(w == "HEALTHCHECK" for stage in st for w, _ in stage)  # Kubernetes probes instead
    exposed = {p for w, r in final if w == "EXPOSE" for p in r.split()}
    assert exposed == {"8080", "9090"}


def test_env_defaults_match_the_seed():
    _, st = stages(dockerfile())
    envs = {}
    for w, r in st[-1]:
        if w == "ENV":
            envs.update(dict(pair.split("=", 1) for pair in r.split()))
    assert envs["PORT"] == "8080" and envs["TARGET_PORT"] == "8087"
    assert envs["RULES"] == "/etc/decorator/rules" and envs["PYTHONDONTWRITEBYTECODE"] == "1"


def _ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics: the last matching pattern wins; `!` re-includes; `**` spans directories."""
    ignored = False
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat[1:] if neg else pat
        pat = pat.rstrip("/")
        if fnmatch.fnmatch(path, pat) or fnmatch.fnmatch(path, pat + "/*") or pat == "**":
            ignored = not neg
    return ignored


def test_build_context_has_what_copy_needs_and_nothing_heavy():
    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    _, st = stages(dockerfile())
    sources = []
    for stage in st:
        for w, r in stage:
            if w == "COPY" and "--from=" not in r:
                sources += r.split()[:-1]
    assert set(sources) >= {"pyproject.toml", "setup.py", "decorator"}
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: missing from the repository"
        assert not _ignored(src, patterns), f"COPY {src}: excluded by .dockerignore"
    assert not _ignored("decorator/cli.py", patterns)
    local_build = ("decorator/proxy/http.cpython-311-x86_64-linux-gnu.so", "decorator/proxy/http.c",
                   "decorator/_build_manifest.json")  # the image compiles its own
    for heavy in (".venv/bin/python", ".git/HEAD", "tests/k8s/conftest.py", "decorator/__pycache__/x.pyc",
                  *local_build):
        assert _ignored(heavy, patterns), heavy
