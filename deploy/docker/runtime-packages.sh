#!/usr/bin/env bash
# Prints, one per line and sorted, the Debian/Ubuntu packages that provide the
# shared libraries the given ELF files need: each FILE itself and everything
# `ldd FILE` resolves, each mapped to its package with `dpkg-query -S`.
#
# The image builds run it in their build stage on the binaries, the
# SentencePiece libraries and the BLAS libraries the binaries dlopen (oneDNN,
# OpenBLAS: not in ldd's output), so the package list the runtime stage
# installs can be checked against the one the build actually needs. Files no
# package owns (our binaries, our SentencePiece build) are named on stderr.
#
# Usage: deploy/docker/runtime-packages.sh FILE...
set -euo pipefail

[[ $# -gt 0 ]] || { echo "usage: $0 FILE..." >&2; exit 2; }

# The package owning PATH. dpkg's database may hold the /lib or the /usr/lib
# spelling of a path (merged /usr), and a soname is often a symlink owned by
# the same package as its target: try each form.
owner() {
  local path=$1 candidate out
  for candidate in "$path" "$(readlink -f "$path")" "${path#/usr}" "/usr$path"; do
    if out=$(dpkg-query -S "$candidate" 2>/dev/null); then
      out=$(grep -v '^diversion' <<<"$out" | head -n 1)
      out=${out%%: /*}         # "libc6:amd64: /lib/..." -> "libc6:amd64"
      out=${out%%,*}           # "a, b" (a shared path) -> "a"
      printf '%s\n' "${out%%:*}"  # drop ":amd64"
      return 0
    fi
  done
  return 1
}

declare -A files=()
for f in "$@"; do
  [[ -e "$f" ]] || { echo "$0: $f: no such file" >&2; exit 1; }
  files[$f]=1
  deps=$(ldd "$f") || { echo "$0: ldd $f failed" >&2; exit 1; }
  if grep -q 'not found' <<<"$deps"; then
    grep 'not found' <<<"$deps" >&2
    echo "$0: $f: unresolved libraries (above)" >&2
    exit 1
  fi
  # "libfoo.so.1 => /lib/x86_64-linux-gnu/libfoo.so.1 (0x...)" and
  # "/lib64/ld-linux-x86-64.so.2 (0x...)".
  while read -r path; do
    files[$path]=1
  done < <(awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' <<<"$deps")
done

declare -A packages=()
for f in "${!files[@]}"; do
  if p=$(owner "$f"); then
    packages[$p]=1
  else
    echo "not from a package: $f" >&2
  fi
done
printf '%s\n' "${!packages[@]}" | sort
