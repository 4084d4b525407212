#!/usr/bin/env bash
# Long studies in the background: resumable, on a frozen copy of the code, sharing the cores politely.
#
#   tools/background.sh run RESULTS TARGET...      # make TARGET... one after the other (PROFILE=cpu unless set),
#                                                  # e.g. run ~/tf_results reproduce robustness; NAME=VALUE
#                                                  # goes to every make: run ~/tf_results scale RUNGS=cpu,cpu-w128
#   tools/background.sh soak RESULTS NAME CMD...   # a low-priority job (its autogroup at nice 19) that takes only
#                                                  # the time the others leave idle, e.g. soak ~/tf_results w128
#                                                  #   .venv/bin/python -m tinyfusion.cli.pretrain --profile cpu-w128
#   tools/background.sh pause|continue RESULTS     # SIGSTOP / SIGCONT every process of those runs (the study clocks
#                                                  # do not count a pause), e.g. to lend the cores to `make test`
#   tools/background.sh status RESULTS             # their processes, the jobs not finished, the last line of each log,
#                                                  # the cached steps a running notebook reused and computed so far
#   tools/background.sh resume RESULTS             # start again every job that has not finished and is not running
#                                                  # (a session's end, a kill or a reboot stopped it), on the same copy;
#                                                  # a root with no job records (a machine that came back empty): says
#                                                  # how to put back the steps carried in results/carry first
#
# RESULTS is the results root (TINYFUSION_RESULTS of every run; keep it outside the work tree). The runs use
# RESULTS/tree, a clone of this repository's HEAD made (with its own .venv) on the first `run` or `soak`, so editing
# the work tree never reaches a running study; it holds what is committed (a teacher a study needs: commit it first).
# When HEAD has moved and nothing runs there, the copy is moved to it. Each command runs in a session of its own
# (setsid), appends to RESULTS/logs/<name>.log and resumes from the cache when started again: a killed run loses only
# its unfinished steps. Each job is recorded in RESULTS/jobs/<job> (its arguments, NUL-separated, never evaluated)
# until it ends with every command's status 0; a job already running is not started twice.
# BG_TREE=DIR uses DIR (a clone with its .venv) as the copy, as it is: no clone, no move, no setup.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
usage() { sed -n '3,18p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 2 ] || usage
argv=("$@")
cmd=$1; results=$(mkdir -p "$2" && cd "$2" && pwd); shift 2
logs="$results/logs"; tree="${BG_TREE:-$results/tree}"; jobs="$results/jobs"

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

running() {  # pids of job $1 of this results root (its chain and every process under it)
  for p in /proc/[0-9]*; do
    tr '\0' '\n' 2>/dev/null < "$p/environ" | grep -aqxF "TINYFUSION_JOB=$1@$results" && echo "${p#/proc/}"
  done
  return 0
}

record() {  # job $1 of this invocation: refused when it runs, written to RESULTS/jobs until it succeeds
  if [ -n "$(running "$1")" ]; then
    echo "error: job $1 already runs for $results (tools/background.sh status $results); not started twice" >&2
    exit 1
  fi
  mkdir -p "$jobs"
  printf '%s\0' "PROFILE=${PROFILE:-cpu}" "BG_TREE=$tree" "${argv[@]}" > "$jobs/$1"
}

frozen_tree() {  # RESULTS/tree at this repository's HEAD, with its .venv (BG_TREE, or a resumed job: as it is)
  if [ -n "${BG_TREE:-}" ]; then
    [ -x "$tree/.venv/bin/python" ] || { echo "error: BG_TREE=$tree has no .venv/bin/python; run make setup there" >&2; exit 1; }
    return 0
  fi
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
    for a in "$@"; do
      [[ $a == PROFILE=* ]] && { echo "error: $a: set the profile in the environment (PROFILE=${a#PROFILE=} $0 run ...)" >&2; exit 2; }
    done
    names=(); for a in "$@"; do [[ $a == *=* ]] || names+=("$a"); done
    job="run-$(IFS=+; echo "${names[*]}")"   # one job per targets, whatever NAME=VALUE: a part run is not run beside the whole
    mkdir -p "$logs"; frozen_tree; record "$job"
    chain="ok=0; "; vars=""
    for a in "$@"; do [[ $a == *=* ]] && vars+=" $(printf '%q' "$a")"; done   # NAME=VALUE: a variable of every make
    for target in "$@"; do
      [[ $target == *=* ]] && continue
      chain+="make $target$vars PROFILE=${PROFILE:-cpu} >> '$logs/$target.log' 2>&1; rc=\$?; echo \"rc \$rc\" >> '$logs/$target.log'; [ \$rc = 0 ] || ok=1; "
    done
    chain+="[ \$ok = 0 ] && rm -f '$jobs/$job'"
    # every fd of the detached chain is /dev/null (a caller reading this script's output through a pipe returns now)
    (cd "$tree" && TINYFUSION_RESULTS="$results" TINYFUSION_JOB="$job@$results" OMP_NUM_THREADS=1 \
      exec setsid bash -c "$chain") < /dev/null > /dev/null 2>&1 &
    echo "started job $job in $tree: make $* (PROFILE=${PROFILE:-cpu}); logs in $logs"
    ;;
  soak)
    [ $# -ge 2 ] || usage
    name=$1; shift
    job="soak-$name"
    mkdir -p "$logs"; frozen_tree; record "$job"
    # the session's autogroup gets nice 19: nice alone does not reach across autogroups (README, "Sharing the cores")
    (cd "$tree" && TINYFUSION_RESULTS="$results" TINYFUSION_JOB="$job@$results" OMP_NUM_THREADS=1 exec setsid bash -c \
      'echo 19 > /proc/$$/autogroup 2>/dev/null; renice -n 19 $$ > /dev/null; "$@" >> "'"$logs/$name.log"'" 2>&1;
       rc=$?; echo "rc $rc" >> "'"$logs/$name.log"'"; [ $rc = 0 ] && rm -f "'"$jobs/$job"'"' \
      soak "$@") < /dev/null > /dev/null 2>&1 &
    echo "started job $job at low priority in $tree; log $logs/$name.log"
    ;;
  pause|continue)
    sig=$([ "$cmd" = pause ] && echo STOP || echo CONT)
    pids=$(mine)
    if [ -n "$pids" ]; then kill -"$sig" $pids 2>/dev/null || true; fi   # one may have exited meanwhile
    echo "$cmd: $(echo $pids | wc -w) processes"
    ;;
  resume)
    n=0
    for f in "$jobs"/*; do
      [ -f "$f" ] || continue
      job=$(basename "$f")
      if [ -n "$(running "$job")" ]; then echo "$job runs"; continue; fi
      mapfile -d '' -t rec < "$f"
      if [ "${#rec[@]}" -lt 4 ] || [[ ${rec[0]} != PROFILE=* || ${rec[1]} != BG_TREE=* ]] ||
         [[ ${rec[2]} != run && ${rec[2]} != soak ]]; then
        echo "error: $f is not a job record of this script; remove it" >&2; exit 1
      fi
      env "${rec[0]}" "${rec[1]}" "$0" "${rec[@]:2}"
      n=$((n + 1))
    done
    echo "resume: $n jobs started"
    if [ "$n" = 0 ] && [ ! -d "$jobs" ]; then   # a root that never ran here: a machine that came back empty?
      echo "no job records in $results: if this machine lost that cache, put back the finished steps carried in git" \
           "first (python tools/copy_steps.py results/carry $results --profile all --kind all), then run the study again"
    fi
    ;;
  status)
    pids=$(mine)
    [ -n "$pids" ] && ps -o pid,stat,etime,args -p "$(echo $pids | tr ' ' ,)" | cut -c1-150 || echo "nothing runs for $results"
    for f in "$jobs"/*; do
      [ -f "$f" ] || continue
      job=$(basename "$f")
      printf 'job %s: %s\n' "$job" "$([ -n "$(running "$job")" ] && echo runs || echo "not finished, not running (resume)")"
    done
    for f in "$logs"/*.log; do
      if [ -f "$f" ]; then
        printf '%s: %s\n' "$(basename "$f" .log)" "$(tail -c 300 "$f" | tr '\r' '\n' | grep -av '^\s*$' | tail -1)"
      fi
    done
    # a notebook running under cli.reproduce logs each cached step it reuses or computes (partial/.<notebook>.steps);
    # a file left by a run that was cut (the session ended) says so instead of passing for a running notebook
    for f in "$results"/*/partial/.*.steps; do
      [ -f "$f" ] || continue
      nb=$(basename "$f" .steps); nb=${nb#.}
      state=$([ -n "$pids" ] && echo "last done" || echo "cut, nothing runs now; last done")
      printf '%s/%s steps: %s reused, %s computed; %s: %s\n' "$(basename "$(dirname "$(dirname "$f")")")" "$nb" \
        "$(grep -c '^reused ' "$f")" "$(grep -c '^computed ' "$f")" "$state" \
        "$(tail -n 1 "$f" | sed 's|.*/\([^/]*/[^/]*/[^/]*\)$|\1|')"
    done
    ;;
  *) usage ;;
esac
