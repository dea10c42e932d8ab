"""Offline stand-in for @rules_java//java:defs.bzl: the rules built into Bazel 4.2.

Only @bazel_tools loads it (llamapro has no Java); upstream rules_java of that
era was the same thin wrapper around the native rules.
"""

java_binary = native.java_binary
java_import = native.java_import
java_library = native.java_library
java_lite_proto_library = native.java_lite_proto_library
java_package_configuration = native.java_package_configuration
java_plugin = native.java_plugin
java_proto_library = native.java_proto_library
java_runtime = native.java_runtime
java_test = native.java_test
java_toolchain = native.java_toolchain
