#!/bin/sh
echo "coverage tools are not available offline; 'bazel coverage' is not supported here" >&2
exit 1
