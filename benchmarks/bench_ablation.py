#!/usr/bin/env python
"""What each REANN training setting is worth: variants of the recommended configs at equal training time, over seeds.

A variant is the recommended config of the data set's kind (``configs/reann_molecules.yaml``,
``configs/reann_condensed.yaml``) with some settings changed (``VARIANTS``: ``bench_accuracy.py
--reann-overrides``, dotted keys with YAML values, ``KEY+=VALUE`` appending to a list). Each
variant, data set and seed is one ``bench_accuracy.py`` run of REANN alone (``--models reann
--no-md-cost``, the data sets and splits of that script) with ``--minutes`` of training on
``--threads`` threads; ``--jobs`` runs go at once, so give each its own cores (``jobs × threads``
at most the free cores) or the variants compete for them. The table gives, per data set, each
variant's test force MAE by seed and the median over seeds of its ratio to the baseline of the
same seed; a change is worth making the default when it helps on at least two data sets.

Example::

    .venv/bin/python benchmarks/bench_ablation.py --datasets ethanol co2_ni100 --seeds 1 2 3 \\
        --minutes 5 --threads 1 --jobs 2 --variants baseline lr-2e-3 batch-16
    .venv/bin/python benchmarks/bench_ablation.py --datasets ch4 --minutes 1 --seeds 1 \\
        --variants baseline force-weight-10
"""

import argparse
import concurrent.futures
import json
import pathlib
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional

import numpy as np
from provenance import provenance

BENCHMARKS = pathlib.Path(__file__).resolve().parent
DATASETS = ("ch4", "ethanol", "malonaldehyde", "water", "co2_ni100")
NETWORKS = ("energy_network", "coefficient_network")
MODEL = "training_module.model"
# name: overrides of the recommended config (r_max is the data set's: 5 Å but for CH4)
VARIANTS: Dict[str, List[str]] = {
    "baseline": [],
    "lr-2e-3": ["training_module.optimizer.lr=0.002"],
    "lr-1e-2": ["training_module.optimizer.lr=0.01"],
    "batch-16": ["data.train_dataloader.batch_size=16"],
    "ema-0.99": ["training_module.ema_decay=0.99"],
    # Lightning's clip of the gradients' global norm: against loss spikes
    "grad-clip-1": ["trainer.gradient_clip_val=1.0"],
    "force-weight-10": ["training_module.loss.coeffs.forces=10.0"],
    "force-weight-200": ["training_module.loss.coeffs.forces=200.0"],
    "standardised-density": [
        "trainer.callbacks+={_target_: reann_nequip.train.StandardizeDensity}"
    ],
    "silu": [f"{MODEL}.{net}.activation=silu" for net in NETWORKS],
    "no-layer-norm": [f"{MODEL}.{net}.layer_norm=false" for net in NETWORKS],
    "grid-centres": [
        f"{MODEL}.gaussian_centers=[{', '.join(f'{5.0 * k / 8:.3f}' for k in range(8))}]"
    ],
    "gaussians-12": [f"{MODEL}.num_gaussians=12"],
    "l-max-3": [f"{MODEL}.l_max=3"],
    "recursions-1": [f"{MODEL}.num_recursions=1"],
    "recursions-3": [f"{MODEL}.num_recursions=3"],
    "widths-128": [f"{MODEL}.{net}.hidden=[128, 128]" for net in NETWORKS],
    "no-type-scale": [f"{MODEL}.per_type_energy_scales=null"],
    "float32": ["model_dtype=float32"],
}
# whether the two findings add
VARIANTS["grad-clip-1-batch-16"] = VARIANTS["grad-clip-1"] + VARIANTS["batch-16"]


def run_variant(variant: str, dataset: str, seed: int, args) -> dict:
    """One ``bench_accuracy.py`` run of REANN with ``variant``'s overrides; its row."""
    with tempfile.TemporaryDirectory() as tmp:
        result_file = pathlib.Path(tmp) / "result.json"
        command = [sys.executable, str(BENCHMARKS / "bench_accuracy.py")]
        command += ["--datasets", dataset, "--models", "reann", "--seeds", str(seed)]
        command += ["--minutes", str(args.minutes), "--threads", str(args.threads)]
        command += ["--curve-seconds", str(args.curve_seconds), "--no-md-cost"]
        command += ["--json", str(result_file), "--workdir", tmp]
        if VARIANTS[variant]:
            command += ["--reann-overrides", *VARIANTS[variant]]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(
                f"error: variant {variant!r} on {dataset}, seed {seed} failed:\n"
                f"{result.stderr[-3000:]}"
            )
        (row,) = json.loads(result_file.read_text())["rows"]
    reann = row["reann"]
    return {
        "variant": variant,
        "overrides": VARIANTS[variant],
        "dataset": dataset,
        "seed": seed,
        "final": reann["final"],
        "steps": reann["steps"],
        "curve": reann["curve"],
    }


def by_seed(rows: List[dict], variant: str, dataset: str) -> Dict[int, dict]:
    """The rows of ``variant`` on ``dataset``, by seed."""
    return {
        row["seed"]: row for row in rows if row["variant"] == variant and row["dataset"] == dataset
    }


def force_mae(rows: List[dict], variant: str, dataset: str) -> Dict[int, float]:
    """Test force MAE (meV/Å) of ``variant`` on ``dataset`` by seed."""
    return {
        seed: row["final"]["forces_mae_meV_per_A"]
        for seed, row in by_seed(rows, variant, dataset).items()
    }


def markdown(data: dict) -> str:
    """Per data set: each variant's force MAE by seed, its steps and its ratio to the baseline
    (median over the seeds both have); then the ratios of every variant side by side."""
    rows, arguments = data["rows"], data["arguments"]
    datasets = [name for name in DATASETS if any(row["dataset"] == name for row in rows)]
    variants = [name for name in VARIANTS if any(row["variant"] == name for row in rows)]
    lines = [
        f"REANN alone, {arguments['minutes']} min of nequip-train per run on "
        f"{arguments['threads']} thread(s), {arguments['jobs']} run(s) at once; test errors of "
        "the best (validation) checkpoint, EMA weights.",
    ]
    ratios: Dict[tuple, str] = {}
    for dataset in datasets:
        baseline = force_mae(rows, "baseline", dataset)
        lines += [
            "",
            f"**{dataset}**",
            "",
            "| variant | force MAE by seed (meV/Å) | steps by seed | / baseline (median) |",
            "|---|---|---|---|",
        ]
        for variant in variants:
            errors = force_mae(rows, variant, dataset)
            if not errors:
                continue
            steps = {seed: row["steps"] for seed, row in by_seed(rows, variant, dataset).items()}
            shared = [seed for seed in sorted(errors) if seed in baseline]
            ratio = "–"
            if shared:
                ratio = f"{np.median([errors[s] / baseline[s] for s in shared]):.2f}"
            ratios[variant, dataset] = ratio
            lines.append(
                f"| {variant} | {' / '.join(f'{errors[s]:.1f}' for s in sorted(errors))} | "
                f"{' / '.join(str(steps[s]) for s in sorted(steps))} | {ratio} |"
            )
    lines += [
        "",
        "Force MAE / baseline, median over seeds:",
        "",
        "| variant | changes | " + " | ".join(datasets) + " |",
        "|---|---|" + "---|" * len(datasets),
    ]
    for variant in variants:
        changes = "; ".join(f"`{o}`" for o in VARIANTS[variant]) or "the recommended config"
        cells = " | ".join(ratios.get((variant, dataset), "–") for dataset in datasets)
        lines.append(f"| {variant} | {changes} | {cells} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["ethanol", "co2_ni100"], choices=DATASETS)
    parser.add_argument(
        "--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="VARIANT"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--minutes", type=int, default=5, help="training budget per run")
    parser.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads per run")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once")
    parser.add_argument(
        "--curve-seconds", type=int, default=60, help="learning-curve checkpoint interval"
    )
    parser.add_argument(
        "--json", help="write the results here, after every run; runs already in it are kept"
    )
    args = parser.parse_args(argv)
    if "baseline" not in args.variants:
        parser.error("--variants must include baseline: every ratio is to it")

    path = pathlib.Path(args.json) if args.json else None
    rows: List[dict] = []
    if path and path.exists():
        previous = json.loads(path.read_text())
        for key in ("minutes", "threads", "jobs", "curve_seconds"):
            if previous["arguments"][key] != getattr(args, key):
                raise SystemExit(
                    f"error: {path} was made with {key}={previous['arguments'][key]!r}, this "
                    f"run has {getattr(args, key)!r}: its runs are not comparable"
                )
        rows = previous["rows"]
    done = {(row["variant"], row["dataset"], row["seed"]) for row in rows}
    runs = [
        (variant, dataset, seed)
        for seed in args.seeds
        for dataset in args.datasets
        for variant in args.variants
        if (variant, dataset, seed) not in done
    ]
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(run_variant, *run, args): run for run in runs}
        for future in concurrent.futures.as_completed(futures):
            row = future.result()
            rows.append(row)
            print(
                f"{row['variant']} on {row['dataset']}, seed {row['seed']}: test force MAE "
                f"{row['final']['forces_mae_meV_per_A']:.1f} meV/Å",
                file=sys.stderr,
                flush=True,
            )
            if path:
                write_results(path, rows, args)
    print(markdown({"arguments": vars(args), "rows": rows}))


def write_results(path: pathlib.Path, rows: List[dict], args) -> None:
    """The ``--json`` file of ``rows`` (perhaps of several runs of this script): the command of
    one run that makes them all, the machine, the arguments and the rows."""
    covered = {
        "datasets": [name for name in DATASETS if any(r["dataset"] == name for r in rows)],
        "variants": [name for name in VARIANTS if any(r["variant"] == name for r in rows)],
        "seeds": sorted({row["seed"] for row in rows}),
    }
    argv = ["--datasets", *covered["datasets"], "--variants", *covered["variants"]]
    argv += ["--seeds", *map(str, covered["seeds"]), "--minutes", str(args.minutes)]
    argv += ["--threads", str(args.threads), "--jobs", str(args.jobs)]
    argv += ["--curve-seconds", str(args.curve_seconds), "--json", str(args.json)]
    document = {
        **provenance(__file__, argv),
        "arguments": {**vars(args), **covered},
        "rows": rows,
    }
    path.write_text(json.dumps(document, indent=1))


if __name__ == "__main__":
    main()
