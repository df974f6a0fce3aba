"""Command line: `python -m lora_explorer {train,sweep,methods,runs,evaluate}`.

Method and task flags are generated from the parameters each method and task declares, exactly
as the Train form is. Bad input prints one line `error: ...` on stderr and exits 2.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading

from lora_explorer import models, store, tasks
from lora_explorer.config import COMMON_PARAMS, RunConfig
from lora_explorer.errors import ConfigError
from lora_explorer.methods import REGISTRY


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one clear line instead of usage + message
        self.exit(2, f"error: {message} (see --help)\n")


def _declared(groups) -> dict:
    """name -> Param across several declarations; one name must mean one thing everywhere."""
    merged = {}
    for params in groups:
        for param in params:
            if merged.setdefault(param.name, param).type is not param.type:
                raise RuntimeError(f"parameter {param.name} is declared with two types")
    return merged


METHOD_PARAMS = _declared(method.params for method in REGISTRY.values())
TASK_PARAMS = _declared([spec.params for spec in tasks.TASKS.values()] + [tasks.FILE_PARAMS])


def _add_declared(group, params, owners: dict) -> None:
    for param in params.values():
        if param.type is bool:
            helptext = f"{param.help} (true/false)"
        elif param.choices:
            helptext = f"{param.help} ({', '.join(param.choices)})"
        else:
            helptext = param.help
        if owners.get(param.name):
            helptext += f" [{', '.join(owners[param.name])}]"
        helptext = helptext.replace("%", "%%")  # argparse formats help with %
        group.add_argument(param.flag, dest=param.name, default=argparse.SUPPRESS, metavar=param.type.__name__.upper(),
                           help=helptext)


def _add_run_arguments(command, name_help: str, method_title: str = "method parameters") -> None:
    """What a run is made of: model, task, runs root, training, method and task parameters."""
    command.add_argument("--model", default="toy",
                         help=f"{', '.join(models.BUILTIN_MODELS)}, a hub id or a local directory (default toy)")
    command.add_argument("--task", default=None,
                         help=f"{', '.join(tasks.TASKS)}, a .csv/.jsonl file, or hf:<dataset> (default: the model's)")
    command.add_argument("--runs-dir", default=None, help="runs root (default $LORA_EXPLORER_RUNS or ./runs)")
    command.add_argument("--name", default="", help=name_help)
    command.add_argument("--trust-remote-code", action="store_true",
                         help="allow a hub model to run its own Python code (off by default: only for repos you trust)")
    common = {param.name: param for param in COMMON_PARAMS}
    _add_declared(command.add_argument_group("training"), common, {})
    owners = {name: [m.id for m in REGISTRY.values() if any(p.name == name for p in m.params)] for name in METHOD_PARAMS}
    _add_declared(command.add_argument_group(method_title), METHOD_PARAMS, owners)
    task_owners = {name: [s.name for s in tasks.TASKS.values() if any(p.name == name for p in s.params)]
                   + (["file"] if any(p.name == name for p in tasks.FILE_PARAMS) else []) for name in TASK_PARAMS}
    _add_declared(command.add_argument_group("task parameters"), TASK_PARAMS, task_owners)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m lora_explorer", description="Train and compare LoRA-family fine-tuning methods.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = commands.add_parser("train", help="train one run in the foreground")
    train.add_argument("--method", default="lora", help=f"one of {', '.join(REGISTRY)} (default lora)")
    _add_run_arguments(train, "a label for this run")
    sweep = commands.add_parser("sweep", help="train several methods (and seeds) on the same data and budget, "
                                              "one after the other, as one comparison group")
    sweep.add_argument("--methods", required=True, help="comma-separated method ids, e.g. lora,lora-plus,dora")
    sweep.add_argument("--seeds", default=None, help="comma-separated seeds (default: --seed, i.e. 0)")
    sweep.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2",
                       help="also vary a method, task or training parameter, e.g. --grid rank=4,16,64 (repeatable: "
                            "every combination runs)")
    _add_run_arguments(sweep, "a label for the sweep", "method parameters (each applies to every method that has it)")

    commands.add_parser("methods", help="list the methods")
    listing = commands.add_parser("runs", help="list the runs")
    listing.add_argument("--runs-dir", default=None)
    evaluate = commands.add_parser("evaluate", help="rebuild a run's trained model and evaluate it")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--runs-dir", default=None)
    evaluate.add_argument("--device", default=None, choices=("cpu", "cuda", "mps"))
    return parser


def config_from_args(args: argparse.Namespace) -> RunConfig:
    given = vars(args)
    method = REGISTRY.get(args.method)
    own = {p.name for p in method.params} if method else set()
    method_params = {name: given[name] for name in METHOD_PARAMS if name in given and (name in own or not method)}
    stray = [name for name in METHOD_PARAMS if name in given and method and name not in own]
    if stray:
        raise ConfigError(f"method '{args.method}' has no parameter --{stray[0].replace('_', '-')}")
    return _run_config(args, args.method, method_params)


def _run_config(args: argparse.Namespace, method: str, method_params: dict) -> RunConfig:
    given = vars(args)
    return RunConfig(model=args.model, method=method, task=args.task, method_params=method_params,
                     task_params={name: given[name] for name in TASK_PARAMS if name in given},
                     trust_remote_code=args.trust_remote_code, name=args.name,
                     **{p.name: given[p.name] for p in COMMON_PARAMS if p.name in given})


def cmd_train(args) -> int:
    from lora_explorer.api import RunProgress
    from lora_explorer.config import resolve
    from lora_explorer.train import train

    config = resolve(config_from_args(args))
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())  # Ctrl-C: stop after this step, keep the run
    bar = RunProgress(eval_lines=True)  # appears once the run exists: a refused run prints only its error
    try:
        run = train(config, args.runs_dir, stop_event=stop, on_run=bar.start, on_record=bar.record,
                    on_status=bar.status)
    finally:
        bar.close()
    summary = run.summary()
    status = summary.get("status")
    if status == "completed":
        metric = summary.get("eval_metric_name")
        print(f"completed {summary['steps_done']} steps: final loss {_fmt(summary.get('final_loss'))}, "
              f"eval loss {_fmt(summary.get('final_eval_loss'))}, {metric} {_fmt(summary.get('final_eval_metric'))}",
              file=sys.stderr)
    else:
        print(f"error: run {status}: {summary.get('error') or 'stopped by the user'}", file=sys.stderr)
    print(run.path)
    return 0 if status == "completed" else 1


def cmd_sweep(args) -> int:
    from lora_explorer import sweeps
    from lora_explorer.api import RunProgress

    shared = {name: value for name, value in vars(args).items() if name in METHOD_PARAMS}
    base = _run_config(args, "lora", {})
    grid = {}
    for item in args.grid:
        key, _, values = item.partition("=")
        if not key or not values:
            raise ConfigError(f"--grid takes NAME=V1,V2,..., got {item!r}")
        grid[key.strip().replace("-", "_")] = [value.strip() for value in values.split(",") if value.strip()]
    sweep = sweeps.plan(base, args.methods, args.seeds if args.seeds is not None else [base.seed], shared, args.name,
                        grid)
    total = len(sweep.configs())
    print(f"sweep {sweep.id}: {total} runs ({', '.join(sweep.methods)} x seeds {sweep.seeds}"
          + "".join(f" x {key} {values}" for key, values in grid.items()) + ")", file=sys.stderr)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())  # Ctrl-C: stop this run, launch no more
    bar = RunProgress()

    try:
        done = sweeps.run(sweep, args.runs_dir, stop_event=stop, on_run=bar.start, on_record=bar.record)
    finally:
        bar.close()
    rows = [("method", "seed", "name", "status", "loss", "eval", "metric", "s/step", "run")]
    for run in done:
        s, c = run.summary(), run.config()
        rows.append((c["method"], str(c["seed"]), c["name"], s.get("status", "?"), _fmt(s.get("final_loss")),
                     _fmt(s.get("final_eval_loss")), f"{s.get('eval_metric_name', '')} {_fmt(s.get('final_eval_metric'))}",
                     _fmt(s.get("sec_per_step"), ".3g"), run.id))
    _print_table(rows)
    print(sweep.id)
    finished = len(done) == total and all(run.summary().get("status") == "completed" for run in done)
    return 0 if finished else 1


def cmd_methods(_args) -> int:
    width = max(map(len, REGISTRY))
    for method in REGISTRY.values():
        print(f"{method.id:<{width}}  {method.summary}")
    return 0


def _fmt(value, spec=".4g") -> str:
    return "-" if value is None else format(value, spec)


def cmd_runs(args) -> int:
    infos = store.list_runs(args.runs_dir)
    if not infos:
        print(f"no runs under {store.runs_root(args.runs_dir)}", file=sys.stderr)
        return 0
    rows = [("run", "status", "model", "method", "task", "steps", "loss", "eval", "metric", "s/step")]
    for info in infos:
        s, c = info.summary, info.config
        rows.append((info.id, info.status, str(c.get("model")), str(c.get("method")), str(c.get("task")),
                     str(s.get("steps_done", "-")), _fmt(s.get("final_loss")), _fmt(s.get("final_eval_loss")),
                     f"{s.get('eval_metric_name', '')} {_fmt(s.get('final_eval_metric'))}".strip(),
                     _fmt(s.get("sec_per_step"), ".3g")))
    _print_table(rows)
    return 0


def _print_table(rows) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def cmd_evaluate(args) -> int:
    from lora_explorer.train import evaluate_run

    run = store.open_run(args.run_dir, args.runs_dir)
    if not ((run.path / "adapter").is_dir() or (run.path / "weights.safetensors").exists()):
        raise ConfigError(f"run {run.id} has no trained weights (status {run.summary().get('status')})")
    result = evaluate_run(run.path, args.device)
    print(f"eval_loss {result['eval_loss']:.6f} (recorded {_fmt(result['summary_eval_loss'], '.6f')})")
    print(f"{result['metric_name']} {result['metric']:.6f} (recorded {_fmt(result['summary_metric'], '.6f')})")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    handler = {"train": cmd_train, "sweep": cmd_sweep, "methods": cmd_methods, "runs": cmd_runs,
               "evaluate": cmd_evaluate}[args.command]
    try:
        return handler(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
