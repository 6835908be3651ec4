"""Time the K-Means codebook init against scikit-learn's KMeans, and measure the quantizer's peak memory.

    python benchmarks/benchmark_kmeans.py --output_dir outputs/benchmark_kmeans

Data: `--num_latents` latents of dimension 8, float32, drawn from a seeded Gaussian mixture of
`--mixture_components` components (centers ~ N(0, I), per-component noise std 0.1).

Rows, for each K in `--codebook_sizes`:
  - ours: `provq_hf.kmeans.kmeans` (k-means++ seeding, then Lloyd iterations, float32, chunked distances),
    at most `--iters` iterations;
  - scikit-learn: `KMeans(n_clusters=K, init="k-means++", n_init=1, max_iter=--sklearn_max_iter,
    algorithm="lloyd", random_state=--seed)`. Its k-means++ is the greedy variant (2 + ln K candidates per
    pick), so its seeding does more work than ours.
Both run with tolerance 0 on the same `--num_threads` threads: ours stops early only when an iteration
does not lower the inertia, scikit-learn only when the labels stop changing. Inertia is the sum of squared
distances from each latent to its nearest final center.

Memory (K = the largest `--codebook_sizes` value): each operation runs in a fresh subprocess. On CUDA the
number is `torch.cuda.max_memory_allocated` minus the allocation before the operation. On CPU it is the
process's peak RSS (`resource.getrusage`) minus its RSS just before the operation, after resetting the
peak mark through /proc/self/clear_refs. The RSS number also counts allocator overhead. Next to it is an
estimate of the peak tensor bytes from the shapes the code allocates.

Each finished row is saved to OUTPUT_DIR/rows.json and reused when the command is run again with the same
settings, so an interrupted run resumes. The table is printed and written to OUTPUT_DIR/kmeans.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from provq_hf.kmeans import DEFAULT_CHUNK_ELEMENTS, kmeans  # noqa: E402
from provq_hf.quantizer import ProgressiveVectorQuantizer  # noqa: E402

CODEBOOK_DIM = 8
MIB = 2**20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/benchmark_kmeans")
    parser.add_argument("--num_latents", type=int, default=65536, help="Latents to cluster (rows of dimension 8).")
    parser.add_argument("--codebook_sizes", type=int, nargs="+", default=[1024, 16384], help="Values of K.")
    parser.add_argument("--iters", type=int, default=50, help="Maximum Lloyd iterations of our K-Means.")
    parser.add_argument(
        "--sklearn_max_iter", type=int, default=None, help="max_iter of scikit-learn's KMeans (default: --iters)."
    )
    parser.add_argument("--skip_sklearn", action="store_true", help="Time our K-Means only.")
    parser.add_argument("--mixture_components", type=int, default=4096, help="Components of the latent mixture.")
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="Device of our K-Means."
    )
    parser.add_argument(
        "--num_threads", type=int, default=os.cpu_count(), help="CPU threads for torch and scikit-learn."
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip_memory", action="store_true", help="Skip the peak-memory measurements.")
    parser.add_argument(
        "--memory_repeats", type=int, default=3, help="Fresh processes per memory measurement (min and max reported)."
    )
    # Internal: run one memory measurement in this (fresh) process and print it as JSON.
    parser.add_argument("--memory_probe", choices=["init_codebook", "forward"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sklearn_max_iter is None:
        args.sklearn_max_iter = args.iters
    return args


def make_latents(num_latents: int, num_components: int, seed: int) -> torch.Tensor:
    """Seeded Gaussian mixture `[num_latents, 8]`, float32."""
    generator = torch.Generator().manual_seed(seed)
    centers = torch.randn(num_components, CODEBOOK_DIM, generator=generator)
    components = torch.randint(num_components, (num_latents,), generator=generator)
    return centers[components] + 0.1 * torch.randn(num_latents, CODEBOOK_DIM, generator=generator)


def inertia_of(latents: torch.Tensor, centers: torch.Tensor) -> float:
    """Sum over latents of the squared distance to the nearest center, in float64 chunks."""
    latents = latents.double()
    centers = centers.double()
    total = 0.0
    for start in range(0, latents.shape[0], 4096):
        total += float(torch.cdist(latents[start : start + 4096], centers).min(dim=1).values.pow(2).sum())
    return total


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_ours(latents: torch.Tensor, num_clusters: int, args: argparse.Namespace) -> dict:
    device_latents = latents.to(args.device)
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    synchronize(args.device)
    started = time.perf_counter()
    centers, _ = kmeans(device_latents, num_clusters, num_iters=args.iters, generator=generator, tol=0.0)
    synchronize(args.device)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "inertia": inertia_of(latents, centers.cpu())}


def run_sklearn(latents: torch.Tensor, num_clusters: int, args: argparse.Namespace) -> dict:
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    model = KMeans(
        n_clusters=num_clusters,
        init="k-means++",
        n_init=1,
        max_iter=args.sklearn_max_iter,
        tol=0.0,
        algorithm="lloyd",
        random_state=args.seed,
    )
    data = latents.numpy()
    with threadpool_limits(limits=args.num_threads):
        started = time.perf_counter()
        model.fit(data)
        seconds = time.perf_counter() - started
    centers = torch.from_numpy(model.cluster_centers_).float()
    return {"seconds": seconds, "inertia": inertia_of(latents, centers), "iterations": int(model.n_iter_)}


# Peak memory.
def estimated_peak_bytes(operation: str, num_latents: int, num_clusters: int) -> int:
    """Estimate the peak bytes of live tensors during `operation`, from the shapes the code allocates.

    Both the nearest-code search and K-Means keep at most two `[rows, K]` float32 distance matrices alive at once,
    with `rows = DEFAULT_CHUNK_ELEMENTS // K`, beside the latents, the codes and per-latent vectors.
    """
    rows = min(num_latents, max(1, DEFAULT_CHUNK_ELEMENTS // num_clusters))
    distance_chunks = 2 * rows * num_clusters * 4
    data = num_latents * CODEBOOK_DIM * 4
    codes = num_clusters * CODEBOOK_DIM * 4
    if operation == "forward":
        # latents, z, z_q and the decoder input [N, D]; ids [N] int64.
        return distance_chunks + 4 * data + num_latents * 8 + codes
    # latents and the sampled copy [N, D]; labels int64, distances and k-means++ weights float32 [N];
    # centers, sums and the previous centers [K, D]; counts [K] int64.
    return distance_chunks + 2 * data + num_latents * (8 + 4 + 4) + 3 * codes + num_clusters * 8


def current_rss_bytes() -> int:
    """Resident set size now, from /proc (Linux); 0 where /proc is missing."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux 4.0+); return whether it worked."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def run_memory_probe(args: argparse.Namespace) -> None:
    """Measure one operation's peak memory in this process and print a JSON line."""
    num_clusters = max(args.codebook_sizes)
    latents = make_latents(args.num_latents, args.mixture_components, args.seed).to(args.device)
    quantizer = ProgressiveVectorQuantizer(num_clusters, CODEBOOK_DIM).to(args.device).eval()
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        # Without the reset, ru_maxrss would still hold the peak reached while importing torch.
        peak_reset = reset_peak_rss()
        before = current_rss_bytes()

    with torch.no_grad():
        if args.memory_probe == "init_codebook":
            quantizer.init_codebook(latents, num_iters=args.iters, seed=args.seed)
        else:
            quantizer(latents)

    if cuda:
        torch.cuda.synchronize()
        peak_increase = torch.cuda.max_memory_allocated() - before
        method = "torch.cuda.max_memory_allocated"
    else:
        # ru_maxrss is in KiB on Linux.
        peak_increase = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
        method = "peak RSS (getrusage) - RSS before"
        if peak_reset:
            method += ", peak reset by /proc/self/clear_refs"
        else:
            method += " (peak not reset: may include the import peak)"
    print(json.dumps({"peak_increase_bytes": peak_increase, "method": method}))


def measure_memory(operation: str, args: argparse.Namespace) -> dict:
    """Run the probe of `operation` in `--memory_repeats` fresh processes; keep every peak and the estimate."""
    command = [
        sys.executable, __file__, "--memory_probe", operation,
        "--num_latents", str(args.num_latents), "--codebook_sizes", str(max(args.codebook_sizes)),
        "--iters", str(args.memory_iters), "--mixture_components", str(args.mixture_components),
        "--device", args.device, "--num_threads", str(args.num_threads), "--seed", str(args.seed),
    ]  # fmt: skip
    peaks = []
    for _ in range(args.memory_repeats):
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"Memory probe {operation!r} failed with exit code {result.returncode}:\n{result.stderr}"
            )
        measured = json.loads(result.stdout.strip().splitlines()[-1])
        peaks.append(measured["peak_increase_bytes"])
    return {
        "peak_increase_bytes": peaks,
        "method": measured["method"],
        "estimated_bytes": estimated_peak_bytes(operation, args.num_latents, max(args.codebook_sizes)),
    }


# Rows, resume and report.
def row_settings(args: argparse.Namespace) -> dict:
    return {
        "num_latents": args.num_latents,
        "mixture_components": args.mixture_components,
        "iters": args.iters,
        "sklearn_max_iter": args.sklearn_max_iter,
        "device": args.device,
        "num_threads": args.num_threads,
        "seed": args.seed,
    }


def cached_row(rows: dict, key: str, settings: dict, compute, rows_path: Path) -> dict:
    """Return the saved row `key` when it was measured with `settings`, else compute and save it."""
    if key in rows and rows[key].get("settings") == settings:
        return rows[key]
    print(f"running {key} ...", file=sys.stderr, flush=True)
    row = dict(compute(), settings=settings)
    rows[key] = row
    rows_path.write_text(json.dumps(rows, indent=2))
    return row


def format_report(
    args: argparse.Namespace, timings: list[tuple[int, str, dict]], memory: list[tuple[str, dict]]
) -> str:
    import sklearn

    lines = [
        f"K-Means init on {args.num_latents} latents x {CODEBOOK_DIM} (float32 Gaussian mixture, "
        f"{args.mixture_components} components, seed {args.seed}); {args.num_threads} CPU threads; "
        f"torch {torch.__version__}, scikit-learn {sklearn.__version__}; {platform.processor() or platform.machine()}.",
        "",
        "| K | implementation | settings | time (s) | inertia | inertia / latent |",
        "|---|---|---|---|---|---|",
    ]
    for num_clusters, name, row in timings:
        if name == "ours":
            settings = f"k-means++ then Lloyd, max {args.iters} iterations, tol 0, device {args.device}"
        else:
            settings = (
                f'KMeans(init="k-means++", n_init=1, max_iter={args.sklearn_max_iter}, tol=0, algorithm="lloyd"), '
                f"{row['iterations']} iterations run, cpu"
            )
        lines.append(
            f"| {num_clusters} | {name} | {settings} | {row['seconds']:.1f} | {row['inertia']:.4g} "
            f"| {row['inertia'] / args.num_latents:.4g} |"
        )
    if memory:
        num_clusters = max(args.codebook_sizes)
        lines += [
            "",
            f"Peak memory at K = {num_clusters}, {args.num_latents} latents, device {args.device}, "
            f"min / max over {args.memory_repeats} fresh processes. On CPU the RSS peak also counts freed memory "
            "that the allocator keeps, and shared-library pages read again under memory pressure, so the "
            "minimum is the closer number.",
            "",
            "| operation | measured peak increase, min / max (MiB) | method | estimated peak tensor bytes (MiB) |",
            "|---|---|---|---|",
        ]
        descriptions = {
            "init_codebook": f"`quantizer.init_codebook` (K-Means, {args.memory_iters} Lloyd iterations)",
            "forward": "`quantizer(latents)` (nearest-code search, no grad)",
        }
        for operation, row in memory:
            lines.append(
                f"| {descriptions[operation]} | {min(row['peak_increase_bytes']) / MIB:.0f} / "
                f"{max(row['peak_increase_bytes']) / MIB:.0f} | {row['method']} "
                f"| {row['estimated_bytes'] / MIB:.0f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.num_threads)
    # The memory probes measure the peak of one pass; Lloyd iterations repeat the same allocations.
    args.memory_iters = min(args.iters, 2)
    if args.memory_probe:
        run_memory_probe(args)
        return

    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    rows_path = output_dir / "rows.json"
    rows = json.loads(rows_path.read_text()) if rows_path.is_file() else {}
    settings = row_settings(args)
    latents = make_latents(args.num_latents, args.mixture_components, args.seed)

    timings = []
    for num_clusters in args.codebook_sizes:
        row = cached_row(
            rows, f"ours-K{num_clusters}", settings, lambda: run_ours(latents, num_clusters, args), rows_path
        )
        timings.append((num_clusters, "ours", row))
        if not args.skip_sklearn:
            row = cached_row(
                rows, f"sklearn-K{num_clusters}", settings, lambda: run_sklearn(latents, num_clusters, args), rows_path
            )
            timings.append((num_clusters, "scikit-learn", row))

    memory = []
    if not args.skip_memory:
        memory_settings = dict(
            settings,
            codebook_size=max(args.codebook_sizes),
            memory_iters=args.memory_iters,
            memory_repeats=args.memory_repeats,
        )
        for operation in ("init_codebook", "forward"):
            row = cached_row(
                rows, f"memory-{operation}", memory_settings, lambda: measure_memory(operation, args), rows_path
            )
            memory.append((operation, row))

    report = format_report(args, timings, memory)
    (output_dir / "kmeans.md").write_text(report + "\n")
    print(report)


if __name__ == "__main__":
    main()
