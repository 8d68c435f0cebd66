# sh -c follow.sh muster TICKET AFTER: streams `output` from byte AFTER on stdout until the keeper
# has written `exit` and the file is read to its end; then the end on stderr (`end …`).
d="$HOME/.muster/work/$1"
cd "$d" 2>/dev/null || { echo "no working directory" >&2; exit 3; }
i=0
while [ ! -f wpid ] && [ ! -f exit ] && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
from=$(($2 + 1))
if [ -f exit ]; then
  tail -c +"$from" output
elif [ -f wpid ] && tail --version 2>/dev/null | grep -q GNU; then
  # GNU tail follows with inotify and stops once the keeper is gone, after a last read; it checks
  # the keeper every 50 ms (one kill(2), no process started).
  tail -c +"$from" -s 0.05 --pid="$(cat wpid)" -f output
else
  o=$2
  while :; do
    done=0
    if [ -f exit ] || ! kill -0 "$(cat wpid 2>/dev/null)" 2>/dev/null; then done=1; fi
    size=$(wc -c < output | tr -d ' ')
    if [ "$size" -gt "$o" ]; then tail -c +"$((o + 1))" output | head -c "$((size - o))"; o=$size; fi
    [ "$done" = 1 ] && break
    sleep 1
  done
fi
if [ -f exit ]; then echo "end $(cat exit)" >&2; else echo "end lost" >&2; fi
