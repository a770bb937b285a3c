"""Reads an Autobahn fuzzingclient report (reports/index.json) and judges it for Bellhop.

Usage: summarize.py INDEX_JSON [--markdown OUT] [--doc DOC] [--commit C] [--date D] [--seconds S]

Every case must grade OK, NON-STRICT, INFORMATIONAL or UNIMPLEMENTED, with no FAILED close
behaviour, except the cases listed in TOO_BIG: they send a message larger than Bellhop's 64 KiB
limit, so the node closes with 1009 by design and the suite grades them FAILED; for them the
check is that the node's close code was 1009. Exits 1 when any case fails its check.

--markdown writes the results as Markdown; --doc replaces the part of DOC between
'<!-- results:begin -->' and '<!-- results:end -->' with them. Works on Python 2.7 and 3.
"""

from __future__ import print_function

import collections
import fnmatch
import io
import json
import os
import sys

# Cases whose messages exceed the node's 64 KiB frame/message limit (9.1.1 and 9.2.1 are
# exactly 64 KiB and must pass): 9.1/9.2 send 256 KiB to 16 MiB, 9.3/9.4 4 MiB fragmented,
# 9.5/9.6 1 MiB.
TOO_BIG = ["9.1.[2-6]", "9.2.[2-6]", "9.3.*", "9.4.*", "9.5.*", "9.6.*"]
TOO_BIG_CODE = 1009
ACCEPTED = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED")
GRADES = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED")
GROUPS = collections.OrderedDict([
    ("1", "framing (text and binary messages of every length encoding)"),
    ("2", "pings and pongs"),
    ("3", "reserved bits"),
    ("4", "reserved opcodes"),
    ("5", "fragmentation"),
    ("6", "UTF-8 handling"),
    ("7", "close handling"),
    ("9", "limits and performance (large and many messages)"),
    ("10", "misc (auto-fragmentation)"),
    ("12", "permessage-deflate, messages"),
    ("13", "permessage-deflate, parameters"),
])


def case_key(case):
    return [int(x) for x in case.split(".")]


def too_big(case):
    return any(fnmatch.fnmatch(case, pattern) for pattern in TOO_BIG)


def judge(results):
    """Returns (failures, notes): the cases that fail their check, and the non-OK ones."""
    failures, notes = [], []
    for case in sorted(results, key=case_key):
        r = results[case]
        behavior, close, code = r["behavior"], r["behaviorClose"], r.get("remoteCloseCode")
        if too_big(case):
            if code != TOO_BIG_CODE:
                failures.append((case, r, "expected close %d, got %s" % (TOO_BIG_CODE, code)))
            continue
        if behavior not in ACCEPTED or close not in ACCEPTED:
            failures.append((case, r, "graded %s, close %s" % (behavior, close)))
        elif behavior != "OK" or close != "OK":
            notes.append((case, r))
    return failures, notes


def markdown(results, failures, notes, commit, date, seconds):
    lines = []
    add = lines.append
    graded = dict((c, r) for c, r in results.items() if not too_big(c))
    big = sorted((c for c in results if too_big(c)), key=case_key)
    add("Run of %s, commit `%s`: %d cases in %s s; %s." % (
        date, commit, len(results), seconds,
        "**no failures**" if not failures else "**%d FAILED**" % len(failures)))
    add("")
    add("| group | cases | " + " | ".join(GRADES) + " | expected 1009 |")
    add("|---|---:|" + "---:|" * len(GRADES) + "---:|")
    totals = collections.Counter()
    for group, title in GROUPS.items():
        cases = [c for c in results if c.split(".")[0] == group]
        if not cases:
            continue
        counts = collections.Counter(graded[c]["behavior"] for c in cases if c in graded)
        n_big = sum(1 for c in cases if too_big(c))
        totals.update(counts)
        totals["cases"] += len(cases)
        totals["big"] += n_big
        add("| %s %s | %d | %s | %d |" % (
            group, title, len(cases), " | ".join(str(counts[g]) for g in GRADES), n_big))
    add("| **all** | **%d** | %s | **%d** |" % (
        totals["cases"], " | ".join("**%d**" % totals[g] for g in GRADES), totals["big"]))
    add("")
    closes = collections.Counter(r["behaviorClose"] for r in graded.values())
    add("Close behaviour of the graded cases: " + ", ".join(
        "%s %d" % (k, v) for k, v in sorted(closes.items())) + ".")
    add("")
    if notes:
        add("Graded cases that are not plain OK:")
        add("")
        add("| case | behaviour | close behaviour | node's close code |")
        add("|---|---|---|---|")
        summarized = collections.OrderedDict()
        for case, r in notes:
            key = (case.split(".")[0], r["behavior"], r["behaviorClose"], r.get("remoteCloseCode"))
            if case.startswith("12.") or case.startswith("13."):
                summarized.setdefault(key, []).append(case)
            else:
                add("| %s | %s | %s | %s |" % (case, r["behavior"], r["behaviorClose"],
                                                r.get("remoteCloseCode")))
        for (group, b, c, code), cases in summarized.items():
            add("| %s.* (%d cases) | %s | %s | %s |" % (group, len(cases), b, c, code))
        add("")
    wrong = [c for c, _, _ in failures if too_big(c)]
    add("Messages over the 64 KiB limit (%s, %d cases): %s." % (
        ", ".join(TOO_BIG), len(big),
        "every one closed by the node with 1009" if not wrong
        else "NOT closed with 1009: " + ", ".join(wrong)))
    if failures:
        add("")
        add("Failures:")
        add("")
        for case, r, why in failures:
            add("- %s: %s" % (case, why))
    return u"\n".join(lines) + u"\n"


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    opts = dict(zip(argv[2::2], argv[3::2]))
    with open(argv[1]) as f:
        report = json.load(f)
    if len(report) != 1:
        print("expected one agent in the report, found %s" % list(report), file=sys.stderr)
        return 1
    results = list(report.values())[0]
    failures, notes = judge(results)

    graded = [r for c, r in results.items() if not too_big(c)]
    counts = collections.Counter(r["behavior"] for r in graded)
    print("autobahn: %d cases: %d graded (%s), %d over the 64 KiB limit (must close with 1009)" % (
        len(results), len(graded), ", ".join("%s %d" % (g, counts[g]) for g in GRADES),
        len(results) - len(graded)))
    for case, r in notes:
        if not (case.startswith("12.") or case.startswith("13.")):
            print("  %s: %s, close %s, code %s" % (
                case, r["behavior"], r["behaviorClose"], r.get("remoteCloseCode")))
    for case, r, why in failures:
        print("  FAILED %s: %s" % (case, why))

    md = markdown(results, failures, notes, opts.get("--commit", "?"), opts.get("--date", "?"),
                  opts.get("--seconds", "?"))
    if "--markdown" in opts:
        with io.open(opts["--markdown"], "w", encoding="utf-8") as f:
            f.write(md)
    if "--doc" in opts:
        with io.open(opts["--doc"], encoding="utf-8") as f:
            doc = f.read()
        begin, end = u"<!-- results:begin -->\n", u"<!-- results:end -->"
        if begin not in doc or end not in doc:
            print("%s has no results markers" % opts["--doc"], file=sys.stderr)
            return 1
        head, rest = doc.split(begin, 1)
        tail = rest.split(end, 1)[1]
        with io.open(opts["--doc"] + ".tmp", "w", encoding="utf-8") as f:
            f.write(head + begin + md + end + tail)
        os.rename(opts["--doc"] + ".tmp", opts["--doc"])
    if failures:
        print("autobahn: %d case(s) FAILED" % len(failures))
        return 1
    print("autobahn: %d passed, 0 failed" % len(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
