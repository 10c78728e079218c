"""The option walk shared by tests/cli/test_options.py (data commands) and tests/cli/test_options_model.py.

``walk(spec, tmp_path)`` runs the real ``wdr-pipe`` command line in one bounded subprocess
(``DRIVER``): for every option and argument of each base command line it tries every value of
``spec["values"]`` (and, with ``spec["flags"]``, each flag switched on once), each case in a
folder of its own, under an alarm. ``problems(results)`` lists every case that did not end in
exit 0 (it worked) or 1/2 (refused, with exactly one ``Error:`` line), or that hung, raised or
showed a traceback.

A spec (JSON) holds:

- ``bases``: ``{label: [args...]}``; the label is the command's path (``"store info"``),
  optionally ``#something`` to walk the same command from another base (``"predict#images"``).
  An argument is walked at the position right after the command's name (replacing what is there,
  or inserted before the first option).
- ``templates``: ``{"{name}": folder}``; a base that spells ``{name}`` gets a fresh copy of the
  folder in the case's own folder. ``{new}`` is a path in the case folder that does not exist yet.
- ``values``: the values tried; ``values_for``: ``{"label option": [values...]}`` where an option
  takes fewer (say why where it is used); ``skip``: ``[[label, option, value or "*"], ...]``:
  cases not run (say why where it is used).
- ``seconds``: the bound of one case (``seconds_for``: ``{"label option": seconds}`` where one takes
  longer); ``flags``: also switch every flag on once (value ``"(on)"``).
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, List

from helpers import subprocess_env

VALUES = ["0", "-1", "9" * 24, "", "nan"]

DRIVER = textwrap.dedent('''
    import io, json, logging, os, shutil, signal, sys, time, traceback


    class Hung(BaseException):
        pass


    def on_alarm(*_):
        raise Hung()


    class Forward:  # log records go to whatever sys.stderr is while a case runs
        def write(self, s): sys.stderr.write(s)
        def flush(self): pass


    def command(cli, label):
        cmd = cli
        for name in label.split("#")[0].split():
            cmd = cmd.commands[name]
        return cmd


    def cases(cli, spec):
        import click

        for label, base in spec["bases"].items():
            at = len(label.split("#")[0].split())  # where the command's argument goes
            for p in command(cli, label).params:
                if p.name in ("help", "version"):
                    continue
                if isinstance(p, click.Option) and p.is_flag:
                    if spec.get("flags"):
                        args = [a for a in base if a not in p.opts] if p.opts[0] in base else base + [p.opts[0]]
                        yield label, p.name, "(on)", args
                    continue
                for value in spec.get("values_for", {}).get(f"{label} {p.name}", spec["values"]):
                    args = list(base)
                    if isinstance(p, click.Argument):
                        if at < len(args) and not args[at].startswith("-"):
                            args[at] = value
                        else:
                            args.insert(at, value)
                    else:
                        if p.opts[0] in args:
                            k = args.index(p.opts[0])
                            del args[k:k + 2]
                        args += [p.opts[0], value]
                    yield label, p.name, value, args


    def main(spec_path):
        with open(spec_path) as f:
            spec = json.load(f)
        logging.basicConfig(stream=Forward(), level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        from wdr_pipe.cli import cli

        signal.signal(signal.SIGALRM, on_alarm)
        work, skip = spec["work"], {tuple(s) for s in spec.get("skip", [])}
        for n, (label, name, value, args) in enumerate(cases(cli, spec)):
            if (label, name, value) in skip or (label, name, "*") in skip:
                continue
            case = os.path.join(work, f"case{n}")
            os.makedirs(case)
            args = [a.replace("{new}", os.path.join(case, "new")) for a in args]
            for mark, folder in spec.get("templates", {}).items():
                if any(mark in a for a in args):
                    copy = os.path.join(case, mark.strip("{}"))
                    shutil.copytree(folder, copy)
                    args = [a.replace(mark, copy) for a in args]
            os.chdir(case)  # a value taken as a path lands here
            out, err = io.StringIO(), io.StringIO()
            old = sys.stdout, sys.stderr
            sys.stdout, sys.stderr = out, err
            t0 = time.monotonic()
            signal.alarm(spec.get("seconds_for", {}).get(f"{label} {name}", spec["seconds"]))
            code, crash = 0, None
            try:
                cli.main(args=args, prog_name="wdr-pipe", standalone_mode=True)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except Hung:
                code, crash = None, "hung"
            except BaseException:
                code, crash = None, traceback.format_exc()
            finally:
                signal.alarm(0)
                sys.stdout, sys.stderr = old
            seconds = round(time.monotonic() - t0, 2)
            os.chdir(work)
            shutil.rmtree(case, ignore_errors=True)
            print(json.dumps({"command": label, "option": name, "value": value, "args": args, "code": code,
                              "crash": crash, "seconds": seconds,
                              "stdout": out.getvalue()[-3000:], "stderr": err.getvalue()[-3000:]}), flush=True)


    if __name__ == "__main__":  # a dask worker started by a case must not rerun the walk
        main(sys.argv[1])
''')


def walk(spec: Dict, tmp_path: Path, timeout: float) -> List[Dict]:
    """Run the walk of ``spec`` (see the module's doc) in one subprocess; one result per case."""
    (tmp_path / "walk.py").write_text(DRIVER)
    work = tmp_path / "cases"
    work.mkdir()
    (tmp_path / "walk.json").write_text(json.dumps({**spec, "work": str(work)}))
    env = subprocess_env(OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(tmp_path / "walk.py"), str(tmp_path / "walk.json")],
                          capture_output=True, text=True, timeout=timeout, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def problems(results: List[Dict], refuse_seconds: float = 20) -> List[str]:
    """Every case that hung, raised, printed a traceback, ended with another exit code than 0, 1 or 2,
    refused without exactly one ``Error:`` line, or took more than ``refuse_seconds`` to refuse."""
    found = []
    for r in results:
        what = f"wdr-pipe {r['command']} --{r['option'].replace('_', '-')} {r['value']!r}"
        output = r["stdout"] + r["stderr"]
        errors = [line for line in r["stderr"].splitlines() if line.startswith("Error:")]
        if r["crash"]:
            found.append(f"{what}: {'hung' if r['crash'] == 'hung' else 'raised'}: {r['crash'][-600:]}")
        elif "Traceback" in output:
            found.append(f"{what}: printed a traceback: {output[-600:]}")
        elif r["code"] == 0:
            if errors:
                found.append(f"{what}: exit 0 but {errors}")
        elif r["code"] in (1, 2):
            if len(errors) != 1:
                found.append(f"{what}: exit {r['code']} with {len(errors)} 'Error:' lines: {r['stderr'][-600:]}")
            elif r["seconds"] > refuse_seconds:
                found.append(f"{what}: took {r['seconds']} s to refuse")
        else:
            found.append(f"{what}: exit {r['code']}: {output[-600:]}")
    return found


def range_tables() -> Dict[str, List[Dict]]:
    """command -> the tables of ``Bound`` its options are checked with (data and model side)."""
    from wdr_pipe.checks import bounds
    from wdr_pipe.demo.demo import DemoSettings
    from wdr_pipe.pipeline.configs import DownloadConfig, FeatureConfig, FetchConfig, FetchOptions, StatsConfig
    from wdr_pipe.wdr import checks as m

    return {"fetch": [bounds(FetchConfig), bounds(DownloadConfig), bounds(FetchOptions)],
            "features": [bounds(FeatureConfig)], "stats": [bounds(StatsConfig)],
            "train": [m.MODEL_BOUNDS, m.TRAIN_BOUNDS, {"pos_weight": m.POS_WEIGHT}],
            "thresholds": [{"min_positives": m.MIN_POSITIVES, "loader_workers": m.LOADER_WORKERS}],
            "evaluate": [m.EVAL_BOUNDS], "predict": [m.PREDICT_BOUNDS, {"top": m.TOP}],
            "ensemble": [m.ENSEMBLE_BOUNDS], "embed": [m.EMBED_BOUNDS, {"batch_size": m.EMBED_BATCH}],
            "similar": [{"k": m.K}], "demo": [bounds(DemoSettings)]}


def error_line(result: Dict) -> str:
    """The one ``Error:`` line of a refused case."""
    return next(line for line in result["stderr"].splitlines() if line.startswith("Error:"))
