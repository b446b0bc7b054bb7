#!/usr/bin/env bash
# Install the Debian packages the lab drives (idempotent: a quick no-op when all are present).
# What to install comes from lab/programs.txt, the one list of every external program the project runs:
# scopes lab and build always; --test adds scope test and the optional programs Debian packages (busybox-static
# and Debian's Docker engine for the container-namespace fault test); `make demo` and everyday use never install
# Docker. --list prints the packages this invocation wants (one a line) and installs nothing.
set -euo pipefail
for_tests=false
list_only=false
for arg in "$@"; do
  case "$arg" in
    --test) for_tests=true ;;
    --list) list_only=true ;;
    *) echo "Error: unknown option $arg; use --test and/or --list" >&2; exit 1 ;;
  esac
done
registry="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/lab/programs.txt"
[ -r "$registry" ] || { echo "Error: $registry is missing; run this script from a clone of the repository" >&2; exit 1; }

packages=()
while read -r program package scope _purpose; do
  case "$program" in ''|'#'*) continue ;; esac
  [ "$package" = "-" ] && continue                # not in Debian (kind, kubectl): docs/kind.md
  [ "$package" = "docker.io" ] && continue        # below: only where no engine is installed
  case "$scope" in
    lab|build) packages+=("$package") ;;
    test|optional) $for_tests && packages+=("$package") ;;
    *) echo "Error: $registry: unknown scope '$scope' for $program; use lab, build, test or optional" >&2; exit 1 ;;
  esac
done < "$registry"
packages=($(printf '%s\n' "${packages[@]}" | sort -u))
if $list_only; then
  printf '%s\n' "${packages[@]}"
  if $for_tests; then echo docker.io; fi
  exit 0
fi

missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# pyenv or other non-Debian Pythons carry venv themselves; only ask apt when python3 cannot make one.
if python3 -c 'import venv, ensurepip' 2>/dev/null; then
  missing=("${missing[@]/python3-venv}")
fi
# Debian's Docker engine, for the test that starts its own private dockerd (no iptables, no bridge): only where
# no engine is installed (never over Docker CE), and the package must not start or enable the default daemon,
# which would add iptables rules and docker0 to this machine.
if $for_tests; then
  command -v dockerd >/dev/null || [ -x /usr/sbin/dockerd ] || [ -x /usr/bin/dockerd ] || missing+=(docker.io)
fi
missing=($(printf '%s\n' "${missing[@]}" | sed '/^$/d'))
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "Error: installing ${missing[*]} needs root; run as root or install sudo" >&2; exit 1; }
  SUDO=sudo
fi
echo "Installing Debian packages: ${missing[*]}"
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
no_start=""
if [[ " ${missing[*]} " == *" docker.io "* && ! -e /usr/sbin/policy-rc.d ]]; then
  no_start=/usr/sbin/policy-rc.d  # invoke-rc.d and deb-systemd-invoke honour it: exit 101 = do not start
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$no_start" >/dev/null && $SUDO chmod 755 "$no_start"
  trap '$SUDO rm -f "$no_start"' EXIT
fi
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
if [[ " ${missing[*]} " == *" docker.io "* && -d /run/systemd/system ]]; then
  $SUDO systemctl disable --quiet docker.service docker.socket 2>/dev/null || true
fi
