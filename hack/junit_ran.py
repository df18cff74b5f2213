"""Exit 1 unless a JUnit XML report holds passed tests under every given class-name prefix.

.ci/run checks with it that the cluster and the real-node suites both ran: under xdist, pytest's
output names no test file, and a suite that skipped or was deselected must not pass as green.

    python hack/junit_ran.py REPORT.xml tests.cluster. tests.node.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET


def passed_by_prefix(report: str, prefixes: list[str]) -> dict[str, int]:
    counts = dict.fromkeys(prefixes, 0)
    for case in ET.parse(report).getroot().iter("testcase"):
        if any(case.find(tag) is not None for tag in ("failure", "error", "skipped")):
            continue
        for prefix in prefixes:
            if case.get("classname", "").startswith(prefix):
                counts[prefix] += 1
    return counts


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    try:
        counts = passed_by_prefix(argv[0], argv[1:])
    except (OSError, ET.ParseError) as exc:
        print(f"junit_ran: cannot read {argv[0]}: {exc}", file=sys.stderr)
        return 1
    for prefix, count in counts.items():
        print(f"{prefix}*: {count} passed")
    return 0 if all(counts.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
