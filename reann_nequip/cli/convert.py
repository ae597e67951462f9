"""``reann-nequip convert PARA_DIR``: REANN's parameter files → a nequip training config."""

import argparse
import os
import sys

from reann_nequip._files import OutputPathError, atomic_output

HELP = "write a nequip training config equivalent to REANN's para/input_nn and para/input_density"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("para_dir", metavar="PARA_DIR", help="REANN's `para` directory")
    parser.add_argument(
        "--data",
        metavar="DIR",
        help="folder holding train/configuration and val/configuration (default: REANN's "
        "`folder` parameter, relative to the directory holding PARA_DIR)",
    )
    parser.add_argument(
        "-o", "--output", default="reann.yaml", help="config file to write (default reann.yaml)"
    )
    parser.add_argument("--seed", type=int, default=123, help="model and data seed (default 123)")


def write_config(config: dict, warnings: list, header: str, path: str, para_dir: str) -> None:
    """Write ``config`` as YAML with ``header`` and the warnings as comments on top; refuses to
    overwrite the parameter files of ``para_dir``."""
    import yaml

    from reann_nequip.integrations.reann_params import PARAMETER_FILES

    lines = [f"# {line}" for line in header.splitlines()]
    if warnings:
        lines.append("#")
        lines.append("# Differences from the REANN run:")
        lines += [f"#  - {warning}" for warning in warnings]
    body = yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=100)
    inputs = [os.path.join(para_dir, name) for name in PARAMETER_FILES]
    with atomic_output(path, inputs=inputs) as stream:
        stream.write("\n".join(lines) + "\n" + body)


def run(args: argparse.Namespace) -> int:
    from reann_nequip.integrations.reann_config import nequip_config
    from reann_nequip.integrations.reann_params import ReannParameterError, read_reann_parameters

    header = (
        f"nequip config written by `reann-nequip convert` from {os.path.abspath(args.para_dir)}\n"
        f"train: nequip-train {args.output}"
    )
    try:
        parameters = read_reann_parameters(args.para_dir)
        config, warnings = nequip_config(parameters, data_dir=args.data, seed=args.seed)
        write_config(config, warnings, header, args.output, args.para_dir)
    except (ReannParameterError, OutputPathError) as error:
        print(f"reann-nequip convert: error: {error}", file=sys.stderr)
        return 2
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"wrote {args.output}")
    return 0
