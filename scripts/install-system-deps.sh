#!/usr/bin/env bash
# Install the Debian packages the lab drives (idempotent: a quick no-op when all are present).
# --test: also what only the test suite needs (busybox-static and Debian's Docker engine for the
# container-namespace fault test); `make demo` and everyday use never install Docker.
set -euo pipefail
for_tests=false
[ "${1:-}" = "--test" ] && for_tests=true

packages=(
  haproxy          # the ELB nodes
  iptables         # kube-proxy's rules (iptables-restore), faults
  nftables         # nft, to read rules and for tracing
  conntrack        # conntrack -L/-S/-I/-R: node metrics and the exhaustion fault
  iproute2         # ip, tc, ss, nstat
  tcpdump          # independent checks in tests, the trace command
  procps           # sysctl, pgrep
  util-linux       # nsenter
  kmod             # modprobe for optional kernel modules
  libnetfilter-queue-dev  # the userspace delay path when the kernel lacks sch_netem
  gcc libc6-dev    # to build that small NFQUEUE helper
  python3-venv
)
if $for_tests; then
  packages+=(busybox-static)  # the tiny local image of the container-namespace fault test (no registry needed)
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
