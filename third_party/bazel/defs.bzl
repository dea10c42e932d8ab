"""Macros for llamapro's BUILD.bazel files: CMake's flags and test conventions.

CMakeLists.txt compiles every C++ file as C++20 with -Wall -Wextra
-Wno-missing-field-initializers (plus -Werror with LLAMAPRO_WERROR, which the
scripts set; here: `--config=ci`, .bazelrc). tests/CMakeLists.txt registers
GoogleTest binaries case by case (gtest_discover_tests) and script tests with
add_test; llamapro_gtest and llamapro_command_test are their Bazel forms, and
scripts/bazel_test.sh checks that both builds run the same tests
(docs/build.md: "Bazel").
"""

load("@llamapro_host//:paths.bzl", "SOURCE_DIR")

LLAMAPRO_COPTS = [
    "-std=c++20",
    "-Wall",
    "-Wextra",
    "-Wno-missing-field-initializers",
]

def llamapro_cc_library(name, copts = [], **kwargs):
    native.cc_library(name = name, copts = LLAMAPRO_COPTS + copts, **kwargs)

def llamapro_cc_binary(name, copts = [], **kwargs):
    native.cc_binary(name = name, copts = LLAMAPRO_COPTS + copts, **kwargs)

def string_define(name, value):
    """A -D that defines `name` as the string literal "value"."""
    return '%s=\\"%s\\"' % (name, value)

def source_path(path):
    """A file of the source tree by absolute path, as CMake's ${PROJECT_SOURCE_DIR}/path.

    Tests that take source paths as compile definitions get the same absolute
    paths as under CMake (train_config_test compares them with paths its
    config loader made absolute); list the files in `data` too, so a change
    reruns the test.
    """
    return SOURCE_DIR + "/" + path

def runfiles_path(label):
    """The path of a main-repository target relative to a test's working directory.

    A test runs in its runfiles tree, so "//client:llamaproctl" (in `data`) is
    at "client/llamaproctl". ($(rootpath) is not expanded in local_defines by
    Bazel 4.2.)
    """
    if not label.startswith("//") or ":" not in label:
        fail("runfiles_path wants //package:name, not " + label)
    package, name = label[2:].split(":")
    return package + "/" + name if package else name

def llamapro_gtest(name, label, srcs, deps = [], **kwargs):
    """One GoogleTest binary (tests/CMakeLists.txt's llamapro_test(NAME LABEL SOURCES)).

    ctest registers each case as its own test; Bazel runs the binary as one
    test target of the same name, tagged with the ctest label. scripts/bazel_test.sh
    compares the cases (`--gtest_list_tests`) with ctest's.
    """
    native.cc_test(
        name = name,
        srcs = srcs,
        copts = LLAMAPRO_COPTS + kwargs.pop("copts", []),
        deps = deps + [
            "//tests:llamapro_testing",
            "@usr//:gtest_main",
            "@usr//:gmock",
        ],
        tags = [label] + kwargs.pop("tags", []),
        **kwargs
    )

def llamapro_command_test(name, label, command, args = [], skip_return_code = None, **kwargs):
    """A ctest add_test(NAME name COMMAND command args...) of the same name and label.

    Runs through third_party/bazel/ctest_command.sh, which treats exit code
    `skip_return_code` (ctest's SKIP_RETURN_CODE) as a skip: the test passes
    and its log says `[ctest_command] SKIPPED`, which scripts/bazel_test.sh
    reports, as ctest reports its skipped tests.
    """
    native.sh_test(
        name = name,
        srcs = ["//third_party/bazel:ctest_command.sh"],
        args = [str(skip_return_code) if skip_return_code != None else "none", command] + args,
        tags = [label] + kwargs.pop("tags", []),
        **kwargs
    )
