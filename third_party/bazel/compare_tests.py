#!/usr/bin/python3
"""Checks that Bazel runs the tests ctest runs, minus the `cuda` label.

Usage: compare_tests.py CTEST_JSON BAZEL_QUERY_XML BAZEL_BIN

  CTEST_JSON       `ctest --show-only=json-v1 -LE cuda` in a built CMake tree
  BAZEL_QUERY_XML  `bazel query --output=xml 'tests(//...)'`
  BAZEL_BIN        `bazel info bazel-bin` (for the built cc_test binaries)

The naming rule (docs/build.md, "Bazel"), on which both lists are mapped:
  * a ctest test that gtest_discover_tests registered runs
    `BINARY --gtest_filter=CASE`; its key is `BINARY:CASE`. Bazel builds that
    binary as `cc_test(name = BINARY)`; its keys are `BINARY:CASE` for every
    CASE that `BINARY --gtest_list_tests` prints;
  * any other ctest test (add_test) is `NAME`; Bazel's is the `sh_test` of
    that name (third_party/bazel/defs.bzl, llamapro_command_test).
Each key also carries its label (ctest's LABELS, Bazel's tags among them).
Exits 1 and prints the difference when the two sets differ.
"""

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

LABELS = {"unit", "integration", "cuda"}


def ctest_keys(path):
    with open(path) as f:
        tests = json.load(f)["tests"]
    keys = {}
    for test in tests:
        labels = set()
        for prop in test.get("properties", []):
            if prop["name"] == "LABELS":
                labels = set(prop["value"])
        command = test.get("command", [])
        filters = [a[len("--gtest_filter="):] for a in command if a.startswith("--gtest_filter=")]
        if filters:
            key = f"{os.path.basename(command[0])}:{filters[0]}"
        else:
            key = test["name"]
        keys[key] = ",".join(sorted(labels & LABELS))
    return keys


def gtest_cases(binary):
    out = subprocess.run([binary, "--gtest_list_tests"], check=True, capture_output=True,
                         text=True, timeout=120).stdout
    cases, suite = [], None
    for line in out.splitlines():
        text = line.split("#")[0].rstrip()
        if not text.strip():
            continue
        if not line.startswith(" "):
            suite = text.strip()  # "Suite." (or "Prefix/Suite.", "Suite/0.")
        elif suite is not None:
            cases.append(suite + text.strip())
    return cases


def bazel_keys(query_xml, bazel_bin):
    keys, binaries, commands = {}, 0, 0
    for rule in ET.parse(query_xml).getroot().iter("rule"):
        kind, label = rule.get("class"), rule.get("name")
        package, name = label[2:].split(":")
        tags = set()
        for lst in rule.iter("list"):
            if lst.get("name") == "tags":
                tags = {s.get("value") for s in lst.iter("string")}
        labels = ",".join(sorted(tags & LABELS))
        if kind == "cc_test":
            binaries += 1
            for case in gtest_cases(os.path.join(bazel_bin, package, name)):
                keys[f"{name}:{case}"] = labels
        elif kind == "sh_test":
            commands += 1
            keys[name] = labels
        else:
            sys.exit(f"compare_tests: {label} is a {kind}: no naming rule for it (docs/build.md)")
    return keys, binaries, commands


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    ctest = ctest_keys(sys.argv[1])
    bazel, binaries, commands = bazel_keys(sys.argv[2], sys.argv[3])
    only_ctest = sorted(set(ctest) - set(bazel))
    only_bazel = sorted(set(bazel) - set(ctest))
    relabelled = sorted(k for k in set(ctest) & set(bazel) if ctest[k] != bazel[k])
    for k in only_ctest:
        print(f"  only in ctest:  {k} [{ctest[k]}]")
    for k in only_bazel:
        print(f"  only in Bazel:  {k} [{bazel[k]}]")
    for k in relabelled:
        print(f"  label differs:  {k}: ctest [{ctest[k]}], Bazel [{bazel[k]}]")
    cases = sum(1 for k in bazel if ":" in k)
    print(f"compare_tests: ctest (without label cuda) {len(ctest)} tests; Bazel {binaries} "
          f"GoogleTest binaries with {cases} cases + {commands} command tests = {len(bazel)}")
    if only_ctest or only_bazel or relabelled:
        print("compare_tests: FAILED: the lists differ (tests/BUILD.bazel must mirror "
              "tests/CMakeLists.txt)")
        return 1
    print("compare_tests: the same tests, with the same labels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
