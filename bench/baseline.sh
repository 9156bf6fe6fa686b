# bench/baseline.sh — sourced by run.sh and instructions.sh: the code of an earlier commit (BASELINE,
# default ba5ed83, the end of round 1) as a plain tree, run with the project's venv.
#
# The targets compare this round's proxy with round 1's on the same box in the same run, so the old
# code must run with the same interpreter and dependencies; only `decorator` itself differs. The
# tree is `git archive`d (no worktree registered in the shared repository) to
# /tmp/decorator-baseline-<full sha> once and reused; it holds no build products, so it is the
# pure-Python code of that commit. BASELINE_TREE=<dir> uses a tree exported beforehand, as it is
# (for a checkout without the history).
#
#   baseline_tree REPO            -> prints the tree's path (extracts it if needed); 1 on failure
#   baseline_check PYTHON TREE    -> 0 when `PYTHONPATH=TREE PYTHON -P` imports decorator from TREE
#
# Why `python -P`: the venv has an editable install of the current tree, and `python -m` puts the
# working directory first on sys.path; -P (3.11+) drops that, so PYTHONPATH comes before the
# editable finder (which sits at the end of sys.meta_path) and the baseline's copy wins.
BASELINE=${BASELINE:-ba5ed83}

baseline_tree() {
  local repo=$1 sha tree
  if [ -n "${BASELINE_TREE:-}" ]; then
    [ -f "$BASELINE_TREE/decorator/__init__.py" ] || { echo "baseline: no decorator/ in BASELINE_TREE=$BASELINE_TREE" >&2; return 1; }
    echo "$BASELINE_TREE"; return 0
  fi
  sha=$(git -C "$repo" rev-parse --verify -q "$BASELINE^{commit}") || {
    echo "baseline: $BASELINE is not a commit in $repo (set BASELINE=<rev>, or BASELINE_TREE=<exported tree>)" >&2
    return 1; }
  tree=/tmp/decorator-baseline-$sha
  # A finished extraction leaves .baseline-rev behind; a half-written tree is redone.
  if [ "$(cat "$tree/.baseline-rev" 2>/dev/null)" != "$sha" ]; then
    rm -rf "$tree" && mkdir -p "$tree" \
      && git -C "$repo" archive "$sha" | tar -x -C "$tree" \
      && echo "$sha" > "$tree/.baseline-rev" || { echo "baseline: could not extract $sha to $tree" >&2; return 1; }
  fi
  echo "$tree"
}

baseline_check() {
  local py=$1 tree=$2 got
  got=$(cd / && PYTHONPATH=$tree "$py" -P -c 'import decorator; print(decorator.__file__)' 2>&1)
  case $got in "$tree"/decorator/__init__.py) return 0;; esac
  echo "baseline: PYTHONPATH=$tree $py -P imports decorator from $got, not from the baseline tree" >&2
  return 1
}
