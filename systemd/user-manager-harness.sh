#!/usr/bin/env bash
# Runs a command next to a private, real `systemd --user` manager and journald, following
# /work/shared/spec/testing-systemd.md: new mount and PID namespaces (everything dies with us),
# a tmpfs /run, a volatile quiet journald, and the manager in a cgroup of its own.
#
# Usage: user-manager-harness.sh HOME COMMAND [ARGS...]
#   HOME is the manager's (and the command's) home: units are read from HOME/.config/systemd/user.
#   COMMAND runs with HOME, XDG_RUNTIME_DIR=/run/user/0 and CONFAB_HARNESS_INSIDE=1; its exit
#   status is ours. Needs root and systemd 252 (as on the build machines).
set -euo pipefail

if [[ $$ -ne 1 ]]; then
    exec unshare --mount --propagation private --pid --fork --mount-proc --kill-child \
        "$BASH" "$0" "$@"
fi

home=$1
shift
unique="confab-harness-$(cat /proc/sys/kernel/random/uuid)"
cgroup_dirs=()
manager_pid=

cleanup() {
    set +e
    [[ -n $manager_pid ]] && kill -9 "$manager_pid" 2>/dev/null
    # Kill until every cgroup is empty (killed processes linger until reaped; as PID 1, bash
    # reaps them), then remove the directories deepest first, retrying while the kernel lets go.
    for _ in $(seq 100); do
        pids=$(for dir in "${cgroup_dirs[@]}"; do
            find "$dir" -name cgroup.procs -exec cat {} + 2>/dev/null
        done)
        [[ -z $pids ]] && break
        kill -9 $pids 2>/dev/null
        sleep 0.05
    done
    for dir in "${cgroup_dirs[@]}"; do
        for _ in $(seq 100); do
            find "$dir" -depth -type d -exec rmdir {} \; 2>/dev/null
            [[ -d $dir ]] || break
            sleep 0.05
        done
        [[ -d $dir ]] && echo "harness: could not remove $dir" >&2
    done
}
trap cleanup EXIT

wait_for() { # wait_for SECONDS COMMAND...: poll until COMMAND succeeds
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        ((SECONDS < deadline)) || { echo "harness: timed out waiting for: $*" >&2; return 1; }
        sleep 0.05
    done
}

mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/systemd/system /run/systemd/journal /run/systemd/journald.conf.d
install -d -m 0700 /run/user/0
cat >/run/systemd/journald.conf.d/test.conf <<'EOF'
[Journal]
Storage=volatile
ReadKMsg=no
ForwardToSyslog=no
ForwardToKMsg=no
ForwardToConsole=no
ForwardToWall=no
RateLimitBurst=0
EOF
SYSTEMD_LOG_TARGET=console /lib/systemd/systemd-journald 2>/dev/null &
wait_for 10 test -S /run/systemd/journal/socket
wait_for 10 test -S /run/systemd/journal/stdout

# The cgroup2 mount and, on hybrid hosts, the v1 name=systemd one.
while IFS= read -r line; do
    # "<id> <parent> <dev> <root> <mount point> <options> [optional...] - <fstype> <source> <super>"
    read -r _ _ _ _ mnt _ <<<"${line%% - *}"
    read -r fstype _ opts <<<"${line#* - }"
    if [[ $fstype == cgroup2 ]] || [[ $fstype == cgroup && ,$opts, == *,name=systemd,* ]]; then
        mkdir -p "$mnt/$unique.slice/user@0.service"
        cgroup_dirs+=("$mnt/$unique.slice")
    fi
done </proc/self/mountinfo

(
    for dir in "${cgroup_dirs[@]}"; do echo 0 >"$dir/user@0.service/cgroup.procs"; done
    exec env -i PATH="$PATH" HOME="$home" USER=root LANG=C.UTF-8 XDG_RUNTIME_DIR=/run/user/0 \
        /lib/systemd/systemd --user --log-target=journal
) &
manager_pid=$!
disown "$manager_pid" # its SIGKILL at clean-up is expected, not news

manager_up() {
    [[ -S /run/user/0/systemd/private ]] || return 1
    state=$(XDG_RUNTIME_DIR=/run/user/0 systemctl --user is-system-running 2>/dev/null) || true
    [[ $state == running || $state == degraded ]]
}
wait_for 30 manager_up

status=0
env HOME="$home" XDG_RUNTIME_DIR=/run/user/0 CONFAB_HARNESS_INSIDE=1 "$@" || status=$?
exit "$status"
