"""``reann-nequip train-committee CONFIG``: the members of a committee, one nequip-train run each.

Every member is ``nequip-train CONFIG model_seed=S hydra.run.dir=OUTPUT/seedS [overrides]``: the
config's ``model_seed`` (the model's initial weights) takes each of ``--seeds``, everything else,
the data seed and so the train/validation/test split included, stays as the config has it. The
runs are separate processes: nequip-train registers its config resolvers once per process, so a
Hydra multirun (``-m``) stops at its second job. ``--deploy`` then writes each member's
``best.ckpt`` as a deployed file, ready for ``pair_coeff * * OUTPUT/member_seed*.pth ...``.
"""

import argparse
import os
import pathlib
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import List

HELP = (
    "train the members of a committee: nequip-train once per model seed, the data split fixed, "
    "optionally deployed"
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config", metavar="CONFIG", help="nequip-train config with a top-level `model_seed`"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="OVERRIDE",
        help="Hydra overrides for every member, right after CONFIG as for nequip-train, e.g. "
        "trainer.max_epochs=100",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[1, 2, 3, 4],
        help="one model seed per member (default 1 2 3 4)",
    )
    parser.add_argument(
        "-o",
        "--output-dir",
        required=True,
        help="OUTPUT: member S trains in OUTPUT/seedS (its nequip-train output in OUTPUT/seedS.log)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="members trained at once, each with cores/jobs torch threads unless OMP_NUM_THREADS "
        "is set (default 1)",
    )
    parser.add_argument(
        "--deploy",
        action="store_true",
        help="write OUTPUT/member_seedS.pth from each member's best.ckpt (nequip-deploy build)",
    )


def check_config(path: pathlib.Path) -> None:
    """Raise ``ValueError`` unless ``path`` is a YAML config with a top-level ``model_seed``."""
    import yaml

    if not path.is_file() or path.suffix not in (".yaml", ".yml"):
        raise ValueError(f"CONFIG must be a .yaml file, found `{path}`")
    with open(path) as stream:
        config = yaml.safe_load(stream)
    if not isinstance(config, dict) or "model_seed" not in config:
        raise ValueError(
            f"`{path}` has no top-level `model_seed`: add `model_seed: ${{seed}}` and give it to "
            "the model builder (`seed: ${model_seed}`), as configs/reann_ch4.yaml does"
        )


def train_member(
    config: pathlib.Path, seed: int, output: pathlib.Path, overrides: List[str], threads: str
) -> int:
    """One member's nequip-train run; returns its exit code."""
    command = [
        os.path.join(os.path.dirname(sys.executable), "nequip-train"),
        str(config),
        f"model_seed={seed}",
        f"hydra.run.dir={output / f'seed{seed}'}",
        *overrides,
    ]
    env = {**os.environ}
    env.setdefault("OMP_NUM_THREADS", threads)
    with open(output / f"seed{seed}.log", "w") as log:
        return subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT).returncode


def run(args: argparse.Namespace) -> int:
    config = pathlib.Path(args.config)
    output = pathlib.Path(args.output_dir)
    try:
        check_config(config)
        if len(set(args.seeds)) != len(args.seeds) or len(args.seeds) < 2:
            raise ValueError(f"--seeds needs two or more different seeds, found {args.seeds}")
        if args.jobs < 1:
            raise ValueError(f"--jobs must be >= 1, found {args.jobs}")
        output.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as error:
        print(f"reann-nequip train-committee: error: {error}", file=sys.stderr)
        return 2
    threads = str(max(1, (os.cpu_count() or 1) // args.jobs))
    print(f"training {len(args.seeds)} members of {config} in {output}, {args.jobs} at a time")
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        codes = list(
            pool.map(
                lambda seed: train_member(config, seed, output, args.overrides, threads),
                args.seeds,
            )
        )
    failed = [seed for seed, code in zip(args.seeds, codes) if code != 0]
    if failed:
        logs = ", ".join(str(output / f"seed{seed}.log") for seed in failed)
        print(
            f"reann-nequip train-committee: error: seeds {failed} failed, see {logs}",
            file=sys.stderr,
        )
        return 1
    if args.deploy:
        from reann_nequip.deploy import deploy

        deployed = []
        for seed in args.seeds:
            deployed.append(output / f"member_seed{seed}.pth")
            deploy(str(output / f"seed{seed}" / "best.ckpt"), str(deployed[-1]))
        print(f"deployed: pair_coeff * * {' '.join(map(str, deployed))} <elements>")
    return 0
