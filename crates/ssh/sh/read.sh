# sh -c read.sh muster TICKET PATH: `size N` and the file's bytes, `missing`, or `outside` (the
# path resolves, through a symbolic link, to a file outside the script's working directory).
cd "$HOME/.muster/work/$1" 2>/dev/null || { echo missing; exit 0; }
if [ -f "$2" ] && [ -r "$2" ]; then
  dir=$(pwd -P)
  real=$(realpath -- "$2" 2>/dev/null) || { echo missing; exit 0; }
  case "$real" in
    "$dir"/*) ;;
    *) echo outside; exit 0 ;;
  esac
  printf 'size %s\n' "$(wc -c < "$real" | tr -d ' ')"
  exec cat -- "$real"
fi
echo missing
