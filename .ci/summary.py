"""Print the sessions' times of one .ci/run against their budget shares (warnings, never a failure).

    python .ci/summary.py TIMES_FILE TOTAL_SECONDS
"""

import json
import sys

TARGET_SECONDS = 40 * 60  # the whole run, cold; CI's hard limit is 90 minutes


def main(path, total):
    rows = []
    with open(path) as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    print("\nCI time by session (seconds, against each session's budget share):")
    for row in rows:
        flag = "  OVER BUDGET" if row["seconds"] > row["budget"] else ""
        print(f"  {row['session']:<22}{row['seconds']:>6} / {row['budget']:<6}{row['outcome']}{flag}")
    print(f"  {'whole run':<22}{total:>6} / {TARGET_SECONDS:<6}")
    over = [row["session"] for row in rows if row["seconds"] > row["budget"]]
    if over or total > TARGET_SECONDS:
        print(f"WARNING: CI time over budget ({', '.join(over) or 'the whole run'}): the next slow change "
              "pushes CI towards its 90-minute limit; see the sessions' --durations lists.")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
