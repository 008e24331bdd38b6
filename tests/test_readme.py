"""The README runs as written: every command and code block of its tour, in order.

The tour's console blocks run as shell commands (one bash per ``$`` line, keeping the
working directory and environment between them, as one terminal would) and their shown
output is compared with what the command printed; Python blocks run in one shared
namespace, as in one ``python`` session. The mount is real. The command synopsis blocks
(```text) are checked against the CLI: every command and option they show exists.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import click

from conftest import PYTHON, REPO

README = os.path.join(REPO, "README.md")
TOUR_DIR = "/tmp/spacefs-tour"  # the scratch directory the README uses; the test uses its own
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced block after the tour's heading."""
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(text, text.index("## A tour"))]


def transcript(body: str) -> list[tuple[str, list[str]]]:
    """A console block as (command, expected output lines)."""
    steps: list[tuple[str, list[str]]] = []
    for line in body.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            assert steps, f"console block must start with a '$ ' command: {line!r}"
            steps[-1][1].append(line.rstrip())
    return steps


def output_matches(expected: list[str], actual: list[str]) -> bool:
    """Line by line; '...' in a shown line stands for any text (times, pids, widths)."""
    if not expected:
        return True
    if len(expected) != len(actual):
        return False
    pattern = [re.compile(".*".join(re.escape(part) for part in e.split("...")) + r"\Z") for e in expected]
    return all(p.match(a) for p, a in zip(pattern, actual, strict=True))


class Terminal:
    """Runs commands one at a time in bash, carrying cwd and environment like one shell."""

    def __init__(self, cwd: str, state_dir: str):
        self.cwd, self.env = cwd, dict(os.environ)
        self._pwd, self._env = os.path.join(state_dir, "pwd"), os.path.join(state_dir, "env")

    def run(self, command: str) -> subprocess.CompletedProcess:
        script = f'{command}\n__rc=$?\npwd > "{self._pwd}"\nenv -0 > "{self._env}"\nexit $__rc\n'
        p = subprocess.run(["bash", "-c", script], cwd=self.cwd, env=self.env, capture_output=True,
                           text=True, timeout=300, stdin=subprocess.DEVNULL)
        self.cwd = open(self._pwd).read().strip()
        self.env = dict(kv.split("=", 1) for kv in open(self._env).read().split("\0") if "=" in kv)
        # The tour runs against the interpreter running the tests, whatever `activate` says
        # (a venv copied into a git worktree still activates the copy it came from).
        self.env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + self.env.get("PATH", "")
        return p


def run_tour(readme: str, tour: str, state_dir: str) -> None:
    """Run the README's tour with its scratch directory at ``tour``; exit 1 at the first failure."""
    text = open(readme).read().replace(TOUR_DIR, tour)
    term = Terminal(REPO, state_dir)
    namespace: dict = {"__name__": "__readme__"}
    for n, (lang, body) in enumerate(blocks(text)):
        if lang == "console":
            for command, expected in transcript(body):
                p = term.run(command)
                print(f"$ {command}\n{p.stdout}{p.stderr}", flush=True)
                if p.returncode != 0:
                    sys.exit(f"block {n}: '{command}' exited {p.returncode}: {p.stderr}")
                if not output_matches(expected, p.stdout.rstrip("\n").splitlines()):
                    sys.exit(f"block {n}: '{command}' printed\n{p.stdout}\nbut the README shows\n" + "\n".join(expected))
        elif lang == "python":
            os.chdir(term.cwd)
            os.environ.clear()
            os.environ.update(term.env)
            print(f">>> block {n}", flush=True)
            exec(compile(body, f"README block {n}", "exec"), namespace)
        else:
            assert lang == "text", f"block {n}: unknown language {lang!r} (console, python or text)"


def test_tour_runs_as_written(tmp_path):
    tour = str(tmp_path / "tour")
    state = tmp_path / "state"
    state.mkdir()
    try:
        p = subprocess.run([PYTHON, __file__, README, tour, str(state)], capture_output=True, text=True,
                           timeout=900, cwd=REPO)
        assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-6000:]
        assert "ChangeType.DELETE" in p.stdout
    finally:
        from spacefs.mount import launch, paths

        pid = os.path.join(tour, "moto.pid")  # the tour's S3 server, if a failure left it running
        if os.path.exists(pid):
            try:
                os.kill(int(open(pid).read()), 15)
            except (ProcessLookupError, ValueError):
                pass
        mnt = os.path.join(tour, "mnt")
        if os.path.isdir(mnt) and paths.mount_type(mnt) is not None:
            launch.unmount(mnt, lazy=True)


def _command(path: list[str]) -> click.Command:
    from spacefs.cli import main

    cmd: click.Command = main
    for name in path:
        if not isinstance(cmd, click.Group):
            break  # the rest are arguments
        assert name in cmd.commands, f"no command 'spacefs {' '.join(path)}'"
        cmd = cmd.commands[name]
    return cmd


def test_synopsis_matches_the_cli():
    """Every `spacefs ...` line of the README's text blocks names real commands and options."""
    checked = 0
    for lang, body in blocks(open(README).read()):
        if lang != "text":
            continue
        for line in body.splitlines():
            line = line.split("#", 1)[0].strip()
            if not line.startswith("spacefs "):
                continue
            words = line.split()[1:]
            path: list[list[str]] = []
            for w in words:  # the leading lowercase words (or {a,b} choices) name the command
                if not re.fullmatch(r"[a-z][a-z-]*|\{[a-z,-]+\}", w):
                    break
                path.append(w.strip("{}").split(","))
            variants: list[list[str]] = [[]]
            for choices in path:
                variants = [v + [c] for v in variants for c in choices]
            opts = {o.strip("[]").split("=")[0].rstrip("]") for w in words for o in w.split("|")
                    if o.strip("[").startswith("-")}
            for v in variants:
                cmd = _command(v)
                names = {n for p in cmd.params for n in (*p.opts, *p.secondary_opts)}
                missing = opts - names
                assert not missing, f"'{line}': spacefs {' '.join(v)} has no option {sorted(missing)}"
                checked += 1
    assert checked >= 15


if __name__ == "__main__":
    os.makedirs(sys.argv[2], exist_ok=True)
    run_tour(sys.argv[1], sys.argv[2], sys.argv[3])
