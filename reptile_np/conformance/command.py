"""``reptile-np conformance``: write the suite, or check an adapter against it."""
import contextlib


def add_conformance_parser(subparsers):
    parser = subparsers.add_parser(
        "conformance", help="write the conformance suite, or check another implementation",
        description="--out DIR writes the golden cases (manifest.json and one .npz per case, "
                    "PyTorch layouts, docs/conformance.md); --check DIR --adapter REF runs an "
                    "adapter through them and prints one row per case. Exit status: 0 when "
                    "every case that ran passed, 1 when any failed, 2 for bad input.")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--out", metavar="DIR", help="directory to write the suite into")
    action.add_argument("--check", metavar="DIR",
                        help="suite directory to check an adapter against")
    parser.add_argument("--adapter", metavar="REF",
                        help="with --check: the adapter, FILE.py:NAME or MODULE:NAME (a class is "
                             "instantiated without arguments)")
    parser.set_defaults(run=run_conformance)


@contextlib.contextmanager
def _flag_names(directory_flag):
    """Re-raise a ValueError that names ``directory`` or ``adapter`` with the flag instead."""
    try:
        yield
    except ValueError as error:
        message = str(error)
        for argument, flag in (("directory:", directory_flag), ("adapter:", "--adapter:")):
            if message.startswith(argument):
                raise ValueError(flag + message[len(argument):]) from error
        raise


def run_conformance(args):
    from . import check, exit_status, format_report, write_suite
    if args.out is not None:
        if args.adapter is not None:
            raise ValueError("--adapter: only with --check DIR.")
        with _flag_names("--out:"):
            manifest = write_suite(args.out)
        print(f"{len(manifest['cases'])} cases written to {args.out}")
        return 0
    if args.adapter is None:
        raise ValueError("--adapter: required with --check (FILE.py:NAME or MODULE:NAME).")
    with _flag_names("--check:"):
        results = check(args.check, args.adapter)
    print(format_report(results))
    return exit_status(results)
