#!/usr/bin/env bash
# Prepares this host for `ember bench`'s container baselines and says what it changed:
#  - installs crun, runc, podman, docker.io and hyperfine from Debian, and QEMU 10 from
#    bookworm-backports (tier/install-qemu.sh: Debian 12's QEMU conflicts with this machine's
#    qemu-utils);
#  - on hybrid cgroup v1/v2 hosts, moves every controller listed on the cgroup2 hierarchy to a
#    v1 mount, which crun needs ("cgroups in hybrid mode not supported"); lasts until reboot;
#  - starts dockerd (no systemd here) on /run/ember-bench/docker/docker.sock unless one answers
#    (skipped with --no-dockerd, as CI does: its bench test needs crun only).
# Safe to run again: each step checks first. Stop dockerd with:
#   kill "$(cat /run/ember-bench/docker/dockerd.pid)"
set -euo pipefail
say() { printf 'bench/setup-baselines.sh: %s\n' "$*" >&2; }
[ "$(id -u)" -eq 0 ] || { say "run as root: it installs packages, mounts cgroups and starts dockerd"; exit 1; }

want=()
for p in crun runc podman docker.io hyperfine; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || want+=("$p")
done
if [ ${#want[@]} -gt 0 ]; then
  say "installing: ${want[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${want[@]}" >/dev/null
else
  say "runtimes already installed"
fi
"$(dirname "$0")/../tier/install-qemu.sh"

unified=/sys/fs/cgroup/unified/cgroup.controllers
if [ -f "$unified" ] && [ -n "$(cat "$unified")" ]; then
  for c in $(cat "$unified"); do
    if [ ! -d "/sys/fs/cgroup/$c" ] || ! mountpoint -q "/sys/fs/cgroup/$c"; then
      mkdir -p "/sys/fs/cgroup/$c"
      mount -t cgroup -o "$c" cgroup "/sys/fs/cgroup/$c"
      say "changed: mounted the $c controller as cgroup v1 at /sys/fs/cgroup/$c (for crun; until reboot)"
    fi
  done
else
  say "cgroups: nothing to change"
fi

d=/run/ember-bench/docker
if [ "${1:-}" = "--no-dockerd" ]; then
  say "dockerd: not started (--no-dockerd)"
elif docker -H "unix://$d/docker.sock" version >/dev/null 2>&1; then
  say "dockerd already answers on $d/docker.sock"
else
  mkdir -p "$d"
  dockerd --data-root /var/lib/ember-bench-docker --exec-root "$d/exec" -H "unix://$d/docker.sock" \
    --pidfile "$d/dockerd.pid" --storage-driver=overlay2 --iptables=false --ip6tables=false \
    --bridge=none >"$d/dockerd.log" 2>&1 &
  for _ in $(seq 1 60); do
    docker -H "unix://$d/docker.sock" version >/dev/null 2>&1 && break
    sleep 0.5
  done
  if docker -H "unix://$d/docker.sock" version >/dev/null 2>&1; then
    say "changed: started dockerd (pid $(cat "$d/dockerd.pid")) on $d/docker.sock, data in /var/lib/ember-bench-docker"
  else
    say "dockerd did not start; see $d/dockerd.log (the docker baseline will be skipped)"
  fi
fi
