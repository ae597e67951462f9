"""``nequip-deploy``: a trained checkpoint or package → the TorchScript file ``pair_reann`` loads."""

import argparse
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nequip-deploy",
        description="Deploy a reann_nequip model for LAMMPS (pair_style reann) and ASE.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    build = subparsers.add_parser(
        "build",
        help="write the deployed TorchScript file of a checkpoint or package",
        description="Write the deployed TorchScript file of a nequip checkpoint (.ckpt, EMA weights "
        "when present) or package (.nequip.zip).",
    )
    build.add_argument("model", help="nequip checkpoint (.ckpt) or package (.nequip.zip)")
    build.add_argument("output", help="deployed file to write (e.g. model.pth)")
    build.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default=None,
        help="precision of the deployed model (default: the training precision); inputs and "
        "outputs are float64 either way",
    )
    build.add_argument(
        "--units",
        default="metal",
        help="LAMMPS units style of the training data; pair_reann refuses other units (default: metal)",
    )
    info = subparsers.add_parser("info", help="print the metadata of a deployed file")
    info.add_argument("deployed", help="a file written by `nequip-deploy build`")
    args = parser.parse_args(argv)

    from ..deploy import deploy, read_metadata

    try:
        if args.command == "build":
            metadata = deploy(args.model, args.output, args.dtype, args.units)
            print(f"wrote {args.output}")
        elif args.command == "info":
            metadata = read_metadata(args.deployed)
        else:
            raise AssertionError(f"unhandled command {args.command}")
    except (FileNotFoundError, ValueError) as error:
        print(f"nequip-deploy: error: {error}", file=sys.stderr)
        return 2
    width = max(len(key) for key in metadata)
    for key, value in metadata.items():
        print(f"  {key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
