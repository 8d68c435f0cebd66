# sh -c start.sh muster TICKET TOTAL RUN_LEN JOB_LEN ENV_LEN SCRIPT_NAME SCRIPT_LEN TIMEOUT GRACE INTERPRETER ARGS…
# stdin: run.sh, job.sh, env and the script, one after the other. A ticket that has a directory is
# left alone (the server may repeat a start after a crash); an upload cut short leaves nothing.
umask 077
mkdir -p "$HOME/.muster/work" || exit 1
d="$HOME/.muster/work/$1"
if ! mkdir "$d" 2>/dev/null; then cat >/dev/null; echo exists; exit 0; fi
chmod 700 "$d"
cd "$d" || exit 1
cat > bundle
if [ "$(wc -c < bundle | tr -d ' ')" != "$2" ]; then
  cd / && rm -rf "$d"
  echo "the upload was cut short" >&2
  exit 1
fi
o=1
for part in "run.sh:$3" "job.sh:$4" "env:$5" "$6:$7"; do
  tail -c +"$o" bundle | head -c "${part##*:}" > "${part%:*}"
  o=$((o + ${part##*:}))
done
rm -f bundle
: > output
timeout=$8
grace=$9
shift 9
if command -v setsid >/dev/null 2>&1; then
  setsid sh run.sh "$timeout" "$grace" "$@" </dev/null >/dev/null 2>&1 &
else
  nohup sh run.sh "$timeout" "$grace" "$@" </dev/null >/dev/null 2>&1 &
fi
echo "$!" > wpid
echo started
