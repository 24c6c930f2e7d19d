#!/usr/bin/env bash
# A real single-node Slurm cluster for easlurm's tests, private to one state directory.
#
# Usage:
#   tests/slurm/cluster.sh install
#   tests/slurm/cluster.sh start  [--no-accounting] [--min-job-age S] [--cred-expire S] [--state DIR]
#                                 [--port-base N] [--db-port N] [--timeout S]
#   tests/slurm/cluster.sh stop   [--state DIR]
#   tests/slurm/cluster.sh status [--state DIR]
#   tests/slurm/cluster.sh env    [--state DIR]          # eval "$(tests/slurm/cluster.sh env)"
#
# install  apt-get installs slurmctld, slurmd, slurm-client, munge, slurmdbd and mariadb-server (apt-get update only
#          when the package lists are missing; quick when everything is installed already).
# start    Generates a munge key, slurm.conf, gres.conf (4 fake GPUs: symlinks to /dev/null) and, with accounting,
#          slurmdbd.conf; starts munged, [mariadbd + slurmdbd + `sacctmgr add cluster`], slurmctld and slurmd; waits
#          until the node is idle and the main scheduler has run one cycle. With --no-accounting there is no slurmdbd
#          (AccountingStorageType=accounting_storage/none, so `sacct` reports "accounting storage is disabled").
#          Already running in the same mode with the same ports: nothing happens. Running in another mode, or only
#          partly running: stopped, wiped and started fresh. A fresh start wipes the state dir (job ids restart at 1,
#          and the accounting database is wiped with it so sacct never sees two jobs with one id).
# stop     Cancels the cluster's unfinished jobs (so no job process outlives the cluster), then stops each daemon by
#          the PID in its pid file after checking that PID's command name; never by process name. Logs are kept.
# status   Prints mode, ports and which daemons run. Exit 0: all run and sinfo answers; 3: stopped; 1: partly.
# env      Prints `export SLURM_CONF=...` for this state dir.
#
# Options:
#   --state DIR      state dir (default /tmp/easlurm-slurm); everything lives in it: etc/ (configs), log/, run/
#                    (pid files, sockets), munge/, ctld/ (StateSaveLocation), spool/, gpu/, db/ (MariaDB datadir).
#   --no-accounting  no slurmdbd / MariaDB.
#   --min-job-age S  slurmctld forgets finished jobs after S seconds (default 86400, a lab setting; production
#                    clusters keep Slurm's default 300 or less — the production-like test cluster uses a short one).
#   --cred-expire S  AuthInfo cred_expire (default 10). Slurm also holds a requeued job back this long before it may
#                    start again; its default of 120 s would add two minutes to every requeue the tests provoke
#                    (the launcher copes with either: it only sees a pending job with a BeginTime).
#   --port-base N    slurmctld listens on N, slurmd on N+1, slurmdbd on N+2 (default 6817). Two clusters at once need
#                    different state dirs and port bases (the tests run a second one at 6827).
#   --db-port N      MariaDB TCP port on 127.0.0.1 (default 3307).
#   --timeout S      seconds to wait for each daemon and for readiness (default 60).
# Environment: EASLURM_SLURM_STATE overrides the default state dir.
#
# Runs as root (daemons and jobs run as root). Settings and their reasons: /work/shared/SLURM-NOTES.md.
set -euo pipefail

CMD="${1:-}"
[[ $# -gt 0 ]] && shift
STATE="${EASLURM_SLURM_STATE:-/tmp/easlurm-slurm}"
ACCOUNTING=1
PORT_BASE=6817
DB_PORT=3307
TIMEOUT=60
MIN_JOB_AGE=86400
CRED_EXPIRE=10

die() { echo "cluster.sh: $*" >&2; exit 1; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --no-accounting) ACCOUNTING=0 ;;
        --min-job-age) [[ $# -ge 2 ]] || die "--min-job-age needs seconds"; MIN_JOB_AGE="$2"; shift ;;
        --min-job-age=*) MIN_JOB_AGE="${1#*=}" ;;
        --cred-expire) [[ $# -ge 2 ]] || die "--cred-expire needs seconds"; CRED_EXPIRE="$2"; shift ;;
        --cred-expire=*) CRED_EXPIRE="${1#*=}" ;;
        --state) [[ $# -ge 2 ]] || die "--state needs a directory"; STATE="$2"; shift ;;
        --state=*) STATE="${1#*=}" ;;
        --port-base) [[ $# -ge 2 ]] || die "--port-base needs a number"; PORT_BASE="$2"; shift ;;
        --port-base=*) PORT_BASE="${1#*=}" ;;
        --db-port) [[ $# -ge 2 ]] || die "--db-port needs a number"; DB_PORT="$2"; shift ;;
        --db-port=*) DB_PORT="${1#*=}" ;;
        --timeout) [[ $# -ge 2 ]] || die "--timeout needs seconds"; TIMEOUT="$2"; shift ;;
        --timeout=*) TIMEOUT="${1#*=}" ;;
        *) die "unknown option '$1' (see the header of $0)" ;;
    esac
    shift
done
for v in PORT_BASE DB_PORT TIMEOUT MIN_JOB_AGE CRED_EXPIRE; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a positive integer, got '${!v}'"
done
GIVEN_STATE="$STATE"
[[ "$STATE" = /* ]] || STATE="$PWD/$STATE"
STATE="${STATE%/}"
[[ "$STATE" =~ ^/[^/]+/[^/]+ ]] || die "--state '$GIVEN_STATE' is too shallow to be wiped safely; use e.g. /tmp/NAME"

CTLD_PORT=$PORT_BASE
SLURMD_PORT=$((PORT_BASE + 1))
DBD_PORT=$((PORT_BASE + 2))
ETC="$STATE/etc"
LOG="$STATE/log"
RUN="$STATE/run"
CONF="$ETC/slurm.conf"
MUNGE_SOCK="$RUN/munge/munge.socket"
DB_SOCK="$RUN/mariadb.sock"
MODE_FILE="$STATE/mode"
NGPU=4
NODE="$(hostname -s)"
CLUSTER_NAME=easlurm
DAEMONS_ORDER_STOP=(slurmd slurmctld slurmdbd mariadbd munged)
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)

export SLURM_CONF="$CONF"
# Client commands in this script must reach this cluster only, whatever the caller's environment holds.
unset SLURM_JOB_ID SLURM_JOBID SLURM_ARRAY_JOB_ID SLURM_CLUSTERS 2>/dev/null || true

need_root() { [[ $(id -u) -eq 0 ]] || die "must run as root (daemons and jobs run as root)"; }

mode_string() { echo "accounting=$ACCOUNTING port_base=$PORT_BASE db_port=$DB_PORT min_job_age=$MIN_JOB_AGE cred_expire=$CRED_EXPIRE"; }

pid_of() { # pid_of NAME -> pid from its pid file if that pid is alive and runs NAME, else nothing
    local name="$1" file="$RUN/$1.pid" pid comm state
    [[ -s "$file" ]] || return 0
    # The daemon may delete its pid file at any moment while it exits.
    pid="$({ tr -dc '0-9' <"$file"; } 2>/dev/null || true)"
    [[ -n "$pid" && -r "/proc/$pid/comm" ]] || return 0
    comm="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
    # A zombie (state Z, waiting for its parent to reap it) has exited already.
    state="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)"
    [[ "$comm" == "$name" && "$state" != Z && -n "$state" ]] && echo "$pid"
    return 0
}

expected_daemons() {
    if [[ -f "$MODE_FILE" ]] && grep -q 'accounting=0' "$MODE_FILE"; then
        echo munged slurmctld slurmd
    else
        echo munged mariadbd slurmdbd slurmctld slurmd
    fi
}

log_tails() {
    local f
    for f in "$LOG"/*.log; do
        [[ -f "$f" ]] || continue
        echo "----- last lines of $f -----" >&2
        tail -n 25 "$f" >&2 || true
    done
}

fail_start() {
    echo "cluster.sh: start failed: $*" >&2
    log_tails
    # Leave nothing half-started behind: a failed start must not leave daemons running.
    cmd_stop >/dev/null 2>&1 || true
    exit 1
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # wait_for DESCRIPTION COMMAND... (polls every 0.1 s up to $TIMEOUT s)
    local what="$1"; shift
    local deadline=$((SECONDS + TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || fail_start "timed out after ${TIMEOUT}s waiting for $what"
        sleep 0.1
    done
}

cmd_install() {
    need_root
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        echo "cluster.sh: all Slurm packages are installed"
        return 0
    fi
    command -v apt-get >/dev/null || die "apt-get not found; install ${missing[*]} by hand"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends "${PACKAGES[@]}"; then
        apt-get update
        apt-get install -y --no-install-recommends "${PACKAGES[@]}"
    fi
}

write_configs() {
    local acct_lines gather
    if [[ $ACCOUNTING -eq 1 ]]; then
        # Connections to slurmdbd ignore AuthInfo, so the munge socket goes in AccountingStoragePass.
        acct_lines="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$MUNGE_SOCK"
        gather=jobacct_gather/linux
    else
        acct_lines="AccountingStorageType=accounting_storage/none"
        gather=jobacct_gather/none
    fi
    cat >"$CONF" <<EOF
# Generated by tests/slurm/cluster.sh; every start rewrites it.
ClusterName=$CLUSTER_NAME
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCK,cred_expire=$CRED_EXPIRE
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=$gather
$acct_lines
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=1000
SchedulerParameters=batch_sched_delay=0
DependencyParameters=kill_invalid_depend
SlurmdParameters=config_overrides
MinJobAge=$MIN_JOB_AGE
MaxJobCount=100000
MaxArraySize=20001
ReturnToService=2
MailProg=/bin/true
KillWait=5
InactiveLimit=0
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=16 RealMemory=64000 Gres=gpu:$NGPU State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    cat >"$ETC/gres.conf" <<EOF
AutoDetect=off
NodeName=$NODE Name=gpu File=$STATE/gpu/gpu[0-$((NGPU - 1))]
EOF
    local i
    for ((i = 0; i < NGPU; i++)); do
        # Slurm only sets CUDA_VISIBLE_DEVICES for character devices; /dev/null is one.
        ln -sfn /dev/null "$STATE/gpu/gpu$i"
    done
    if [[ $ACCOUNTING -eq 1 ]]; then
        (umask 077 && cat >"$ETC/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
        )
        chmod 600 "$ETC/slurmdbd.conf"
    fi
}

start_munged() {
    head -c 1024 /dev/urandom >"$STATE/munge/munge.key"
    chmod 600 "$STATE/munge/munge.key"
    munged --key-file="$STATE/munge/munge.key" --socket="$MUNGE_SOCK" --pid-file="$RUN/munged.pid" \
        --log-file="$LOG/munged.log" --seed-file="$STATE/munge/munged.seed" </dev/null >>"$LOG/munged.log" 2>&1 ||
        fail_start "munged did not start"
    wait_for "munged's socket $MUNGE_SOCK" test -S "$MUNGE_SOCK"
}

start_mariadb() {
    mariadb-install-db --no-defaults --user=root --datadir="$STATE/db" --auth-root-authentication-method=socket \
        --skip-test-db >"$LOG/mariadb-install.log" 2>&1 || fail_start "mariadb-install-db failed"
    # Speed over durability: this database lives as long as one test session.
    setsid mariadbd --no-defaults --user=root --datadir="$STATE/db" --socket="$DB_SOCK" --port="$DB_PORT" \
        --bind-address=127.0.0.1 --skip-name-resolve --pid-file="$RUN/mariadbd.pid" \
        --log-error="$LOG/mariadb.log" --innodb-buffer-pool-size=64M --innodb-log-file-size=16M \
        --innodb-lock-wait-timeout=900 --innodb-flush-log-at-trx-commit=0 --skip-log-bin \
        </dev/null >>"$LOG/mariadb.log" 2>&1 &
    wait_for "MariaDB on $DB_SOCK" mariadb --no-defaults --socket="$DB_SOCK" -u root -e 'SELECT 1'
    mariadb --no-defaults --socket="$DB_SOCK" -u root -e "
        CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
        CREATE USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';" || fail_start "could not create the slurm DB user"
}

start_slurmdbd() {
    slurmdbd </dev/null >>"$LOG/slurmdbd.log" 2>&1 || fail_start "slurmdbd did not start"
    wait_for "slurmdbd on port $DBD_PORT" sacctmgr -n -P list cluster
    sacctmgr -i add cluster "$CLUSTER_NAME" >>"$LOG/sacctmgr.log" 2>&1 || fail_start "sacctmgr add cluster failed"
}

node_idle() { [[ "$(sinfo -h -n "$NODE" -o '%t' 2>/dev/null)" == idle ]]; }

scheduler_cycled() {
    # sdiag's first "Total cycles" line belongs to the main scheduler; before one cycle the first job waits ~3 s.
    local n
    n="$(sdiag 2>/dev/null | awk -F: '/Total cycles/ {gsub(/ /, "", $2); print $2; exit}')"
    [[ -n "$n" && "$n" -ge 1 ]]
}

cmd_start() {
    need_root
    if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
        die "Slurm/munge not installed; run: $0 install"
    fi
    if [[ $ACCOUNTING -eq 1 ]] && { ! command -v slurmdbd >/dev/null || ! command -v mariadbd >/dev/null; }; then
        die "slurmdbd/mariadb-server not installed; run: $0 install (or start with --no-accounting)"
    fi
    if [[ -f "$MODE_FILE" && "$(cat "$MODE_FILE")" == "$(mode_string)" ]] && cmd_status >/dev/null 2>&1; then
        echo "cluster.sh: already running ($(mode_string)) in $STATE"
        return 0
    fi
    cmd_stop >/dev/null
    local p ports=("$CTLD_PORT" "$SLURMD_PORT")
    [[ $ACCOUNTING -eq 1 ]] && ports+=("$DBD_PORT" "$DB_PORT")
    for p in "${ports[@]}"; do
        port_busy "$p" && die "port $p on 127.0.0.1 is in use by another program; pick another --port-base/--db-port"
    done

    if [[ -d "$STATE" && ! -f "$MODE_FILE" && -n "$(ls -A "$STATE")" ]]; then
        die "$STATE is not empty and holds no cluster (no $MODE_FILE); refusing to wipe it"
    fi
    rm -rf "$STATE"
    mkdir -p "$ETC" "$LOG" "$RUN/munge" "$STATE/munge" "$STATE/ctld" "$STATE/spool/slurmd" "$STATE/gpu"
    # munged refuses a socket directory that is not executable for all.
    chmod 755 "$STATE" "$RUN" "$RUN/munge"
    chmod 700 "$STATE/munge"
    DB_PASS="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    mode_string >"$MODE_FILE"
    write_configs

    start_munged
    if [[ $ACCOUNTING -eq 1 ]]; then
        start_mariadb
        start_slurmdbd
    fi
    slurmctld -f "$CONF" </dev/null >>"$LOG/slurmctld.log" 2>&1 || fail_start "slurmctld did not start"
    slurmd -f "$CONF" </dev/null >>"$LOG/slurmd.log" 2>&1 || fail_start "slurmd did not start"
    wait_for "node $NODE to be idle in sinfo" node_idle
    wait_for "slurmctld's first scheduler cycle (sdiag)" scheduler_cycled
    echo "cluster.sh: running ($(mode_string)) in $STATE; export SLURM_CONF=$CONF"
}

stop_pid() { # stop_pid NAME: TERM, wait up to 10 s, then KILL
    local name="$1" pid i
    pid="$(pid_of "$name")"
    [[ -n "$pid" ]] || { rm -f "$RUN/$name.pid"; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        [[ -z "$(pid_of "$name")" ]] && break
        sleep 0.1
    done
    if [[ -n "$(pid_of "$name")" ]]; then
        echo "cluster.sh: $name (pid $pid) ignored SIGTERM; sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.2
    fi
    rm -f "$RUN/$name.pid"
}

cancel_jobs() {
    # Job processes belong to slurmstepd, which outlives slurmd; cancel while slurmctld still answers.
    [[ -n "$(pid_of slurmctld)" ]] || return 0
    local ids i
    ids="$(squeue -h -t PENDING,RUNNING,SUSPENDED,CONFIGURING,COMPLETING -o '%A' 2>/dev/null | sort -u | tr '\n' ' ')"
    [[ -n "${ids// /}" ]] || return 0
    # shellcheck disable=SC2086
    scancel $ids 2>/dev/null || true
    # KillWait=5 bounds how long a job can ignore SIGTERM before slurmstepd kills it.
    for ((i = 0; i < 80; i++)); do
        [[ -z "$(squeue -h -t RUNNING,COMPLETING,CONFIGURING -o '%A' 2>/dev/null)" ]] && break
        sleep 0.1
    done
}

cmd_stop() {
    need_root
    [[ -d "$STATE" ]] || { echo "cluster.sh: nothing to stop in $STATE"; return 0; }
    cancel_jobs
    local name
    for name in "${DAEMONS_ORDER_STOP[@]}"; do
        stop_pid "$name"
    done
    rm -f "$MUNGE_SOCK" "$MUNGE_SOCK.lock" "$DB_SOCK"
    echo "cluster.sh: stopped (logs kept in $LOG)"
}

cmd_status() {
    [[ -f "$MODE_FILE" ]] || { echo "cluster.sh: no cluster in $STATE"; return 3; }
    echo "state: $STATE"
    echo "mode:  $(cat "$MODE_FILE")"
    local name pid running=0 total=0
    for name in $(expected_daemons); do
        total=$((total + 1))
        pid="$(pid_of "$name")"
        if [[ -n "$pid" ]]; then
            running=$((running + 1))
            echo "$name: running (pid $pid)"
        else
            echo "$name: stopped"
        fi
    done
    [[ $running -eq 0 ]] && return 3
    [[ $running -lt $total ]] && return 1
    sinfo -h -o '%P %a %D %t' 2>/dev/null || { echo "sinfo: no answer"; return 1; }
    return 0
}

cmd_env() { echo "export SLURM_CONF=$CONF"; }

case "$CMD" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) cmd_env ;;
    *) die "usage: $0 {install|start|stop|status|env} [--no-accounting] [--state DIR] [--port-base N] [--db-port N]" ;;
esac
