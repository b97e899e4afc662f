"""`python -m bench.loadgen SCENARIO [--server gurukul|websockets|picows] [--param k=v …]`.

Runs one scenario against one freshly started server and prints the result as JSON.
Scenario parameters are the keyword arguments of the functions in
`bench.loadgen.scenarios` (e.g. `--param clients=200 --param rate=4000`).
"""

from __future__ import annotations

import argparse
import json
import sys

from bench.common import SERVER_KINDS, raise_fd_limit
from bench.loadgen.scenarios import SCENARIOS
from bench.loadgen.session import default_workers


def _value(text: str) -> object:
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--server", choices=SERVER_KINDS, default="gurukul")
    parser.add_argument(
        "--storage",
        choices=("memory", "sqlite", "postgresql"),
        help="default: the scenario's (memory; postgresql for cluster)",
    )
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    raise_fd_limit(200_000)
    params: dict[str, object] = {
        key: _value(value) for key, value in (item.split("=", 1) for item in args.param)
    }
    if args.storage is not None:
        params["storage"] = args.storage
    result = SCENARIOS[args.scenario](args.server, workers=args.workers, **params)
    result.pop("latencies_us", None)
    json.dump(result, sys.stdout, indent=2, default=str)
    print()
    return 0 if result.get("ok", True) else 1


if __name__ == "__main__":
    raise SystemExit(main())
