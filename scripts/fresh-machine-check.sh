#!/usr/bin/env bash
# Does a fresh clone pass on a fresh machine? Builds a clean Debian root (debootstrap, minbase: what a new
# server or a debian:<release> CI image has, plus `make`), puts a `git clone` of this repository in it and runs
# the README's steps with that root as / (pivot_root, not chroot): `make setup`, then `lab doctor` (and with --unit
# the unit tests, with --test `make test`, with --demo `make demo`, with --then any command in the clone). Prints
# each step's time; exit 1 when a step fails.
#
# Needs root and debootstrap (`apt-get install debootstrap`: only for this check, not a project dependency).
# The clone is of the committed HEAD (uncommitted changes are not in it). The host's apt sources and pip
# configuration are copied in, so installs resolve the same way. Everything runs in a private mount
# namespace; the root, its mounts and every process left inside are removed on every exit path.
#
#   sudo scripts/fresh-machine-check.sh                 # make setup + lab doctor (~2 min here)
#   sudo scripts/fresh-machine-check.sh --unit          # ... + the unit tests
#   sudo scripts/fresh-machine-check.sh --test          # ... + make test (15-25 min more)
#   sudo scripts/fresh-machine-check.sh --then 'make test-deps && .venv/bin/pytest -q tests/integration/test_doctor.py'
#   sudo scripts/fresh-machine-check.sh --keep          # leave the root in place to look around (prints where)
set -euo pipefail

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }
unit=false test=false demo=false keep=false then=""
args=("$@")  # for the re-exec below (the loop consumes them)
while [ $# -gt 0 ]; do
  case "$1" in
    --unit) unit=true ;;
    --test) test=true ;;
    --demo) demo=true ;;
    --keep) keep=true ;;
    --then) [ $# -ge 2 ] || { echo "Error: --then needs a command, e.g. --then 'make test-unit'" >&2; exit 1; }
      then="$2"; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "Error: unknown option $1; use --unit, --test, --demo, --then CMD, --keep (see --help)" >&2; exit 1 ;;
  esac
  shift
done
[ "$(id -u)" -eq 0 ] || { echo "Error: needs root (debootstrap, mounts, pivot_root); run with sudo" >&2; exit 1; }
command -v debootstrap >/dev/null || {
  echo "Error: debootstrap is missing; apt-get install debootstrap (only this check needs it)" >&2
  exit 1
}
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Our own mount namespace: nothing mounted here can show up on (or outlive us on) the host.
if [ "${LAB_FRESH_IN_MOUNT_NS:-}" != 1 ]; then
  exec env LAB_FRESH_IN_MOUNT_NS=1 unshare --mount --propagation private -- "$0" "${args[@]}"
fi

. /etc/os-release
suite="${VERSION_CODENAME:?/etc/os-release has no VERSION_CODENAME}"
mirror=http://deb.debian.org/debian
work="$(mktemp -d /var/tmp/lab-fresh.XXXXXX)"  # on disk: the root is ~1 GB after make setup
root="$work/root"

cleanup() {
  local rc=$?
  set +e
  # Processes started inside (a lab's HAProxy, a test's dockerd) would keep files and mounts busy.
  for link in /proc/[0-9]*/root; do
    [ "$link" -ef "$root" ] || continue  # (readlink says / for a step's processes: their namespace's root)
    pid="${link#/proc/}" && pid="${pid%/root}"
    kill -9 "$pid" 2>/dev/null
  done
  if $keep && [ $rc -eq 0 ]; then
    echo "kept: $root (mounts are gone with this script's mount namespace; rm -rf $work when done)"
    exit $rc
  fi
  # Unmount everything below the root (lazily: a busy mount detaches now, frees later), then refuse to
  # delete while anything is still mounted there: rm must never walk into /dev, /proc or /sys.
  findmnt -rn -o TARGET | grep "^$root" | sort -r | while read -r target; do umount -l "$target"; done
  if findmnt -rn -o TARGET | grep -q "^$root"; then
    echo "Error: something is still mounted under $root; not deleting $work" >&2
  else
    rm -rf "$work"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step() {  # step TITLE COMMAND...: run, print its time, stop the check if it fails
  local title="$1" t0 rc
  shift
  echo "=== $title"
  t0=$(date +%s)
  set +e
  "$@"
  rc=$?
  set -e
  echo "=== $title: $([ $rc -eq 0 ] && echo ok || echo "FAILED (exit $rc)") in $(($(date +%s) - t0)) s"
  [ $rc -eq 0 ] || exit 1
}

in_root() {  # the README's steps, as root in the fresh clone, with a clean environment (plus PIP_* settings)
  local pip_env=()
  while IFS= read -r var; do pip_env+=("$var"); done < <(env | grep '^PIP_' || true)
  # Not a chroot: each step gets a mount namespace whose root is the fresh root (pivot_root; this machine's root,
  # moved to /mnt, detached), as / is on a machine. A container's root is pivot_root'ed where the engine's root
  # is mounted, and setns(2) into its mount namespace (`docker exec`) starts at the namespace's root: in a chroot
  # the two differ, and `docker exec` ran its command in this machine's root filesystem, not the container's.
  unshare --mount -- sh -c 'cd "$0" && pivot_root . mnt && umount -l /mnt && exec "$@"' "$root" \
    /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "${pip_env[@]}" \
    bash -c "cd /root/k8s-elb-lab && $1"
}

bootstrap() {
  debootstrap --variant=minbase --include=make,ca-certificates "$suite" "$root" "$mirror" >"$work/debootstrap.log" ||
    { tail -20 "$work/debootstrap.log"; return 1; }
}
step "debootstrap $suite (minbase + make, ca-certificates) into $root" bootstrap

copy_config() {
  # apt: the host's sources (enabled files only) and their keys; pip: its config files.
  rm -f "$root/etc/apt/sources.list"
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && install -D -m 644 "$f" "$root$f"
  done
  for d in /etc/apt/keyrings /etc/apt/trusted.gpg.d; do [ -d "$d" ] && cp -a "$d/." "$root$d/"; done
  for f in /etc/pip.conf /etc/xdg/pip/*; do [ -f "$f" ] && install -D -m 644 "$f" "$root$f"; done
  for f in .config/pip/pip.conf .pip/pip.conf; do  # the invoking user's, as root's in the fresh root
    [ -f "$HOME/$f" ] && install -D -m 644 "$HOME/$f" "$root/root/$f"
  done
  cp -L /etc/resolv.conf "$root/etc/resolv.conf"
  # The host's own certificate authorities (a proxy's, a company's): HTTPS to the package indexes trusts them here.
  if compgen -G "/usr/local/share/ca-certificates/*" >/dev/null; then
    cp -a /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
    chroot "$root" update-ca-certificates >/dev/null
  fi
  git clone --quiet "$repo" "$root/root/k8s-elb-lab"
  git -C "$root/root/k8s-elb-lab" log --oneline -1
}
step "copy apt sources, pip configuration, resolv.conf, local CAs; git clone the repository" copy_config

mount_all() {
  mount --bind "$root" "$root"  # / must be a mount point, as on a machine: pivot_root; `ip netns exec` remounts it
  mount -t proc proc "$root/proc"
  mount --rbind /sys "$root/sys" && mount --make-rslave "$root/sys"
  mount --rbind /dev "$root/dev" && mount --make-rslave "$root/dev"
  mount -t tmpfs -o mode=755 tmpfs "$root/run"
}
step "mount the root on itself, /proc, /sys, /dev and a tmpfs on /run" mount_all

step "make setup" in_root "make setup"
step "lab doctor" in_root ".venv/bin/lab doctor"
if $unit; then step "unit tests" in_root ".venv/bin/pytest -q -m 'not root'"; fi
if $test; then step "make test" in_root "make test"; fi
if $demo; then step "make demo" in_root "make demo"; fi
if [ -n "$then" ]; then step "$then" in_root "$then"; fi
echo "fresh-machine check: every step passed"
