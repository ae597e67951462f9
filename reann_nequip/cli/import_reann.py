"""``reann-nequip import REANN_PTH --para PARA_DIR``: a REANN model as a nequip checkpoint."""

import argparse
import os
import sys

from reann_nequip._files import OutputPathError, atomic_output

HELP = "turn a model trained by the original REANN code (REANN.pth) into a nequip checkpoint"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("reann_pth", metavar="REANN_PTH", help="REANN's REANN.pth")
    parser.add_argument(
        "--para", required=True, metavar="PARA_DIR", help="`para` directory of that REANN run"
    )
    parser.add_argument(
        "-o", "--output", default="reann.ckpt", help="checkpoint to write (default reann.ckpt)"
    )
    parser.add_argument(
        "--dtype",
        choices=["float32", "float64"],
        help="model dtype (default: REANN's `dtype`); float64 reproduces REANN to round-off",
    )
    parser.add_argument(
        "--data",
        metavar="DIR",
        help="REANN data folder recorded in the checkpoint (train/ and val/ configuration files; "
        "default: REANN's `folder`); nequip-package and fine-tuning read it",
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from reann_nequip.integrations.reann_checkpoint import ReannStateDictError, import_reann
    from reann_nequip.integrations.reann_params import PARAMETER_FILES, ReannParameterError

    inputs = [args.reann_pth] + [os.path.join(args.para, name) for name in PARAMETER_FILES]
    try:
        checkpoint, warnings = import_reann(
            args.reann_pth, args.para, model_dtype=args.dtype, data_dir=args.data
        )
        with atomic_output(args.output, "wb", inputs=inputs) as stream:
            torch.save(checkpoint, stream)
    except (ReannParameterError, ReannStateDictError, OutputPathError) as error:
        print(f"reann-nequip import: error: {error}", file=sys.stderr)
        return 2
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    model = checkpoint["hyper_parameters"]["info_dict"]["training_module"]["model"]
    print(
        f"wrote {args.output}: ReannModel ({model['model_dtype']}, "
        f"{'shared' if model['shared_mixing'] else 'per-step'} mixing), per-element energy "
        f"shifts {model['per_type_energy_shifts']}\n"
        f"evaluate: reann-nequip evaluate {args.output} DATA\n"
        f"fine-tune: model: {{_target_: nequip.model.ModelFromCheckpoint, checkpoint_path: "
        f"{args.output}}}\n"
        f"deploy (LAMMPS, ASE): nequip-deploy build {args.output} model.pth\n"
        f"package: nequip-package build {args.output} model.nequip.zip"
    )
    return 0
