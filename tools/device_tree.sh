#!/bin/bash
# Fit the working tree into the device tool's 64 MiB for one lent-GPU session, and put it back afterwards.
#
#   tools/device_tree.sh slim      # untrack (git rm --cached) and ignore (.git/info/exclude) every tracked file over
#                                  # 1 MB: the teachers in data/, the gate runs' pruned.pt; the files stay on disk
#   tools/device_tree.sh restore   # track them again (git reset of those paths) and drop the exclude lines
#   tools/device_tree.sh size      # bytes that would travel: tracked files and untracked ones git does not ignore
#
# The device checks (tools/device_check.py) use random weights and synthetic data: none of these files is needed there.
# Between slim and restore the index holds their removal: commit nothing in between (slim refuses to run twice).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
LIST=.git/device_slim.list
EXCL=.git/info/exclude
MARK="# device_tree.sh slim"
travelling() { git ls-files -z --cached --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1; }
case "${1:-}" in
  slim)
    [ -e "$LIST" ] && { echo "error: already slim ($LIST exists); run: $0 restore" >&2; exit 1; }
    git ls-files -z | xargs -0 du -b | awk -F'\t' '$1 > 1000000 {print $2}' > "$LIST"
    [ -s "$LIST" ] || { echo "nothing over 1 MB is tracked"; rm -f "$LIST"; exit 0; }
    xargs -a "$LIST" -d '\n' git rm -q --cached --
    mkdir -p "$(dirname "$EXCL")"
    while read -r p; do printf '/%s\n' "$p"; done < "$LIST" | sed "1i $MARK begin" | sed "\$a $MARK end" >> "$EXCL"
    echo "untracked $(wc -l < "$LIST") files (still on disk); $(travelling) bytes would travel (limit 67108864)"
    echo "after the device call: $0 restore"
    ;;
  restore)
    [ -e "$LIST" ] || { echo "nothing to restore ($LIST missing)"; exit 0; }
    xargs -a "$LIST" -d '\n' git reset -q HEAD --
    sed -i "/^$MARK begin\$/,/^$MARK end\$/d" "$EXCL"
    rm -f "$LIST"
    echo "restored; $(travelling) bytes in the tree"
    ;;
  size)
    echo "$(travelling) bytes would travel (limit 67108864)"
    ;;
  *)
    echo "usage: $0 slim|restore|size" >&2; exit 2 ;;
esac
