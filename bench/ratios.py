"""Ratio table for `bench/run.sh`: reads the table peers.sh printed and checks the issues' targets.

Owns parsing of peers.sh's report and the target list (Tunnel v2: the tunnel against nginx and
against round 1's code, the `round1` row; issue 3: memory; issue 4: rules against no rules).
Standard library only: runs with any python3.

    python3 bench/ratios.py PEERS_OUTPUT [--soak SOAK.json] [--markdown]

Exit status: 0 when every target passed, 1 when one failed or a needed row is missing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass

# Column order of peers.sh's table (after the label); "runs" and the error column are text.
COLUMNS = ("rps", "runs", "p50", "p99", "cpu_us", "cpu_pct", "rss_kb", "c1_p99", "c1_rps", "rps_16k",
           "rps_404")
MB = 1024.0


@dataclass
class Target:
    what: str
    value: float | None
    shown: str
    target: str
    ok: bool | None          # None: could not be computed (a row is missing)


def parse_table(text: str) -> dict[str, dict[str, object]]:
    """peers.sh report -> {label: {column: float | str}}; rows that did not run map to {"missing": why}."""
    rows: dict[str, dict[str, object]] = {}
    in_table = False
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "system" and "req/s" in parts:
            in_table = True
            continue
        if not in_table or line.startswith("#"):
            continue
        label, rest = parts[0], parts[1:]
        if rest and rest[0] in ("MISSING:", "DID"):
            rows[label] = {"missing": " ".join(rest)}
            continue
        row: dict[str, object] = {}
        for name, cell in zip(COLUMNS, rest):
            try:
                row[name] = float(cell)
            except ValueError:
                row[name] = cell
        row["check"] = rest[-1] if rest else "?"
        if "(process" in line:
            row["check"] = "process died"
        rows[label] = row
    return rows


def _num(rows: dict, label: str, col: str) -> float | None:
    v = rows.get(label, {}).get(col)
    return v if isinstance(v, float) and v > 0 else None


def ratio(rows: dict, what: str, a: tuple[str, str], b: tuple[str, str], target: str,
          test) -> Target:
    x, y = _num(rows, *a), _num(rows, *b)
    if x is None or y is None:
        missing = [lab for lab, col in (a, b) if _num(rows, lab, col) is None]
        return Target(what, None, f"n/a (no figure for {', '.join(missing)})", target, None)
    r = x / y
    return Target(what, r, f"{r:.2f}  ({x:g} / {y:g})", target, test(r))


def round_ratios(rounds: list[dict], label: str) -> list[float]:
    """label's req/s over decorator's, one value per interleaved round that has both rows."""
    out = []
    for rows in rounds:
        x, y = _num(rows, label, "rps"), _num(rows, "decorator", "rps")
        if x is not None and y is not None:
            out.append(x / y)
    return out


def targets(rows: dict, soak: dict | None, rules_active: bool = True,
            rounds: list[dict] | None = None) -> list[Target]:
    d = "decorator"
    # Tunnel v2's targets replace issue 3's req/s >= 1.00x, p99 <= 1.5x and CPU <= 1.5x nginx. Issue 3's
    # req/s >= 0.75x direct is kept as information: v2 sets its req/s floor against nginx (0.7x, about
    # 0.64x direct on this box), so a proxy meeting v2 would fail it.
    out = [
        ratio(rows, "decorator cpuus/r / round1 cpuus/r", (d, "cpu_us"), ("round1", "cpu_us"), "<= 0.60",
              lambda r: r <= 0.6),
        ratio(rows, "decorator cpuus/r / nginx cpuus/r", (d, "cpu_us"), ("nginx", "cpu_us"), "<= 1.40",
              lambda r: r <= 1.4),
        ratio(rows, "decorator req/s / nginx req/s", (d, "rps"), ("nginx", "rps"), ">= 0.70",
              lambda r: r >= 0.7),
        ratio(rows, "decorator p99 / nginx p99", (d, "p99"), ("nginx", "p99"), "<= 1.30",
              lambda r: r <= 1.3),
        ratio(rows, "decorator req/s / round1 req/s", (d, "rps"), ("round1", "rps"), "info", lambda r: None),
        ratio(rows, "decorator req/s / direct req/s", (d, "rps"), ("direct", "rps"), "info (issue 3: >= 0.75)",
              lambda r: None),
    ]
    if "decorator-pure" in rows:
        # Pure-Python mode may cost at most 5% more than round 1's code; instructions.sh gives the
        # deterministic figure, this one moves with the box.
        out.append(ratio(rows, "decorator-pure cpuus/r / round1 cpuus/r", ("decorator-pure", "cpu_us"),
                         ("round1", "cpu_us"), "<= 1.05", lambda r: r <= 1.05))
    if "uvloop-pump" in rows:
        # The floor: CPython + uvloop copying bytes, no HTTP work (bench/floor_pump.py). Info only:
        # it shows how much of the gap to nginx is there before any request is understood.
        for what, col in (("req/s", "rps"), ("cpuus/r", "cpu_us")):
            out.append(ratio(rows, f"uvloop-pump {what} / nginx {what}", ("uvloop-pump", col), ("nginx", col),
                             "info (floor)", lambda r: None))
    rss = _num(rows, d, "rss_kb")
    # peers.sh reports the peak under load; under 40 MB it also proves the idle target.
    # Above it, only the soak's idle figure can tell, so the row is informative only.
    if rss is None:
        out.append(Target("decorator RSS peak under load", None, "n/a (decorator missing)", "< 40 MB", None))
    else:
        out.append(Target("decorator RSS peak under load", rss / MB, f"{rss / MB:.1f} MB",
                          "< 40 MB (idle: see soak)", True if rss / MB < 40 else None))
    rules = [
        ratio(rows, "decorator+rules req/s / decorator req/s", ("decorator+rules", "rps"), (d, "rps"),
              ">= 0.90", lambda r: r >= 0.9),
        ratio(rows, "decorator+100rules req/s / decorator req/s", ("decorator+100rules", "rps"), (d, "rps"),
              ">= 0.90", lambda r: r >= 0.9),
    ]
    if rounds:
        # Rows a minute apart move with the box (±10% on a shared VM); the rounds run the three
        # decorator rows back to back, so each round's ratio shares its conditions. Their median
        # is the verdict; the single-run ratios above stay as information.
        rules = [Target(t.what + " (this table)", t.value, t.shown, "info", None) for t in rules]
        for label in ("decorator+rules", "decorator+100rules"):
            vals = round_ratios(rounds, label)
            what = f"{label} req/s / decorator req/s, median of {len(rounds)} interleaved rounds"
            if not vals:
                rules.append(Target(what, None, "n/a (no round has both rows)", ">= 0.90", None))
                continue
            med = statistics.median(vals)
            rules.append(Target(what, med, f"{med:.2f}  ({', '.join(f'{v:.2f}' for v in vals)})", ">= 0.90",
                                med >= 0.9))
    # req/s is what the issue names, but on a busy box it moves with whatever else runs; CPU per
    # request is the steadier view of what the rules cost (info only: 1/0.9 = 1.11 would match).
    for label in ("decorator+rules", "decorator+100rules"):
        t = ratio(rows, f"{label} cpuus/r / decorator cpuus/r", (label, "cpu_us"), (d, "cpu_us"), "info",
                  lambda r: None)
        rules.append(t)
    if not rules_active:  # run.sh's preflight saw `decorator run` ignore --rules
        rules = [Target(t.what, None, "n/a (rules not active in `decorator run`)", t.target, False)
                 for t in rules]
    out += rules
    if soak is not None:
        idle = soak.get("idle_rss_kb")
        out.append(Target("soak: idle RSS", idle, f"{idle / MB:.1f} MB" if idle else "n/a", "< 40 MB",
                          bool(idle) and idle / MB < 40))
        spread = soak.get("flat_spread")
        if soak.get("error"):
            out.append(Target("soak: 1M requests", None, str(soak["error"]), "completes", False))
        else:
            out.append(Target(f"soak: RSS max/min after 200k ({soak.get('requests', 0):,} requests)", spread,
                              f"{spread:.3f}" if spread else "n/a", "<= 1.10",
                              bool(spread) and spread <= 1.10))
            if soak.get("errors"):
                out.append(Target("soak: failed requests", soak["errors"], str(soak["errors"]), "0", False))
    for label in ("direct", "nginx", "round1", d, "decorator-pure", "decorator+rules", "decorator+100rules"):
        row = rows.get(label)
        if row is not None and "missing" not in row and row.get("check") != "ok":
            out.append(Target(f"{label} correctness check", None, str(row.get("check")), "ok", False))
    return out


def verdict(ok: bool | None) -> str:
    return "PASS" if ok else "FAIL" if ok is False else "-"


def render(results: list[Target], markdown: bool) -> str:
    head = ("ratio", "value", "target", "result")
    body = [(t.what, t.shown, t.target, verdict(t.ok)) for t in results]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|---|---|---|---|"]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines)
    w = [max(len(r[i]) for r in [head, *body]) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip() for r in [head, *body])


def _cell(row: dict, col: str, scale: float = 1.0, fmt: str = "g") -> str:
    v = row.get(col)
    return format(v / scale, fmt) if isinstance(v, float) else str(v or "-")


def systems_markdown(rows: dict) -> str:
    """peers.sh's rows as the Markdown table docs/benchmarks.md's results section uses."""
    lines = ["| system | req/s | p50 ms | p99 ms | cpu µs/req | RSS MB | c1 p99 ms | 16k req/s | 404 req/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, row in rows.items():
        if "missing" in row:
            lines.append(f"| {label} | {row['missing']} | | | | | | | |")
            continue

        cells = [_cell(row, "rps", fmt=".0f"), _cell(row, "p50"), _cell(row, "p99"), _cell(row, "cpu_us"),
                 _cell(row, "rss_kb", MB, ".1f"), _cell(row, "c1_p99"), _cell(row, "rps_16k", fmt=".0f"),
                 _cell(row, "rps_404", fmt=".0f")]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("peers_output", help="file holding peers.sh's stdout")
    p.add_argument("--soak", help="JSON summary written by bench/rss_soak.py --json")
    p.add_argument("--markdown", action="store_true", help="print Markdown tables (systems, then ratios)")
    p.add_argument("--rules-inactive", action="store_true", help="the rules rows ran without active rules")
    p.add_argument("--round", action="append", default=[], metavar="FILE",
                   help="peers.sh output of one interleaved round of the decorator rows (repeatable)")
    args = p.parse_args(argv)
    with open(args.peers_output, encoding="utf-8", errors="replace") as f:
        rows = parse_table(f.read())
    if not rows:
        print(f"ratios: no peers.sh table in {args.peers_output}", file=sys.stderr)
        return 1
    soak = None
    if args.soak:
        try:
            with open(args.soak, encoding="utf-8") as f:
                soak = json.load(f)
        except (OSError, ValueError) as e:
            print(f"ratios: soak result {args.soak} unreadable ({e}); soak rows left out", file=sys.stderr)
    rounds = []
    for path in args.round:
        with open(path, encoding="utf-8", errors="replace") as f:
            rounds.append(parse_table(f.read()))
    results = targets(rows, soak, rules_active=not args.rules_inactive, rounds=rounds)
    if args.markdown:
        print(systems_markdown(rows) + "\n")
    print(render(results, args.markdown))
    # "-" rows (not computable, or RSS peak above 40 MB) count as failures only when a row is missing.
    failed = [t for t in results if t.ok is False or (t.ok is None and t.value is None)]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
