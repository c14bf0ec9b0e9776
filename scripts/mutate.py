#!/usr/bin/env python3
"""A small mutation tester for usertcp's engine: does the suite notice when the code is wrong?

It parses each module with `ast`, makes mutants (one small change each: a comparison swapped,
`and`/`or`, `is`/`is not`, `+`/`-`, an integer constant +1/-1, `True`/`False`, `return X` ->
`return None`, an assignment to `<obj>.<field>` or a method-call statement removed, `break`/
`continue` swapped), writes one mutant at a time into a private copy of the source tree and runs
a fast test selection there. A mutant is killed when the tests fail, survives when they pass,
times out when they hang. Survivors can then be run against the fuzz tests, time allowing.

    .venv/bin/python scripts/mutate.py --root /tmp/mut --sample 300 --seed 1 --jobs 2 \\
        --json /tmp/mutation.json
    scripts/mutate.py --root /tmp/mut --list             # every mutant, nothing run
    scripts/mutate.py --root /tmp/mut --show ID           # one mutant as a diff
    scripts/mutate.py --root /tmp/mut --only ID ID --tests 'tests/unit/test_tcp_mutants.py'

Why not mutmut: its configuration lives in pyproject.toml (a shared file here) and its runner
is built around its own copy of the project and its own test scheduling; this script keeps to
the operators we chose, a seeded sample, our test order (fast unit ladders first, `-x`), a
per-mutant timeout and a hard wall-clock bound, which is what a 2-core machine shared with
other test runs needs. Changes are spliced into the source text at the node's position, so a
mutant reads as a one-line diff.
"""

from __future__ import annotations

import argparse
import ast
import bisect
import difflib
import glob
import importlib.util
import io
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tokenize
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_FILES = ["usertcp/tcp/*.py", "usertcp/stack.py"]
# Unit ladders of the engine first: they are fast and kill most mutants, and -x stops there.
DEFAULT_TESTS = ("tests/unit/test_tcp_*.py tests/unit/test_cli_timeouts.py tests/stack "
                 "-k 'not fuzz'")
DEFAULT_FUZZ_TESTS = "tests/stack/test_fuzz.py"
# Not copied into the private trees: caches, the venv, VCS data.
NOT_COPIED = (".git", ".venv", "__pycache__", ".hypothesis", "*.pyc", "*.egg-info",
              ".pytest_cache")

CMP_SWAPS = {"<": ("<=", ">="), "<=": ("<", ">"), ">": (">=", "<="), ">=": (">", "<"),
             "==": ("!=",), "!=": ("==",)}
CMP_TEXT = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==",
            ast.NotEq: "!="}
SKIPPED_FUNCTIONS = {"__repr__", "__str__"}  # text for people, not behaviour


@dataclass
class Edit:
    line: int  # 1-based
    col: int  # 0-based, in characters
    end_line: int
    end_col: int
    text: str


@dataclass
class Mutant:
    id: str
    file: str
    line: int
    kind: str
    original: str
    replacement: str
    edits: list[Edit] = field(repr=False)


@dataclass
class Result:
    id: str
    file: str
    line: int
    kind: str
    original: str
    replacement: str
    status: str  # killed | survived | timeout | error | not-run
    seconds: float
    phase: str  # fast | fuzz
    failed_test: str | None = None
    returncode: int | None = None


# ---------------------------------------------------------------- making mutants


class _Source:
    """A module's text, its tokens, and conversions from ast's UTF-8 offsets to characters."""

    def __init__(self, text: str):
        self.text = text
        self.lines = text.splitlines(keepends=True)
        self.tokens = [t for t in tokenize.generate_tokens(io.StringIO(text).readline)
                       if t.type in (tokenize.OP, tokenize.NAME)]
        self.starts = [t.start for t in self.tokens]

    def char_col(self, line: int, byte_col: int) -> int:
        return len(self.lines[line - 1].encode()[:byte_col].decode())

    def start(self, node: ast.AST) -> tuple[int, int]:
        return node.lineno, self.char_col(node.lineno, node.col_offset)

    def end(self, node: ast.AST) -> tuple[int, int]:
        return node.end_lineno, self.char_col(node.end_lineno, node.end_col_offset)

    def segment(self, node: ast.AST) -> str:
        return ast.get_source_segment(self.text, node) or ""

    def tokens_between(self, after: tuple[int, int], before: tuple[int, int],
                       wanted: set[str]) -> list[tokenize.TokenInfo]:
        """Tokens in `wanted` lying between two positions (the operator of a binary node)."""
        found = []
        for t in self.tokens[bisect.bisect_left(self.starts, after):]:
            if t.end > before:
                break
            if t.string in wanted:
                found.append(t)
        return found


class _Maker(ast.NodeVisitor):
    def __init__(self, rel: str, src: _Source):
        self.rel = rel
        self.src = src
        self.mutants: list[Mutant] = []
        self.seen: set[str] = set()

    def add(self, node: ast.AST, kind: str, original: str, replacement: str,
            edits: list[Edit]) -> None:
        short = replacement.replace(" ", "_")  # ids are command-line words
        base = f"{self.rel}:{node.lineno}:{node.col_offset}:{kind}:{short}"
        mid, n = base, 1
        while mid in self.seen:
            n += 1
            mid = f"{base}#{n}"
        self.seen.add(mid)
        self.mutants.append(Mutant(mid, self.rel, node.lineno, kind, original, replacement,
                                   edits))

    def replace_node(self, node: ast.AST, kind: str, replacement: str) -> None:
        (l0, c0), (l1, c1) = self.src.start(node), self.src.end(node)
        self.add(node, kind, self.src.segment(node), replacement,
                 [Edit(l0, c0, l1, c1, replacement)])

    def replace_tokens(self, node: ast.AST, kind: str, toks: list[tokenize.TokenInfo],
                       replacement: str) -> None:
        """Replace the span from the first to the last of `toks` by one text."""
        (l0, c0), (l1, c1) = toks[0].start, toks[-1].end
        original = " ".join(t.string for t in toks)
        self.add(node, kind, original, replacement, [Edit(l0, c0, l1, c1, replacement)])

    # Parts that are not behaviour are not visited.
    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        if node.name in SKIPPED_FUNCTIONS:
            return
        for part in node.decorator_list + node.body:
            self.visit(part)
        for default in node.args.defaults + [d for d in node.args.kw_defaults if d]:
            self.visit(default)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            return
        self.generic_visit(node)

    def visit_Assert(self, node: ast.Assert) -> None:
        return  # internal self-checks: loosening one changes no behaviour under test

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)
            self.maybe_remove(node, node.target)

    def visit_Assign(self, node: ast.Assign) -> None:
        self.generic_visit(node)
        if len(node.targets) == 1:
            self.maybe_remove(node, node.targets[0])

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self.generic_visit(node)
        op = {ast.Add: ("+=", "-="), ast.Sub: ("-=", "+=")}.get(type(node.op))
        if op and not _is_text(node.value):
            toks = self.src.tokens_between(self.src.end(node.target), self.src.start(node.value),
                                           {op[0]})
            if len(toks) == 1:
                self.replace_tokens(node, "arith", toks, op[1])
        self.maybe_remove(node, node.target)

    def maybe_remove(self, stmt: ast.stmt, target: ast.AST) -> None:
        if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name):
            self.replace_node(stmt, "drop-assign", "pass")

    def visit_Expr(self, node: ast.Expr) -> None:
        self.generic_visit(node)
        call = node.value
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute):
            self.replace_node(node, "drop-call", "pass")

    def visit_Return(self, node: ast.Return) -> None:
        self.generic_visit(node)
        value = node.value
        if value is not None and not (isinstance(value, ast.Constant) and value.value is None):
            self.replace_node(value, "return-none", "None")

    def visit_Break(self, node: ast.Break) -> None:
        self.replace_node(node, "loop", "continue")

    def visit_Continue(self, node: ast.Continue) -> None:
        self.replace_node(node, "loop", "break")

    def visit_Constant(self, node: ast.Constant) -> None:
        value = node.value
        if value is True or value is False:
            self.replace_node(node, "bool", str(not value))
        elif type(value) is int:
            text = self.src.segment(node)
            as_hex = text.lower().startswith("0x")
            for new in dict.fromkeys((value + 1, value - 1)):
                if new < 0:
                    continue  # a literal cannot be negative; -1 of 0 is covered by 0 -> 1
                self.replace_node(node, "int", hex(new) if as_hex else str(new))

    def visit_Compare(self, node: ast.Compare) -> None:
        self.generic_visit(node)
        left = node.left
        for op, right in zip(node.ops, node.comparators):
            after, before = self.src.end(left), self.src.start(right)
            if type(op) in CMP_TEXT:
                text = CMP_TEXT[type(op)]
                toks = self.src.tokens_between(after, before, {text})
                if len(toks) == 1:
                    for new in CMP_SWAPS[text]:
                        self.replace_tokens(node, "cmp", toks, new)
            elif isinstance(op, ast.Is):
                toks = self.src.tokens_between(after, before, {"is"})
                if len(toks) == 1:
                    self.replace_tokens(node, "is", toks, "is not")
            elif isinstance(op, ast.IsNot):
                toks = self.src.tokens_between(after, before, {"is", "not"})
                if len(toks) == 2:
                    self.replace_tokens(node, "is", toks, "is")
            left = right

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        self.generic_visit(node)
        old, new = ("and", "or") if isinstance(node.op, ast.And) else ("or", "and")
        edits, toks = [], []
        for a, b in zip(node.values, node.values[1:]):
            found = self.src.tokens_between(self.src.end(a), self.src.start(b), {old})
            if len(found) != 1:
                return
            toks.append(found[0])
            edits.append(Edit(*found[0].start, *found[0].end, new))
        self.add(node, "bool-op", old, new, edits)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        self.generic_visit(node)
        swap = {ast.Add: ("+", "-"), ast.Sub: ("-", "+")}.get(type(node.op))
        if not swap or (swap[0] == "+" and (_is_text(node.left) or _is_text(node.right))):
            return
        toks = self.src.tokens_between(self.src.end(node.left), self.src.start(node.right),
                                       {swap[0]})
        if len(toks) == 1:
            self.replace_tokens(node, "arith", toks, swap[1])

    # Annotations are not run (from __future__ import annotations); strings are left alone.
    def visit_arg(self, node: ast.arg) -> None:
        return

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        return


def _is_text(node: ast.AST) -> bool:
    """Operands of `+` that make it concatenation, where `-` would only raise TypeError."""
    return (isinstance(node, (ast.JoinedStr, ast.List, ast.Tuple, ast.ListComp))
            or (isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes))))


def make_mutants(root: Path, rel: str) -> list[Mutant]:
    src = _Source((root / rel).read_text())
    maker = _Maker(rel, src)
    maker.visit(ast.parse(src.text))
    return maker.mutants


def apply(text: str, mutant: Mutant) -> str:
    lines = text.splitlines(keepends=True)
    for e in sorted(mutant.edits, key=lambda e: (e.line, e.col), reverse=True):
        head = lines[e.line - 1][:e.col]
        tail = lines[e.end_line - 1][e.end_col:]
        lines[e.line - 1:e.end_line] = [head + e.text + tail]
    return "".join(lines)


def diff(root: Path, mutant: Mutant) -> str:
    text = (root / mutant.file).read_text()
    return "".join(difflib.unified_diff(text.splitlines(keepends=True),
                                        apply(text, mutant).splitlines(keepends=True),
                                        mutant.file, mutant.file + " (mutant)", n=1))


# ---------------------------------------------------------------- running them


class Runner:
    def __init__(self, args: argparse.Namespace, root: Path):
        self.args = args
        self.root = root
        self.base = Path(tempfile.mkdtemp(prefix="mutate-", dir=args.workdir))
        self.trees: list[Path] = []
        self.free: list[Path] = []
        self.lock = threading.Lock()
        self.deadline = time.monotonic() + args.max_minutes * 60
        self.timeout = args.timeout or 60.0
        self.has_timeout_plugin = importlib.util.find_spec("pytest_timeout") is not None

    def make_trees(self) -> None:
        # The whole tree: some tests run scripts/ (scripts/fuzz.py) from their own checkout.
        for i in range(self.args.jobs):
            tree = self.base / f"tree{i}"
            shutil.copytree(self.root, tree, ignore=shutil.ignore_patterns(*NOT_COPIED),
                            symlinks=True)
            self.trees.append(tree)
        self.free = list(self.trees)

    def cleanup(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)

    def command(self, tree: Path, tests: str) -> list[str]:
        cmd = [self.args.python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
               "--hypothesis-seed=0"]
        if self.has_timeout_plugin:
            cmd.append(f"--timeout={self.args.test_timeout:g}")
        for word in shlex.split(tests):  # no shell: expand test-file globs here, in order
            found = sorted(glob.glob(word, root_dir=tree)) if "*" in word else []
            cmd.extend(found or [word])
        return cmd

    def run_tests(self, tree: Path, tests: str, limit: float) -> tuple[str, int | None, str,
                                                                        float]:
        """Run the selection in `tree`; (status, returncode, output, seconds)."""
        env = dict(os.environ, PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1")
        env.pop("CI", None)  # CI mode turns skips into failures; not ours to judge here
        started = time.monotonic()
        proc = subprocess.Popen(self.command(tree, tests), cwd=tree, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=max(limit, 1.0))
            status = None
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the session we started, pytest and children
            out, _ = proc.communicate()
            status = "timeout"
        finally:
            shutil.rmtree(tree / ".hypothesis", ignore_errors=True)
        took = time.monotonic() - started
        if status is None:
            rc = proc.returncode
            if rc == 0:
                status = "survived"
            elif rc == 5:
                status = "error"  # no tests collected: the selection, not the mutant
            elif "Timeout" in out and ("+++ Timeout +++" in out or "Failed: Timeout" in out):
                status = "timeout"
            else:
                status = "killed"  # rc 4 too: the unmutated tree passed, so the mutant broke
                # an import (a conftest's, which pytest reports as a usage error)
        return status, proc.returncode, out, took

    def baseline(self, tests: str) -> float | None:
        """Seconds the unmutated tree takes to pass `tests`, or None if it does not pass."""
        limit = self.deadline - time.monotonic()
        status, rc, out, took = self.run_tests(self.trees[0], tests, limit)
        if status != "survived":
            print(f"the unmutated tree fails {tests!r} (rc {rc}):\n{out[-3000:]}", flush=True)
            return None
        return took

    def run_one(self, mutant: Mutant, tests: str, phase: str) -> Result:
        with self.lock:
            tree = self.free.pop()
        path = tree / mutant.file
        original = path.read_text()
        try:
            path.write_text(apply(original, mutant))
            remaining = self.deadline - time.monotonic()
            status, rc, out, took = self.run_tests(tree, tests, min(self.timeout, remaining))
            if status == "timeout" and rc == -signal.SIGKILL and remaining < self.timeout:
                status = "not-run"  # cut by --max-minutes, not a hang
        finally:
            path.write_text(original)
            with self.lock:
                self.free.append(tree)
        failed = next((m.group(1) for m in
                       re.finditer(r"^(?:FAILED|ERROR) (\S+)", out, re.MULTILINE)), None)
        return Result(mutant.id, mutant.file, mutant.line, mutant.kind, mutant.original,
                      mutant.replacement, status, round(took, 2), phase, failed, rc)

    def run_all(self, mutants: list[Mutant], tests: str, phase: str,
                done: list[Result], save) -> None:
        queue = list(reversed(mutants))
        total = len(mutants)
        counter = [0]

        def worker() -> None:
            while True:
                with self.lock:
                    if not queue or time.monotonic() > self.deadline - 5:
                        return
                    mutant = queue.pop()
                result = self.run_one(mutant, tests, phase)
                with self.lock:
                    counter[0] += 1
                    done.append(result)
                    by = f" ({result.failed_test})" if result.failed_test else ""
                    print(f"[{phase} {counter[0]}/{total}] {result.status:8} "
                          f"{result.seconds:5.1f}s {mutant.id}  {mutant.original!r} -> "
                          f"{mutant.replacement!r}{by}", flush=True)
                    save()

        threads = [threading.Thread(target=worker) for _ in range(self.args.jobs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with self.lock:
            left = queue[::-1]
        for mutant in left:
            done.append(Result(mutant.id, mutant.file, mutant.line, mutant.kind,
                               mutant.original, mutant.replacement, "not-run", 0.0, phase))


def summarize(results: list[Result]) -> dict:
    final: dict[str, Result] = {}
    for r in results:  # the fuzz phase's verdict replaces the fast phase's "survived"
        if r.id not in final or r.status != "not-run":
            final[r.id] = r
    counts = {s: 0 for s in ("killed", "timeout", "survived", "error", "not-run")}
    for r in final.values():
        counts[r.status] += 1
    tested = counts["killed"] + counts["timeout"] + counts["survived"]
    detected = counts["killed"] + counts["timeout"]
    return {"counts": counts, "tested": tested, "detected": detected,
            "score_percent": round(100 * detected / tested, 1) if tested else None,
            "final": final}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=REPO,
                   help="source tree to copy (never modified); default: this repository")
    p.add_argument("--files", nargs="+", default=DEFAULT_FILES,
                   help="modules to mutate, globs relative to --root")
    p.add_argument("--tests", default=DEFAULT_TESTS, help="pytest arguments, fast selection")
    p.add_argument("--fuzz-tests", default=DEFAULT_FUZZ_TESTS,
                   help="run on survivors while time remains ('' for none)")
    p.add_argument("--sample", type=int, help="test a seeded random sample of N mutants")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="+", help="mutant ids to run (from --list or a JSON)")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--timeout", type=float,
                   help="seconds per mutant (default: 3 x the unmutated run + 10)")
    p.add_argument("--test-timeout", type=float, default=60,
                   help="seconds per test (pytest-timeout, when installed)")
    p.add_argument("--max-minutes", type=float, default=30)
    p.add_argument("--json", type=Path, help="write results here (updated as it goes)")
    p.add_argument("--python", default=sys.executable, help="interpreter that runs pytest")
    p.add_argument("--workdir", help="where the private tree copies go (default: $TMPDIR)")
    p.add_argument("--list", action="store_true", help="print the mutants and exit")
    p.add_argument("--show", nargs="+", metavar="ID", help="print mutants as diffs and exit")
    p.add_argument("--keep", action="store_true", help="keep the tree copies")
    args = p.parse_args()

    root = args.root.resolve()
    files = sorted({str(Path(f).relative_to(root)) for pat in args.files
                    for f in glob.glob(str(root / pat))})
    if not files:
        sys.exit("no files match --files")
    everything = [m for rel in files for m in make_mutants(root, rel)]
    by_id = {m.id: m for m in everything}

    if args.list:
        for m in everything:
            print(f"{m.id}  {m.original!r} -> {m.replacement!r}")
        print(f"{len(everything)} mutants in {len(files)} files")
        return 0
    if args.show:
        for mid in args.show:
            print(diff(root, by_id[mid]) if mid in by_id else f"no mutant {mid}")
        return 0

    if args.only:
        missing = [m for m in args.only if m not in by_id]
        if missing:
            sys.exit(f"unknown mutant ids: {missing}")
        chosen = [by_id[m] for m in args.only]
    elif args.sample is not None and args.sample < len(everything):
        chosen = random.Random(args.seed).sample(everything, args.sample)
    else:
        chosen = list(everything)
    per_file = {rel: sum(m.file == rel for m in everything) for rel in files}
    print(f"{len(everything)} mutants in {len(files)} files; running {len(chosen)} "
          f"on {args.jobs} job(s), at most {args.max_minutes:g} minutes", flush=True)

    runner = Runner(args, root)
    started = time.monotonic()
    results: list[Result] = []
    report: dict = {}

    def save() -> None:
        if args.json:
            summary = summarize(results)
            report.update(
                command=" ".join(shlex.quote(a) for a in sys.argv), root=str(root),
                files=files, generated=len(everything), generated_per_file=per_file,
                sampled=len(chosen), seed=args.seed, tests=args.tests,
                fuzz_tests=args.fuzz_tests, jobs=args.jobs, mutant_timeout=runner.timeout,
                wall_seconds=round(time.monotonic() - started, 1), counts=summary["counts"],
                tested=summary["tested"], detected=summary["detected"],
                score_percent=summary["score_percent"],
                results=[asdict(r) for r in summary["final"].values()],
                survivors_diff={r.id: diff(root, by_id[r.id]) for r in
                                summary["final"].values() if r.status == "survived"})
            args.json.write_text(json.dumps(report, indent=1) + "\n")

    try:
        runner.make_trees()
        base_s = runner.baseline(args.tests)
        if base_s is None:
            return 1
        runner.timeout = args.timeout or 3 * base_s + 10
        report["baseline_seconds"] = round(base_s, 1)
        print(f"unmutated run passes in {base_s:.1f}s; per-mutant timeout "
              f"{runner.timeout:.0f}s", flush=True)
        runner.run_all(chosen, args.tests, "fast", results, save)
        survivors = [by_id[r.id] for r in summarize(results)["final"].values()
                     if r.status == "survived"]
        if (args.fuzz_tests and survivors and time.monotonic() < runner.deadline - 30
                and runner.baseline(args.fuzz_tests) is not None):
            print(f"{len(survivors)} survivors: running them against {args.fuzz_tests}",
                  flush=True)
            runner.run_all(survivors, args.fuzz_tests, "fuzz", results, save)
    finally:
        save()
        if not args.keep:
            runner.cleanup()

    summary = summarize(results)
    c = summary["counts"]
    print()
    for r in summary["final"].values():
        if r.status in ("survived", "error"):
            print(f"{r.status}: {r.id}\n{diff(root, by_id[r.id])}")
    print(f"generated {len(everything)}, chosen {len(chosen)}, tested {summary['tested']}: "
          f"killed {c['killed']}, timeout {c['timeout']}, survived {c['survived']}, "
          f"error {c['error']}, not run {c['not-run']}; "
          f"{time.monotonic() - started:.0f}s wall")
    print(f"mutation score: {summary['detected']} killed of {summary['tested']} "
          f"({summary['score_percent']} %)  [timeouts count as killed]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
