# The script's keeper, detached on the worker: sh run.sh TIMEOUT GRACE INTERPRETER ARGS… SCRIPT
# It starts job.sh in a process group of its own (recorded in `pgid`), enforces the timeout itself
# (so that it holds while no server is connected), and writes the end to `exit` last, atomically.
cd "$(dirname "$0")" || exit 1
timeout=$1
grace=$2
shift 2
if command -v setsid >/dev/null 2>&1; then
  setsid sh job.sh "$@" </dev/null >/dev/null 2>&1 &
else
  perl -e 'setpgrp(0, 0); exec @ARGV or die' sh job.sh "$@" </dev/null >/dev/null 2>&1 &
fi
job=$!
echo "$job" > pgid.tmp && mv pgid.tmp pgid
timer=
if [ "$timeout" -gt 0 ]; then
  (
    trap 'kill "$s" 2>/dev/null; exit 0' TERM
    sleep "$timeout" & s=$!
    wait "$s"
    : > timedout
    kill -TERM -"$job" 2>/dev/null
    i=0
    while [ "$i" -lt "$grace" ] && kill -0 -"$job" 2>/dev/null; do sleep 1; i=$((i + 1)); done
    kill -KILL -"$job" 2>/dev/null
  ) </dev/null >/dev/null 2>&1 &
  timer=$!
fi
wait "$job"
if [ -n "$timer" ]; then kill "$timer" 2>/dev/null; fi
# The taggers drain what the script printed last (its other processes got TERM from job.sh); then
# nothing the script started outlives it.
i=0
while [ "$i" -lt 100 ] && kill -0 -"$job" 2>/dev/null; do sleep 0.01; i=$((i + 1)); done
kill -KILL -"$job" 2>/dev/null
if [ -f cancel ]; then end=canceled
elif [ -f timedout ]; then end=timedout
elif [ -f rc ]; then end="exited $(cat rc)"
else end=lost
fi
echo "$end" > exit.tmp && mv exit.tmp exit
