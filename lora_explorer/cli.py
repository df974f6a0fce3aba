"""Command line: `python -m lora_explorer {train,methods,runs,evaluate}`.

Method and task flags are generated from the parameters each method and task declares, exactly
as the Train form is. Bad input prints one line `error: ...` on stderr and exits 2.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading

from lora_explorer import models, runs, tasks
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
        group.add_argument(param.flag, dest=param.name, default=argparse.SUPPRESS, metavar=param.type.__name__.upper(),
                           help=helptext)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m lora_explorer", description="Train and compare LoRA-family fine-tuning methods.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = commands.add_parser("train", help="train one run in the foreground")
    train.add_argument("--model", default="toy",
                       help=f"{', '.join(models.BUILTIN_MODELS)}, a hub id or a local directory (default toy)")
    train.add_argument("--method", default="lora", help=f"one of {', '.join(REGISTRY)} (default lora)")
    train.add_argument("--task", default=None,
                       help=f"{', '.join(tasks.TASKS)}, a .csv/.jsonl file, or hf:<dataset> (default: the model's)")
    train.add_argument("--runs-dir", default=None, help="runs root (default $LORA_EXPLORER_RUNS or ./runs)")
    train.add_argument("--name", default="", help="a label for this run")
    train.add_argument("--trust-remote-code", action="store_true",
                       help="allow a hub model to run its own Python code (off by default: only for repos you trust)")
    common = {param.name: param for param in COMMON_PARAMS}
    _add_declared(train.add_argument_group("training"), common, {})
    owners = {name: [m.id for m in REGISTRY.values() if any(p.name == name for p in m.params)] for name in METHOD_PARAMS}
    _add_declared(train.add_argument_group("method parameters"), METHOD_PARAMS, owners)
    task_owners = {name: [s.name for s in tasks.TASKS.values() if any(p.name == name for p in s.params)]
                   + (["file"] if any(p.name == name for p in tasks.FILE_PARAMS) else []) for name in TASK_PARAMS}
    _add_declared(train.add_argument_group("task parameters"), TASK_PARAMS, task_owners)

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
    return RunConfig(model=args.model, method=args.method, task=args.task, method_params=method_params,
                     task_params={name: given[name] for name in TASK_PARAMS if name in given},
                     trust_remote_code=args.trust_remote_code, name=args.name,
                     **{p.name: given[p.name] for p in COMMON_PARAMS if p.name in given})


def cmd_train(args) -> int:
    from tqdm import tqdm

    from lora_explorer.config import resolve
    from lora_explorer.train import train

    config = resolve(config_from_args(args))
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())  # Ctrl-C: stop after this step, keep the run
    bar = tqdm(total=config.steps, file=sys.stderr, unit="step", dynamic_ncols=True)

    def on_record(record):
        if record.get("loss") is not None:
            bar.update(record["step"] - bar.n)
            bar.set_postfix(loss=f"{record['loss']:.4g}")
        elif "eval_loss" in record:
            bar.write(f"step {record['step']}: eval_loss {_fmt(record['eval_loss'])}", file=sys.stderr)

    run = train(config, args.runs_dir, stop_event=stop, on_record=on_record,
                on_status=lambda text: bar.set_description(text))
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


def cmd_methods(_args) -> int:
    width = max(map(len, REGISTRY))
    for method in REGISTRY.values():
        print(f"{method.id:<{width}}  {method.summary}")
    return 0


def _fmt(value, spec=".4g") -> str:
    return "-" if value is None else format(value, spec)


def cmd_runs(args) -> int:
    infos = runs.list_runs(args.runs_dir)
    if not infos:
        print(f"no runs under {runs.runs_root(args.runs_dir)}", file=sys.stderr)
        return 0
    rows = [("run", "status", "model", "method", "task", "steps", "loss", "eval", "metric", "s/step")]
    for info in infos:
        s, c = info.summary, info.config
        rows.append((info.id, info.status, str(c.get("model")), str(c.get("method")), str(c.get("task")),
                     str(s.get("steps_done", "-")), _fmt(s.get("final_loss")), _fmt(s.get("final_eval_loss")),
                     f"{s.get('eval_metric_name', '')} {_fmt(s.get('final_eval_metric'))}".strip(),
                     _fmt(s.get("sec_per_step"), ".3g")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def cmd_evaluate(args) -> int:
    from lora_explorer.train import evaluate_run

    run = runs.open_run(args.run_dir, args.runs_dir)
    if not ((run.path / "adapter").is_dir() or (run.path / "weights.safetensors").exists()):
        raise ConfigError(f"run {run.id} has no trained weights (status {run.summary().get('status')})")
    result = evaluate_run(run.path, args.device)
    print(f"eval_loss {result['eval_loss']:.6f} (recorded {_fmt(result['summary_eval_loss'], '.6f')})")
    print(f"{result['metric_name']} {result['metric']:.6f} (recorded {_fmt(result['summary_metric'], '.6f')})")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    handler = {"train": cmd_train, "methods": cmd_methods, "runs": cmd_runs, "evaluate": cmd_evaluate}[args.command]
    try:
        return handler(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
