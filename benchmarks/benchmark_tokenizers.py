"""Compare the five curricula, with and without l2-normalized codes, at equal step budgets.

    python benchmarks/benchmark_tokenizers.py --output_dir outputs/benchmark_tokenizers

Each row (dataset, method, l2 setting, seed) trains a tokenizer with scripts/train_tokenizer.py and
evaluates it on the test split with the dataset's domain classifier (provq_hf.evaluation). A row whose
metrics.json exists is skipped, and a row stopped mid-training resumes from its latest checkpoint, so
rerunning the command after an interruption continues the benchmark. The summary table (mean and
standard deviation over seeds) is printed and written to OUTPUT_DIR/tokenizers.md.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import logging
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from provq_hf.configuration_provq import METHODS  # noqa: E402
from provq_hf.evaluation import evaluate_and_save  # noqa: E402

METRIC_COLUMNS = ("codebook_utilization", "perplexity", "code_spread", "psnr", "ssim", "rfid")


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/benchmark_tokenizers")
    parser.add_argument("--datasets", nargs="+", default=["mnist-5k", "photo-patches"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--l2", nargs="+", default=["off", "on"], choices=["off", "on"], help="codebook_l2_norm settings to run.")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--max_steps", type=int, default=600, help="Optimizer steps per row (equal for every method).")
    parser.add_argument("--manifold_warmup_steps", type=int, default=150)
    parser.add_argument("--transition_steps", type=int, default=150)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--extra_args", default="", help="More train_tokenizer.py flags, as one quoted string.")
    return parser.parse_args(argv)


def run_row(args: argparse.Namespace, train_script, dataset: str, method: str, l2: str, seed: int) -> dict:
    row_dir = Path(args.output_dir) / dataset / f"{method}-l2{l2}" / f"seed{seed}"
    metrics_path = row_dir / "eval" / "metrics.json"
    if metrics_path.is_file():
        return json.loads(metrics_path.read_text())

    started = time.time()
    train_args = [
        "--dataset", dataset, "--output_dir", str(row_dir), "--method", method, "--seed", str(seed),
        "--codebook_l2_norm" if l2 == "on" else "--no_codebook_l2_norm",
        "--max_steps", str(args.max_steps), "--batch_size", str(args.batch_size),
        "--learning_rate", str(args.learning_rate),
        "--manifold_warmup_steps", str(args.manifold_warmup_steps), "--transition_steps", str(args.transition_steps),
        "--checkpointing_steps", str(max(1, args.max_steps // 2)), "--checkpoints_total_limit", "1",
        "--logging_steps", str(max(1, args.max_steps // 4)), "--resume_from_checkpoint", "latest",
    ] + args.extra_args.split()
    train_script.main(train_args)
    metrics = evaluate_and_save(row_dir, dataset, row_dir / "eval")
    metrics["train_and_eval_seconds"] = time.time() - started
    metrics_path.write_text(json.dumps(metrics, indent=2))
    for checkpoint in row_dir.glob("checkpoint-*"):  # keep only the final model of a finished row
        import shutil

        shutil.rmtree(checkpoint)
    return metrics


def summarize(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3g}"
    return f"{statistics.mean(values):.3g} ± {statistics.stdev(values):.2g}"


def format_table(args: argparse.Namespace, results: dict) -> str:
    lines = [
        f"Steps per row: {args.max_steps} (T_w = {args.manifold_warmup_steps}, T_s = {args.transition_steps} where the "
        f"method has them), batch {args.batch_size}, learning rate {args.learning_rate}, omega = alpha, seeds {args.seeds}. "
        "Mean ± standard deviation over seeds. rFID uses each dataset's domain classifier.",
        "",
        "| dataset | method | l2 codes | " + " | ".join(METRIC_COLUMNS) + " |",
        "|---|---|---|" + "---|" * len(METRIC_COLUMNS),
    ]
    for (dataset, method, l2), rows in results.items():
        label = f"{method} (LlamaGen recipe)" if (method, l2) == ("vanilla", "on") else method
        cells = [summarize([row[column] for row in rows]) for column in METRIC_COLUMNS]
        lines.append(f"| {dataset} | {label} | {l2} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    train_script = load_script("train_tokenizer")
    started = time.time()
    results: dict = {}
    total = len(args.datasets) * len(args.methods) * len(args.l2) * len(args.seeds)
    done = 0
    for dataset in args.datasets:
        for method in args.methods:
            for l2 in args.l2:
                rows = []
                for seed in args.seeds:
                    rows.append(run_row(args, train_script, dataset, method, l2, seed))
                    done += 1
                    print(f"[{done}/{total}] {dataset} {method} l2={l2} seed={seed}: "
                          f"utilization {rows[-1]['codebook_utilization']:.3f}, psnr {rows[-1]['psnr']:.2f}", flush=True)
                results[(dataset, method, l2)] = rows

    header = (
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"{'CUDA' if torch.cuda.is_available() else 'CPU only'}; date {datetime.date.today()}; "
        f"wall time of this invocation {time.time() - started:.0f} s (rows already done are reused)."
    )
    table = header + "\n\n" + format_table(args, results)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.output_dir) / "tokenizers.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
