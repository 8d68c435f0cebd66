# The script's process group (its pid is the group's id): sh job.sh INTERPRETER ARGS… SCRIPT
# Every line of the interpreter goes to the one file `output`, prefixed `O ` (stdout) or `E `
# (stderr), one write per line; lines over 64 KiB are cut into pieces. The taggers ignore TERM so
# that they drain what a canceled script printed; the shells catch it (a caught signal is reset for
# the interpreter, an ignored one would not be).
cd "$(dirname "$0")" || exit 1
trap ':' TERM
# mawk reads a pipe in blocks unless told it is interactive; other awks have no such option.
if [ -z "$(awk -W interactive 'BEGIN { }' 2>&1 </dev/null)" ]; then interactive=1; else interactive=0; fi
tag() {
  trap '' TERM
  # One printf of the whole line: mawk's unbuffered print writes the line and its newline apart.
  prog='{ while (length($0) > 65536) { printf "%s", p substr($0, 1, 65536) "\n"; $0 = substr($0, 65537) } printf "%s", p $0 "\n"; fflush() }'
  if [ "$interactive" = 1 ]; then exec awk -W interactive -v p="$1" "$prog" >> output
  else exec awk -v p="$1" "$prog" >> output
  fi
}
# The outer group is a subshell of the pipeline, where a caught signal is reset: it catches TERM too,
# or the script's own `kill -TERM 0` below would end it before the 'E ' tagger has written the
# script's last error lines, and the keeper's KILL of the group would then lose them.
{
  trap ':' TERM
  {
    trap ':' TERM
    if command -v "$1" >/dev/null 2>&1; then
      # Waited for with stderr closed, so that sh prints no "Terminated" of its own; a trapped
      # TERM interrupts `wait`, so wait until the interpreter is really gone. (An asynchronous
      # command starts with INT and QUIT ignored; nothing here sends them.)
      (set -a; . ./env; exec "$@") &
      pid=$!
      wait "$pid" 2>/dev/null; rc=$?
      while kill -0 "$pid" 2>/dev/null; do wait "$pid" 2>/dev/null; rc=$?; done
      echo "$rc" > rc.tmp
    else
      echo "$1 is not installed on this worker (it is not on PATH), so this script cannot run here" >&2
      echo 127 > rc.tmp
    fi
    mv rc.tmp rc
    # As on agents: what the script started ends with it.
    kill -TERM 0 2>/dev/null
  } 2>&1 1>&3 3>&- | tag 'E '
} 3>&1 | tag 'O '
