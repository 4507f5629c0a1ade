"""`make bench`: every benchmark, one after the other, each printing its own table."""

from __future__ import annotations

import asyncio
import os
import platform

from benchmarks import (
    classifier_bench,
    gateway_bench,
    ledger_bench,
    overhead_bench,
    router_bench,
    router_parts,
)


def main() -> None:
    print(
        f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, Python {platform.python_version()}"
    )
    asyncio.run(classifier_bench.main())
    router_bench.main()
    router_parts.main()
    overhead_bench.main()
    gateway_bench.main()
    asyncio.run(ledger_bench.main())


if __name__ == "__main__":
    main()
