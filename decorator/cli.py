"""`decorator run|validate|test|explain|schema|pack|dashboard`: parses flags and env, nothing else.

Each command hands over to the module that owns it; user errors print one line and exit 2
(bad flags) or 1 (invalid rules). Imports the owning modules lazily so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import sys

from decorator import __version__
from decorator.errors import DecoratorError, RulesInvalid, UsageError


class _Version(argparse.Action):
    """`--version`: the version and whether the hot path runs compiled, worked out only when asked."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version and build mode, and exit")

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from decorator.build import mode
        print(f"decorator {__version__} ({mode()})")
        parser.exit()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one clear line, exit 2 (argparse prints usage too)
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="decorator", description="A sidecar that decorates a running HTTP service "
                "with declarative YAML rules.")
    p.add_argument("--version", action=_Version)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    r = sub.add_parser("run", help="run the sidecar proxy in front of the app",
                       description="Listen on PORT and forward to the app on TARGET_PORT, applying the rules. "
                       "Environment: PORT (8080), TARGET_PORT (8087; HOST:PORT accepted), RULES, "
                       "DASHBOARD (alias MOTHERSHIP), DASHBOARD_TOKEN, POD_NAME. Flags win over env. "
                       "The rules reload when their files change (a file watch, plus a poll every "
                       "--reload-poll; --no-watch turns both off) and on SIGHUP, always. SIGTERM or "
                       "SIGINT drains the exchanges in flight and stops.")
    r.add_argument("--port", help="port to listen on (env PORT, default 8080)")
    r.add_argument("--host", help="address to listen on (env HOST, default 0.0.0.0)")
    r.add_argument("--target", metavar="[HOST:]PORT", help="the app (env TARGET_PORT, default 8087)")
    r.add_argument("--rules", nargs="+", metavar="PATH", help="rules file(s) or directory (env RULES)")
    r.add_argument("--admin-port", help="health/metrics port (env ADMIN_PORT, default 9090, 0 = off)")
    r.add_argument("--access-log", action="store_true", help="log one line per exchange to stderr")
    r.add_argument("--log-level", help="debug, info, warning or error (env LOG_LEVEL, default info)")
    r.add_argument("--drain-timeout", metavar="DURATION", help="on SIGTERM, wait this long for in-flight "
                   "exchanges (default 15s)")
    r.add_argument("--upstream-timeout", metavar="DURATION", help="wait this long for the app's response "
                   "head before answering 504 (default 60s)")
    r.add_argument("--connect-timeout", metavar="DURATION", help="connecting to the app (default 5s)")
    r.add_argument("--header-timeout", metavar="DURATION", help="a client must send a request head "
                   "within this (default 10s)")
    r.add_argument("--idle-timeout", metavar="DURATION", help="close idle keep-alive client "
                   "connections after this (default 60s)")
    r.add_argument("--body-timeout", metavar="DURATION", help="close a client that sends no body byte "
                   "for this long (default 60s)")
    r.add_argument("--max-header-size", metavar="BYTES", help="largest request head; 431 past it "
                   "(default 32k)")
    r.add_argument("--max-headers", metavar="N", help="most header fields in a request (default 100)")
    r.add_argument("--max-connections", metavar="N", help="most concurrent client connections "
                   "(default 10000)")
    r.add_argument("--dashboard", metavar="URL", help="push telemetry to this dashboard (env DASHBOARD)")
    r.add_argument("--reload-poll", metavar="DURATION", help="besides watching for file changes, "
                   "compare the rules files with what is loaded this often and reload if they differ "
                   "(default 5s; 0 = watch only)")
    r.add_argument("--workers", metavar="N|auto", help="serve with N worker processes, each on its own "
                   "SO_REUSEPORT socket, under a supervisor that owns the admin port, the rules and the "
                   "telemetry (env WORKERS; default 1: one process, no supervisor); auto = the cgroup CPU "
                   "limit rounded up, else the CPUs allowed, at most 8")
    r.add_argument("--no-watch", action="store_true", help="no automatic reload at all: neither the "
                   "file watch nor the poll; only SIGHUP reloads the rules")

    v = sub.add_parser("validate", help="check rules files (or a ConfigMap manifest) and report errors")
    v.add_argument("paths", nargs="+", metavar="PATH")
    v.add_argument("--format", choices=["text", "json"], default="text")

    t = sub.add_parser("test", help="run the tests: cases inside rule packs, without any network")
    t.add_argument("paths", nargs="+", metavar="PATH")

    e = sub.add_parser("explain", help="show which rules match a request, in which phase, and why not")
    e.add_argument("request", metavar='"METHOD /path"')
    e.add_argument("--rules", action="append", metavar="PATH", required=True,
                   help="rules file or directory (repeatable)")
    e.add_argument("--status", type=int, help="the app's response status to assume")
    e.add_argument("--header", action="append", default=[], metavar="K:V",
                   help="a request header (repeatable)")
    e.add_argument("--response-header", action="append", default=[], metavar="K:V",
                   help="a response header (repeatable)")

    s = sub.add_parser("schema", help="print the JSON Schema of the rules language (schema.json)")
    s.add_argument("--pack", action="store_true", help="the schema of a pack's manifest instead "
                   "(pack.schema.json)")

    pk = sub.add_parser("pack", help="rule packs: new, list, show, lock, configmap",
                        description="Rule packs: directories with a pack.yaml, included by name "
                        "(`include: [{pack: NAME, version: ^1.2, with: {...}}]`). See docs/packs.md.")
    psub = pk.add_subparsers(dest="pack_command", metavar="PACK_COMMAND", parser_class=_Parser, required=True)
    pn = psub.add_parser("new", help="scaffold a pack that passes `decorator test` as generated")
    pn.add_argument("name", metavar="NAME")
    pn.add_argument("--dir", default=".", metavar="PARENT", help="create PARENT/NAME (default: here)")
    pl = psub.add_parser("list", help="every pack on the search path, in resolution order")
    pl.add_argument("--beside", metavar="DIR", help="resolve as a rules file in DIR would (default: here)")
    ps = psub.add_parser("show", help="a pack's params (defaults, docs), rules, tests and source")
    ps.add_argument("name", metavar="NAME", help="a pack name, or a pack directory")
    ps.add_argument("--beside", metavar="DIR", help="resolve as a rules file in DIR would (default: here)")
    pc = psub.add_parser("lock", help="write packs.lock: the packs the rules include, pinned by content")
    pc.add_argument("paths", nargs="+", metavar="PATH")
    pm = psub.add_parser("configmap", help="print a ConfigMap holding the rules and their packs (vendored)")
    pm.add_argument("paths", nargs="+", metavar="PATH")
    pm.add_argument("--name", required=True, help="the ConfigMap's name")
    pm.add_argument("--namespace", help="the ConfigMap's namespace")

    d = sub.add_parser("dashboard", help="run the built-in dashboard receiver",
                       description="Receive telemetry and alerts from any number of sidecars and chart "
                       "them. Environment: DASHBOARD_TOKEN (require this bearer token on POSTs).")
    d.add_argument("--port", type=int, default=8088)
    d.add_argument("--host", default="0.0.0.0")
    d.add_argument("--db", default="decorator-dashboard.db", metavar="PATH", help="SQLite file")
    d.add_argument("--retention", default="24h", metavar="DURATION", help="keep data this long")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return 2
    try:
        return _dispatch(args)
    except UsageError as e:
        print(f"decorator {args.command}: {e}", file=sys.stderr)
        return 2
    except RulesInvalid as e:
        # Every error, then one summary line: a long list still ends saying what happened.
        print(str(e), file=sys.stderr)
        n = len(e.errors)
        verdict = "not starting" if args.command == "run" else "invalid"
        print(f"{verdict}: {n} error{'' if n == 1 else 's'}", file=sys.stderr)
        return 1
    except DecoratorError as e:  # a user error with its location; bugs keep their traceback
        print(str(e), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _dispatch(args) -> int:
    if args.command == "run":
        from decorator import settings as settings_mod
        settings = settings_mod.from_args(args)
        if settings.workers > 1:
            from decorator.workers.supervisor import run as run_workers
            return run_workers(settings)
        from decorator.app import run
        return run(settings)
    if args.command == "validate":
        from decorator.rules.commands import validate
        return validate(args.paths, fmt=args.format)
    if args.command == "test":
        from decorator.rules.commands import run_tests
        return run_tests(args.paths)
    if args.command == "explain":
        from decorator.rules.commands import explain
        return explain(args.rules, args.request, status=args.status, headers=args.header,
                       response_headers=args.response_header)
    if args.command == "schema":
        from decorator.rules.schema import render, render_pack
        sys.stdout.write(render_pack() if args.pack else render())
        return 0
    if args.command == "pack":
        from decorator.packs import commands as pack
        if args.pack_command == "new":
            return pack.new(args.name, args.dir)
        if args.pack_command == "list":
            return pack.list_packs(args.beside)
        if args.pack_command == "show":
            return pack.show(args.name, args.beside)
        if args.pack_command == "lock":
            return pack.lock(args.paths)
        return pack.configmap(args.paths, args.name, args.namespace)
    if args.command == "dashboard":
        import os

        from decorator.dashboard.server import serve
        from decorator.settings import parse_duration
        return serve(host=args.host, port=args.port, db=args.db,
                     retention=parse_duration(args.retention, "--retention"),
                     token=os.environ.get("DASHBOARD_TOKEN") or None)
    raise AssertionError(args.command)
