"""``dlscale predict RUN INPUTS...``: a trained run's predictions for image files, folders of
images or .npz files, or its continuation of ``--prompt`` for a language model. Calls
``dlscale.inference.predictions`` and prints a table (stderr) or, with ``--json``, one
object as the last stdout line.

``predict`` was the scaling model's name until it became ``forecast``: given forecast's
flags, this command says so in one line.
"""

from __future__ import annotations

import argparse
from typing import Any

from dlscale.errors import UserError

FORECAST_DEST = "forecast_flag"


def add_parser(subparsers: Any) -> None:
    from dlscale.cli.forecast import forecast_option_strings

    p = subparsers.add_parser(
        "predict",
        help="predict with a trained run: image files, folders, an .npz, or a prompt for GPT runs",
        description=(
            "Load a run written by dlscale train (its model.json and model.safetensors; nothing is unpickled), "
            "apply the run's preprocessing to raw inputs and print each prediction. Image models take image "
            "files, folders of images or .npz files with an array x; language models take --prompt. "
            "(The scaling model that was called predict is now 'dlscale forecast'.)"
        ),
        epilog=(
            "examples:\n"
            "  dlscale predict runs/<run> cat.png dog.jpg\n"
            "  dlscale predict runs/<run> ./photos --top 3\n"
            "  dlscale predict runs/<run> test.npz --json\n"
            "  dlscale predict runs/<gpt run> --prompt 'Once upon a time' --max-new-tokens 200"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = p.add_argument
    add("run_dir", metavar="RUN", nargs="?", help="a run directory written by dlscale train")
    add("inputs", metavar="INPUTS", nargs="*", help="image files, folders of images, or .npz files (x, and optionally y)")
    add("--prompt", help="text for a language-model run to continue")
    add("--max-new-tokens", type=int, default=100, help="tokens to generate after --prompt (default 100)")
    add("--temperature", type=float, default=0.8, help="sampling temperature; 0 is greedy (default 0.8)")
    add("--top-k", type=int, help="sample only among the k most likely tokens")
    add("--seed", type=int, default=0, help="seed of the sampling (default 0)")
    add("--top", type=int, default=1, help="show the N most likely classes of each input (default 1)")
    add("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    add("--json", action="store_true", help="print one JSON object as the last stdout line")
    own = {s for action in p._actions for s in action.option_strings}
    for flag in sorted(forecast_option_strings() - own):  # taken only to name the command they belong to
        add(flag, dest=FORECAST_DEST, action=_NameFlag, nargs="?", help=argparse.SUPPRESS)
    p.set_defaults(handler=run)


class _NameFlag(argparse.Action):
    """Takes a forecast flag with or without its value and keeps only the flag's name."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, (getattr(namespace, self.dest, None) or []) + [option_string])


def run(args: argparse.Namespace) -> int:
    from dlscale.inference.predictions import complete_prompt, predict_inputs
    from dlscale.progress import make_console
    from dlscale.runs.files import to_json

    forecast_flags = getattr(args, FORECAST_DEST, None)
    if forecast_flags:
        raise UserError(
            f"dlscale predict runs a trained model now; {', '.join(sorted(set(forecast_flags)))} belong to the scaling "
            "model, which is called dlscale forecast: run the same command as dlscale forecast ..."
        )
    if args.run_dir is None:
        raise UserError("give a run directory: dlscale predict RUN INPUTS... (or --prompt TEXT for a GPT run)")
    if args.top < 1:
        raise UserError(f"--top must be at least 1, got {args.top}")
    if args.prompt is not None:
        if args.inputs:
            raise UserError("give either --prompt or input files, not both")
        result = complete_prompt(
            args.run_dir, args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
            top_k=args.top_k, seed=args.seed, device=args.device,
        )
    else:
        result = predict_inputs(args.run_dir, args.inputs, device=args.device, top=args.top)
    _print(make_console(), result)
    if args.json:
        print(to_json(result), flush=True)
    return 0


def _print(console: Any, result: dict[str, Any]) -> None:
    from rich.table import Table
    from rich.text import Text

    if result["kind"] == "completion":  # Text, not markup: generated text may hold [brackets]
        console.print(Text.assemble((result["prompt"], "bold"), result["completion"]))
        return
    table = Table(title=f"predictions of {result['run']}", title_justify="left")
    table.add_column("input")
    rows = result["predictions"]
    if result["targets"] == "values":
        table.add_column("value", justify="right")
        for row in rows:
            value = row["value"]
            table.add_row(row["input"], ", ".join(f"{v:.4g}" for v in value) if isinstance(value, list) else f"{value:.4g}")
    else:
        table.add_column("class", justify="right")
        table.add_column("probability", justify="right")
        for row in rows:
            label = f"{row['label']} ({row['class']})" if "label" in row else str(row["class"])
            if "top" in row:
                label = ", ".join(f"{t.get('label', t['class'])} {t['probability']:.1%}" for t in row["top"])
            table.add_row(row["input"], label, f"{row['probability']:.1%}")
    console.print(table)
