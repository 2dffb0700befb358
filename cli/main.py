"""The ``aeknn`` command line: run the study, read its tables and any sample's neighbours.

The arguments are in cli/parser.py, the commands in cli/commands.py, what they print in cli/show.py; here,
the entry point turns every known failure into one line and an exit code."""

from __future__ import annotations

import logging
import sys

from pydantic import ValidationError

from cli.commands import database_problem, database_url
from cli.parser import build_parser
from cli.show import Usage

__all__ = ["build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per migration step otherwise
    from sqlalchemy.exc import ArgumentError, DBAPIError

    from common.errors import DataError, Invalid, MissingExtra, NotFound, NotReady
    from common.study.database import SchemaError

    try:
        return args.func(args)
    except DBAPIError as exc:  # unreachable, refused, not a database: the driver's first line says which
        print(f"aeknn {args.command}: {database_problem(args, exc)}", file=sys.stderr)
        return 2
    except ArgumentError as exc:  # a URL SQLAlchemy cannot use (an unknown driver, say)
        print(f"aeknn {args.command}: cannot open the database at {database_url(args)}: {exc}", file=sys.stderr)
        return 2
    except Usage as exc:
        print(exc, file=sys.stderr)
        return 2
    except Invalid as exc:
        print(f"aeknn {args.command}: {exc}", file=sys.stderr)
        return 2
    except (NotFound, NotReady) as exc:
        print(f"aeknn {args.command}: {exc}", file=sys.stderr)
        return 1
    except ValidationError as exc:  # a setting from the environment (AEKNN_*) that does not validate
        for e in exc.errors():
            print(f"aeknn: invalid setting AEKNN_{str(e['loc'][0]).upper()}: {e['msg']}", file=sys.stderr)
        return 2
    except DataError as exc:
        print(f"aeknn: data error: {exc}", file=sys.stderr)
        return 1
    except SchemaError as exc:
        print(f"aeknn: {exc}", file=sys.stderr)
        return 1
    except MissingExtra as exc:  # the experiment is kept (failed): resume goes on from what it stored
        print(f"aeknn: {exc}; then `aeknn resume ID` continues the experiment", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("aeknn: interrupted; continue with `aeknn resume ID`", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`aeknn metrics | head`): no traceback, and none either when Python flushes
        # stdout at exit, so stdout points at /dev/null from here; the shell's code for a broken pipe
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
