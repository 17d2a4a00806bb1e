# Settings both local test clusters share (sourced by local_cluster.sh and two_hosts.sh):
# munge authentication, no cgroups (proctrack/linuxproc, task/none), core-level scheduling,
# root daemons, requeue allowed, no accounting daemon; finished jobs stay visible an hour.
common_settings() {
    cat <<'CONF'
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmUser=root
SlurmdUser=root
ReturnToService=2
MinJobAge=3600
KillWait=30
JobRequeue=1
MpiDefault=none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
CONF
}
