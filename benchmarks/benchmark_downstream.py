"""Downstream comparison: the same LlamaGen generator trained on the codes of different tokenizers.

    python benchmarks/benchmark_downstream.py --tokenizer_runs outputs/benchmark_tokenizers \
        --output_dir outputs/benchmark_downstream

Rows: `vanilla` with l2-normalized codes (the LlamaGen recipe), `vanilla` without, and `provq_cosine` in
its better l2 setting on mnist-5k (lower mean rFID in the tokenizer benchmark, or --provq_l2). Each row
and seed takes the tokenizer that benchmarks/benchmark_tokenizers.py trained with the same settings, and
trains it first when that run is missing. It then extracts codes and trains the same generator
configuration. Last, it samples with uniform class labels and scores the samples against the real
train split. A row whose
metrics.json exists is skipped, so the command can be rerun after an interruption. The summary table
(mean and standard deviation over seeds) is printed and written to OUTPUT_DIR/downstream.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import benchmark_tokenizers as tokenizer_benchmark  # noqa: E402

COLUMNS = ("gfid", "kid", "inception_score", "precision", "recall", "class_accuracy", "rfid", "codebook_utilization")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer_runs", default="outputs/benchmark_tokenizers", help="benchmark_tokenizers.py --output_dir.")
    parser.add_argument("--output_dir", default="outputs/benchmark_downstream")
    parser.add_argument("--dataset", default="mnist-5k")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--provq_l2", choices=["auto", "on", "off"], default="auto", help="l2 setting of the provq_cosine row; auto picks the lower mean rFID.")
    parser.add_argument("--generator_preset", default="GPT-tiny")
    parser.add_argument("--generator_steps", type=int, default=1000)
    parser.add_argument("--generator_batch_size", type=int, default=64)
    parser.add_argument("--num_samples", type=int, default=1000)
    parser.add_argument("--cfg_scale", type=float, default=2.0)
    # Tokenizer settings for runs that must be trained here; they match benchmark_tokenizers.py's defaults.
    parser.add_argument("--tokenizer_steps", type=int, default=300)
    parser.add_argument("--manifold_warmup_steps", type=int, default=75)
    parser.add_argument("--transition_steps", type=int, default=75)
    parser.add_argument(
        "--wait_for_tokenizers", type=float, default=0.0,
        help="Minutes to wait for a tokenizer row that a running benchmark_tokenizers.py is still training "
        "(0 trains missing rows here).",
    )
    return parser.parse_args(argv)


def tokenizer_metrics_path(args: argparse.Namespace, method: str, l2: str, seed: int) -> Path:
    return Path(args.tokenizer_runs) / args.dataset / f"{method}-l2{l2}" / f"seed{seed}" / "eval" / "metrics.json"


def wait_for(paths: list[Path], minutes: float) -> None:
    """Poll until every path exists or `minutes` have passed."""
    deadline = time.time() + 60 * minutes
    while time.time() < deadline and not all(path.is_file() for path in paths):
        time.sleep(15)


def pick_provq_l2(args: argparse.Namespace) -> str:
    if args.provq_l2 != "auto":
        return args.provq_l2
    mean_rfid = {}
    for l2 in ("on", "off"):
        paths = [tokenizer_metrics_path(args, "provq_cosine", l2, seed) for seed in args.seeds]
        wait_for(paths, args.wait_for_tokenizers)
        if not all(path.is_file() for path in paths):
            raise SystemExit(
                f"--provq_l2 auto needs the provq_cosine rows of both l2 settings in {args.tokenizer_runs}; "
                "run benchmarks/benchmark_tokenizers.py first or pass --provq_l2 on/off."
            )
        mean_rfid[l2] = statistics.mean(json.loads(path.read_text())["rfid"] for path in paths)
    return min(mean_rfid, key=mean_rfid.get)


def run_row(args, scripts, method: str, l2: str, seed: int) -> dict:
    row_dir = Path(args.output_dir) / f"{method}-l2{l2}" / f"seed{seed}"
    metrics_path = row_dir / "metrics.json"
    if metrics_path.is_file():
        return json.loads(metrics_path.read_text())
    started = time.time()
    wait_for([tokenizer_metrics_path(args, method, l2, seed)], args.wait_for_tokenizers)

    tokenizer_args = argparse.Namespace(
        output_dir=args.tokenizer_runs, max_steps=args.tokenizer_steps, manifold_warmup_steps=args.manifold_warmup_steps,
        transition_steps=args.transition_steps, batch_size=32, learning_rate=1e-3, extra_args="",
    )
    tokenizer_metrics = tokenizer_benchmark.run_row(tokenizer_args, scripts["train_tokenizer"], args.dataset, method, l2, seed)
    tokenizer_dir = Path(args.tokenizer_runs) / args.dataset / f"{method}-l2{l2}" / f"seed{seed}"

    codes_dir, generator_dir, eval_dir = row_dir / "codes", row_dir / "generator", row_dir / "eval"
    if not (codes_dir / "codes_config.json").is_file():
        scripts["extract_codes"].main(["--tokenizer", str(tokenizer_dir), "--dataset", args.dataset, "--output_dir", str(codes_dir)])
    if not (generator_dir / "model.safetensors").is_file():
        scripts["train_generator"].main([
            "--codes", str(codes_dir), "--preset", args.generator_preset, "--output_dir", str(generator_dir),
            "--max_steps", str(args.generator_steps), "--batch_size", str(args.generator_batch_size), "--seed", str(seed),
            "--logging_steps", str(max(1, args.generator_steps // 4)), "--checkpointing_steps", str(max(1, args.generator_steps // 2)),
            "--checkpoints_total_limit", "1", "--resume_from_checkpoint", "latest",
        ])
    generation = scripts["evaluate_generator"].main([
        "--generator", str(generator_dir), "--tokenizer", str(tokenizer_dir), "--dataset", args.dataset,
        "--num_samples", str(args.num_samples), "--cfg_scale", str(args.cfg_scale), "--seed", str(seed),
        "--output_dir", str(eval_dir),
    ])
    metrics = {
        **{key: generation[key] for key in ("gfid", "kid", "kid_std", "inception_score", "precision", "recall", "class_accuracy")},
        "rfid": tokenizer_metrics["rfid"],
        "codebook_utilization": tokenizer_metrics["codebook_utilization"],
        "feature_extractor": generation["feature_extractor"],
        "seconds": time.time() - started,
    }
    metrics_path.write_text(json.dumps(metrics, indent=2))
    return metrics


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    scripts = {name: tokenizer_benchmark.load_script(name) for name in ("train_tokenizer", "extract_codes", "train_generator", "evaluate_generator")}
    started = time.time()
    results = {}
    for method, l2 in [("vanilla", "on"), ("vanilla", "off"), ("provq_cosine", None)]:
        l2 = l2 or pick_provq_l2(args)
        results[(method, l2)] = []
        for seed in args.seeds:
            metrics = run_row(args, scripts, method, l2, seed)
            results[(method, l2)].append(metrics)
            print(f"{method} l2={l2} seed={seed}: gfid {metrics['gfid']:.3g}, recall {metrics['recall']:.3f}", flush=True)

    lines = [
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"{'CUDA' if torch.cuda.is_available() else 'CPU only'}; date {datetime.date.today()}; "
        f"wall time of this invocation {time.time() - started:.0f} s (rows already done are reused).",
        "",
        f"Dataset {args.dataset}; tokenizers: {args.tokenizer_steps} steps (benchmark_tokenizers.py rows); generator "
        f"{args.generator_preset}, {args.generator_steps} steps, batch {args.generator_batch_size}; {args.num_samples} samples "
        f"with uniform labels, cfg_scale {args.cfg_scale}, scored against the train split with the domain classifier. "
        f"Mean ± standard deviation over seeds {args.seeds}.",
        "",
        "| tokenizer | l2 codes | " + " | ".join(COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for (method, l2), seed_rows in results.items():
        label = f"{method} (LlamaGen recipe)" if (method, l2) == ("vanilla", "on") else method
        cells = [tokenizer_benchmark.summarize([row[column] for row in seed_rows]) for column in COLUMNS]
        lines.append(f"| {label} | {l2} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.output_dir) / "downstream.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
