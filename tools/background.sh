#!/usr/bin/env bash
# Long studies in the background: resumable, on a frozen copy of the code, sharing the cores politely.
#
#   tools/background.sh run RESULTS TARGET...      # make TARGET... one after the other (PROFILE=cpu unless set),
#                                                  # e.g. run ~/tf_results reproduce robustness
#   tools/background.sh soak RESULTS NAME CMD...   # a low-priority job (its autogroup at nice 19) that takes only
#                                                  # the time the others leave idle, e.g. soak ~/tf_results w128
#                                                  #   .venv/bin/python -m tinyfusion.cli.pretrain --profile cpu-w128
#   tools/background.sh pause|continue RESULTS     # SIGSTOP / SIGCONT every process of those runs (the study clocks
#                                                  # do not count a pause), e.g. to lend the cores to `make test`
#   tools/background.sh status RESULTS             # their processes and the last line of each log
#
# RESULTS is the results root (TINYFUSION_RESULTS of every run; keep it outside the work tree). The runs use
# RESULTS/tree, a clone of this repository's HEAD made (with its own .venv) on the first `run` or `soak`, so editing
# the work tree never reaches a running study; it holds what is committed (a teacher a study needs: commit it first).
# When HEAD has moved and nothing runs there, the copy is moved to it. Each command runs in a session of its own
# (setsid), appends to RESULTS/logs/<name>.log and resumes from the cache when started again: a killed run loses only
# its unfinished steps.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
usage() { sed -n '3,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 2 ] || usage
cmd=$1; results=$(mkdir -p "$2" && cd "$2" && pwd); shift 2
logs="$results/logs"; tree="$results/tree"

mine() {  # pids whose environment names this results root (chains, kernels, workers: any process group), but never
          # this script, its subshells or the processes that started it (a caller that exported the same root)
  local skip=" $$ $BASHPID " a=$$
  while [ "$a" -gt 1 ]; do
    a=$(awk '/^PPid:/{print $2}' "/proc/$a/status" 2>/dev/null || echo 1)
    skip+="$a "
  done
  for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    [[ $skip == *" $pid "* ]] && continue
    tr '\0' '\n' 2>/dev/null < "$p/environ" | grep -aqxF "TINYFUSION_RESULTS=$results" && echo "$pid"
  done
  return 0
}

frozen_tree() {  # RESULTS/tree at this repository's HEAD, with its .venv
  local head; head=$(git -C "$here" rev-parse HEAD)
  if [ -n "$(git -C "$here" status --porcelain --untracked-files=no)" ]; then
    echo "note: the work tree has uncommitted changes; the runs use the last commit, ${head:0:7}, without them" >&2
  fi
  if [ ! -d "$tree/.git" ]; then
    git clone -q "$here" "$tree"
  fi
  if [ "$(git -C "$tree" rev-parse HEAD)" != "$head" ]; then
    if [ -n "$(mine)" ]; then
      echo "note: $tree is at $(git -C "$tree" rev-parse --short HEAD), HEAD is at ${head:0:7}; runs are going there, so the new one uses that copy too" >&2
    else
      git -C "$tree" fetch -q "$here" HEAD && git -C "$tree" checkout -q --detach "$head"
    fi
  fi
  make -s -C "$tree" setup >> "$logs/setup.log" 2>&1 || { echo "error: make setup failed in $tree (see $logs/setup.log)" >&2; exit 1; }
}

case $cmd in
  run)
    [ $# -ge 1 ] || usage
    mkdir -p "$logs"; frozen_tree
    chain=""
    for target in "$@"; do
      chain+="make $target PROFILE=${PROFILE:-cpu} >> '$logs/$target.log' 2>&1; echo \"rc \$?\" >> '$logs/$target.log'; "
    done
    (cd "$tree" && TINYFUSION_RESULTS="$results" OMP_NUM_THREADS=1 setsid bash -c "$chain" < /dev/null > /dev/null 2>&1 &)
    echo "started in $tree: make $* (PROFILE=${PROFILE:-cpu}); logs in $logs"
    ;;
  soak)
    [ $# -ge 2 ] || usage
    name=$1; shift
    mkdir -p "$logs"; frozen_tree
    # the session's autogroup gets nice 19: nice alone does not reach across autogroups (README, "Sharing the cores")
    (cd "$tree" && TINYFUSION_RESULTS="$results" OMP_NUM_THREADS=1 setsid bash -c \
      'echo 19 > /proc/$$/autogroup 2>/dev/null; renice -n 19 $$ > /dev/null; "$@" >> "'"$logs/$name.log"'" 2>&1; echo "rc $?" >> "'"$logs/$name.log"'"' \
      soak "$@" < /dev/null > /dev/null 2>&1 &)
    echo "started $name at low priority in $tree; log $logs/$name.log"
    ;;
  pause|continue)
    sig=$([ "$cmd" = pause ] && echo STOP || echo CONT)
    pids=$(mine)
    if [ -n "$pids" ]; then kill -"$sig" $pids 2>/dev/null || true; fi   # one may have exited meanwhile
    echo "$cmd: $(echo $pids | wc -w) processes"
    ;;
  status)
    pids=$(mine)
    [ -n "$pids" ] && ps -o pid,stat,etime,args -p "$(echo $pids | tr ' ' ,)" | cut -c1-150 || echo "nothing runs for $results"
    for f in "$logs"/*.log; do
      if [ -f "$f" ]; then
        printf '%s: %s\n' "$(basename "$f" .log)" "$(tail -c 300 "$f" | tr '\r' '\n' | grep -av '^\s*$' | tail -1)"
      fi
    done
    ;;
  *) usage ;;
esac
