# sh -c read.sh muster TICKET PATH: `size N` and the file's bytes, or `missing`.
cd "$HOME/.muster/work/$1" 2>/dev/null || { echo missing; exit 0; }
if [ -f "$2" ] && [ -r "$2" ]; then
  printf 'size %s\n' "$(wc -c < "$2" | tr -d ' ')"
  exec cat -- "$2"
fi
echo missing
