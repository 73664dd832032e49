#!/usr/bin/env bash
# A single-node Slurm with accounting (sacct) for CI, as plain background daemons (no
# systemd, no cgroups). Run as root on Debian 12 after
#   apt-get install -y slurmctld slurmd slurm-client munge slurmdbd mariadb-server
# Idempotent: daemons already running are left alone; ends when `sinfo` shows the node
# idle (or fails after a timeout, printing the daemons' logs).
#   .ci/start-slurm.sh          start (or check) the cluster
#   .ci/start-slurm.sh stop     stop the daemons by their pid files, in reverse order
# Facts behind each setting: ../../shared/notes/slurm-ci.md (the config must be at
# /etc/slurm/slurm.conf; sacctmgr add cluster before slurmctld starts; MinJobAge >= 300).
set -euo pipefail

CLUSTER=${SLURM_CI_CLUSTER:-ci}
NODE=$(hostname -s)
RUN=/run/slurm
LOGS=/var/log/slurm
DB_PASS=slurm-ci-only   # a local MariaDB reachable only through its socket

if [ "$(id -u)" -ne 0 ]; then
  echo "start-slurm.sh: must run as root" >&2
  exit 1
fi

alive() {  # alive PIDFILE: the process named in PIDFILE runs
  [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

wait_for() {  # wait_for SECONDS WHAT COMMAND...: retry COMMAND until it succeeds
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "start-slurm.sh: timed out waiting for $what" >&2
      tail -n 20 "$LOGS"/*.log /var/log/munge/munged.log 2>/dev/null >&2 || true
      return 1
    fi
    sleep 0.5
  done
}

stop() {
  local pidfile
  for pidfile in $RUN/slurmd.pid $RUN/slurmctld.pid $RUN/slurmdbd.pid /run/mysqld/mysqld.pid \
                 /run/munge/munged.pid; do
    if alive "$pidfile"; then
      kill "$(cat "$pidfile")"
      for _ in $(seq 50); do alive "$pidfile" || break; sleep 0.2; done
    fi
  done
}

if [ "${1:-start}" = stop ]; then
  stop
  exit 0
fi

node_idle() {
  sinfo --noheader --nodes="$NODE" --format=%T 2>/dev/null | grep -Eq '^(idle|mixed|allocated)'
}
accounting_up() {  # sacct answers (the executor plugin polls job states with it)
  sacct --noheader --allocations --starttime now >/dev/null 2>&1
}
if alive $RUN/slurmctld.pid && alive $RUN/slurmd.pid && node_idle && accounting_up; then
  echo "slurm: already running, node $NODE up"
  exit 0
fi

mkdir -p $RUN $LOGS /var/spool/slurmctld /var/spool/slurmd /run/munge /var/log/munge \
  /run/mysqld
chown munge:munge /run/munge /var/log/munge
chown mysql:mysql /run/mysqld

# --- munge ---------------------------------------------------------------------------
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
fi
if ! alive /run/munge/munged.pid; then
  runuser -u munge -- /usr/sbin/munged
fi
wait_for 20 munged bash -c 'munge -n | unmunge'

# --- MariaDB + slurmdbd (accounting, for sacct) ---------------------------------------
if ! alive /run/mysqld/mysqld.pid; then
  # Small buffers: the accounting database of one CI node is tiny.
  /usr/sbin/mariadbd --user=mysql --pid-file=/run/mysqld/mysqld.pid \
    --socket=/run/mysqld/mysqld.sock --skip-networking \
    --innodb-buffer-pool-size=64M --innodb-log-file-size=8M \
    >"$LOGS/mariadb.log" 2>&1 &
fi
wait_for 60 mariadb mariadb -e 'SELECT 1'
mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"

cat >/etc/slurm/slurmdbd.conf <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StoragePort=3306
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
LogFile=$LOGS/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
EOF
chmod 600 /etc/slurm/slurmdbd.conf

MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
cat >/etc/slurm/slurm.conf <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=300
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=5
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
AccountingStoreFlags=job_comment
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

if ! alive $RUN/slurmdbd.pid; then
  /usr/sbin/slurmdbd
fi
wait_for 60 slurmdbd sacctmgr --noheader list cluster
if ! sacctmgr --noheader --parsable2 list cluster format=cluster | grep -qx "$CLUSTER"; then
  sacctmgr -i add cluster "$CLUSTER" >/dev/null
fi

# --- slurmctld, slurmd ----------------------------------------------------------------
if ! alive $RUN/slurmctld.pid; then
  /usr/sbin/slurmctld
fi
wait_for 60 slurmctld scontrol ping
if ! alive $RUN/slurmd.pid; then
  /usr/sbin/slurmd
fi
wait_for 60 "node $NODE idle" node_idle
wait_for 60 "accounting (sacct)" accounting_up
echo "slurm: cluster $CLUSTER up, node $NODE ($(nproc) CPUs, $MEM_MB MB)"
