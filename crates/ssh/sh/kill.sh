# sh -c kill.sh muster TICKET GRACE: marks the script canceled, sends TERM to its process group,
# KILL after GRACE seconds, and waits (boundedly) for the keeper to record the end.
cd "$HOME/.muster/work/$1" 2>/dev/null || exit 0
[ -f exit ] && exit 0
: > cancel
i=0
while [ ! -f pgid ] && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
pg=$(cat pgid 2>/dev/null)
[ -n "$pg" ] || exit 0
kill -TERM -"$pg" 2>/dev/null
i=0
while kill -0 -"$pg" 2>/dev/null && [ "$i" -lt "$(($2 * 10))" ]; do sleep 0.1; i=$((i + 1)); done
kill -KILL -"$pg" 2>/dev/null
i=0
while [ ! -f exit ] && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
exit 0
