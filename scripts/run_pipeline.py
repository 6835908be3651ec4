"""Run the whole ProVQ pipeline on one dataset and print a summary table.

    python scripts/run_pipeline.py --output_dir outputs/pipeline        (what `make pipeline` runs)

Stages, each a script of its own whose output folder the next one reads:
    1. train_tokenizer.py     -> OUTPUT_DIR/tokenizer
    2. evaluate_tokenizer.py  -> OUTPUT_DIR/tokenizer_eval
    3. extract_codes.py       -> OUTPUT_DIR/codes
    4. train_generator.py     -> OUTPUT_DIR/generator
    5. evaluate_generator.py  -> OUTPUT_DIR/generator_eval (samples, grid.png, metrics.json)
A stage whose output already exists is skipped, so an interrupted run continues where it stopped
(the training stages resume from their latest checkpoint). OUTPUT_DIR/summary.json and summary.md
collect the metrics of both evaluations.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS.parent))

from provq_hf.cli import HelpFormatter  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--output_dir", default="outputs/pipeline")
    parser.add_argument("--dataset", default="mnist-5k")
    parser.add_argument("--method", default="provq_cosine", help="Tokenizer curriculum (see train_tokenizer.py --help).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokenizer_steps", type=int, default=1500, help="Tokenizer optimizer steps.")
    parser.add_argument("--manifold_warmup_steps", type=int, default=300)
    parser.add_argument("--transition_steps", type=int, default=300)
    parser.add_argument("--tokenizer_batch_size", type=int, default=32)
    parser.add_argument("--generator_preset", default="GPT-tiny")
    parser.add_argument("--generator_steps", type=int, default=1500, help="Generator optimizer steps.")
    parser.add_argument("--generator_batch_size", type=int, default=64)
    parser.add_argument("--num_samples", type=int, default=1000, help="Generated images scored against the train split.")
    parser.add_argument("--cfg_scale", type=float, default=2.0)
    parser.add_argument(
        "--max_examples",
        type=int,
        default=None,
        help="Evaluate the tokenizer on, and extract codes from, only the first N images of each split (for smoke "
        "tests; the generator then trains on N sequences). Default: every image.",
    )
    parser.add_argument("--extra_tokenizer_args", default="", help="More train_tokenizer.py flags, as one quoted string.")
    parser.add_argument("--extra_generator_args", default="", help="More train_generator.py flags, as one quoted string.")
    args = parser.parse_args(argv)
    if args.max_examples is not None and args.max_examples < 1:
        parser.error(f"--max_examples must be at least 1, got {args.max_examples}.")
    return args


def run_stage(name: str, script: str, arguments: list[str], done_marker: Path) -> float | None:
    """Run one stage script unless `done_marker` exists; return its wall time in seconds, None when skipped."""
    if done_marker.exists():
        print(f"== {name}: already done ({done_marker})", flush=True)
        return None
    print(f"== {name}: python scripts/{script} {' '.join(arguments)}", flush=True)
    started = time.time()
    result = subprocess.run([sys.executable, str(SCRIPTS / script), *arguments])
    if result.returncode != 0:
        raise SystemExit(f"Stage '{name}' failed with exit code {result.returncode}; see its output above.")
    return time.time() - started


def format_summary(summary: dict) -> str:
    tokenizer, generator = summary["tokenizer"], summary["generator"]
    rows = [
        ("tokenizer", "psnr (dB)", tokenizer["psnr"]),
        ("tokenizer", "ssim", tokenizer["ssim"]),
        ("tokenizer", "rfid", tokenizer["rfid"]),
        ("tokenizer", "codebook_utilization", tokenizer["codebook_utilization"]),
        ("tokenizer", "perplexity", tokenizer["perplexity"]),
        ("tokenizer", "code_spread", tokenizer["code_spread"]),
        ("generator", "gfid", generator["gfid"]),
        ("generator", "kid", generator["kid"]),
        ("generator", "inception_score", generator["inception_score"]),
        ("generator", "precision", generator["precision"]),
        ("generator", "recall", generator["recall"]),
    ]
    if generator.get("class_accuracy") is not None:
        rows.append(("generator", "class_accuracy", generator["class_accuracy"]))
    lines = ["| stage | metric | value |", "|---|---|---|"]
    lines += [f"| {stage} | {metric} | {value:.4g} |" for stage, metric, value in rows]
    extractor = tokenizer.get("feature_extractor", {})
    lines += [
        "",
        f"Feature extractor: {extractor.get('name', 'n/a')} (test accuracy {extractor.get('test_accuracy', 'n/a')}).",
        f"rFID reference: {tokenizer.get('rfid_reference')}; gFID reference: {generator.get('reference', 'train split')}.",
        "Stage times (s): " + ", ".join(_format_stage_time(k, v) for k, v in summary["stage_seconds"].items()),
    ]
    return "\n".join(lines)


def _format_stage_time(stage: str, seconds: float | None) -> str:
    return f"{stage} skipped (already done)" if seconds is None else f"{stage} {seconds:.0f}"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out = Path(args.output_dir)
    tokenizer_dir, codes_dir, generator_dir = out / "tokenizer", out / "codes", out / "generator"
    tokenizer_eval, generator_eval = out / "tokenizer_eval", out / "generator_eval"
    seed = ["--seed", str(args.seed)]
    max_examples = [] if args.max_examples is None else ["--max_examples", str(args.max_examples)]
    max_samples = [] if args.max_examples is None else ["--max_samples", str(args.max_examples)]
    times = {}

    times["train_tokenizer"] = run_stage(
        "train tokenizer", "train_tokenizer.py",
        ["--dataset", args.dataset, "--output_dir", str(tokenizer_dir), "--method", args.method,
         "--max_steps", str(args.tokenizer_steps), "--batch_size", str(args.tokenizer_batch_size),
         "--manifold_warmup_steps", str(args.manifold_warmup_steps), "--transition_steps", str(args.transition_steps),
         "--logging_steps", "100", "--checkpointing_steps", "500", "--resume_from_checkpoint", "latest",
         *seed, *args.extra_tokenizer_args.split()],
        tokenizer_dir / "README.md",  # the model card is written last
    )
    times["evaluate_tokenizer"] = run_stage(
        "evaluate tokenizer", "evaluate_tokenizer.py",
        ["--tokenizer", str(tokenizer_dir), "--dataset", args.dataset, "--output_dir", str(tokenizer_eval),
         *max_examples],
        tokenizer_eval / "metrics.json",
    )
    times["extract_codes"] = run_stage(
        "extract codes", "extract_codes.py",
        ["--tokenizer", str(tokenizer_dir), "--dataset", args.dataset, "--output_dir", str(codes_dir),
         *max_samples],
        codes_dir / "codes_config.json",
    )
    times["train_generator"] = run_stage(
        "train generator", "train_generator.py",
        ["--codes", str(codes_dir), "--preset", args.generator_preset, "--output_dir", str(generator_dir),
         "--max_steps", str(args.generator_steps), "--batch_size", str(args.generator_batch_size),
         "--logging_steps", "100", "--checkpointing_steps", "500", "--resume_from_checkpoint", "latest",
         *seed, *args.extra_generator_args.split()],
        generator_dir / "README.md",  # the model card is written last
    )
    times["evaluate_generator"] = run_stage(
        "sample and evaluate generator", "evaluate_generator.py",
        ["--generator", str(generator_dir), "--tokenizer", str(tokenizer_dir), "--dataset", args.dataset,
         "--num_samples", str(args.num_samples), "--cfg_scale", str(args.cfg_scale), "--output_dir", str(generator_eval),
         *seed],
        generator_eval / "metrics.json",
    )

    summary = {
        "dataset": args.dataset,
        "method": args.method,
        "tokenizer": json.loads((tokenizer_eval / "metrics.json").read_text()),
        "generator": json.loads((generator_eval / "metrics.json").read_text()),
        "stage_seconds": times,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    table = format_summary(summary)
    (out / "summary.md").write_text(table + "\n")
    print("\n" + table)
    print(f"\nSample grid: {generator_eval / 'grid.png'}; reconstructions: {tokenizer_eval / 'reconstructions.png'}")
    return summary


if __name__ == "__main__":
    main()
