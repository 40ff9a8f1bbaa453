"""The `edgescale` command: a typer app whose commands live one per module.

Errors end here: an EdgescaleError becomes one line on stderr and its exit
code; a usage error from the option parser becomes one line and exit 2; no
traceback unless EDGESCALE_DEBUG=1.
"""

from __future__ import annotations

import os
import sys

import typer

from edgescale.cli.batch_cmd import batch
from edgescale.cli.bench_cmd import bench
from edgescale.cli.devices_cmd import devices
from edgescale.cli.models_cmd import models_app
from edgescale.cli.plan_cmd import plan
from edgescale.cli.pull_cmd import pull
from edgescale.cli.quant_cmd import convert, quant_report, quantize
from edgescale.cli.run_cmd import run
from edgescale.cli.serve_cmd import serve
from edgescale.cli.tune_cmd import tune
from edgescale.errors import EdgescaleError
from edgescale.runtime.backends import BackendRegistry

INTERNAL_ERROR = 70


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="edgescale",
        help="On-device LLM inference that spends test-time compute within a memory and latency budget.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    app.command("run")(run)
    app.command("batch")(batch)
    app.command("serve")(serve)
    app.add_typer(models_app(), name="models")
    app.command("pull")(pull)
    app.command("bench")(bench)
    app.command("tune")(tune)
    app.command("devices")(devices)
    app.command("plan")(plan)
    app.command("convert")(convert)
    app.command("quantize")(quantize)
    app.command("quant-report")(quant_report)
    return app


def main(argv: list[str] | None = None, *, registry: BackendRegistry | None = None) -> int:
    """Run the CLI; ``registry``: the backends commands load models with (default: built-in)."""
    app = build_app()
    argv = optional_values(list(sys.argv[1:] if argv is None else argv))
    try:
        rc = app(args=argv, standalone_mode=False, prog_name="edgescale", obj=registry)
        return rc if isinstance(rc, int) else 0  # a typer.Exit inside a command returns its code
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        sys.stderr.write("error: aborted\n")
        return 130
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130
    except EdgescaleError as exc:
        if os.environ.get("EDGESCALE_DEBUG"):
            raise
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_code
    except BrokenPipeError:
        return 0
    except Exception as exc:  # the last line of defence: one line, not a traceback
        if _is_usage_error(exc):  # click's / typer's option parsing errors
            message = " ".join(exc.format_message().split())  # type: ignore[attr-defined]
            sys.stderr.write(f"error: {message}\n")
            return int(getattr(exc, "exit_code", 2) or 2)
        if os.environ.get("EDGESCALE_DEBUG"):
            raise
        sys.stderr.write(f"error: internal error: {type(exc).__name__}: {exc} "
                         "(set EDGESCALE_DEBUG=1 for a traceback)\n")
        return INTERNAL_ERROR


def optional_values(argv: list[str]) -> list[str]:
    """``--ray`` with no address (last, or before another option) means ``--ray local``:
    click has no options whose value is optional."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        out.append(arg)
        if arg == "--ray" and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            out.append("local")
    return out


def _is_usage_error(exc: BaseException) -> bool:
    """Option-parsing errors of typer (which vendors click in recent versions) or click."""
    return callable(getattr(exc, "format_message", None)) and hasattr(exc, "exit_code")


def entry() -> None:
    sys.exit(main())
