#!/bin/bash
# Fit the working tree into the device tool's 64 MiB for one lent-GPU session, and put it back afterwards.
#
#   tools/device_tree.sh slim      # untrack (git rm --cached) and ignore (info/exclude) every tracked file over 1 MB:
#                                  # the teachers in data/, the gate runs' pruned.pt; the files stay on disk
#   tools/device_tree.sh restore   # the index exactly as it was before slim (a saved copy), the exclude lines gone
#   tools/device_tree.sh size      # bytes that would travel: tracked files and untracked ones git does not ignore
#
# The device checks (tools/device_check.py) use random weights and synthetic data: none of these files is needed there.
# Between slim and restore the index holds their removal: commit nothing in between. slim refuses to run twice, and
# restore refuses when HEAD moved meanwhile (a commit would have recorded the deletions: undo it first).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
LIST=$(git rev-parse --git-path device_slim.list)
SAVED=$(git rev-parse --git-path device_slim.index)
HEADFILE=$(git rev-parse --git-path device_slim.head)
INDEX=$(git rev-parse --git-path index)
EXCL=$(git rev-parse --git-path info/exclude)
MARK="# device_tree.sh slim"
G=(git --literal-pathspecs)
travelling() { git ls-files -z --cached --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1; }
case "${1:-}" in
  slim)
    [ -e "$LIST" ] && { echo "error: already slim ($LIST exists); run: $0 restore" >&2; exit 1; }
    tmp=$(mktemp)
    git ls-files -z | while IFS= read -r -d '' f; do
      [ -f "$f" ] && [ "$(stat -c %s -- "$f")" -gt 1000000 ] && printf '%s\n' "$f"
    done > "$tmp" || true
    [ -s "$tmp" ] || { echo "nothing over 1 MB is tracked"; rm -f "$tmp"; exit 0; }
    cp "$INDEX" "$SAVED"; git rev-parse HEAD > "$HEADFILE"
    xargs -r -a "$tmp" -d '\n' "${G[@]}" rm -q --cached --
    mkdir -p "$(dirname "$EXCL")"
    { echo "$MARK begin"; while IFS= read -r p; do printf '/%s\n' "$p"; done < "$tmp"; echo "$MARK end"; } >> "$EXCL"
    mv "$tmp" "$LIST"
    echo "untracked $(wc -l < "$LIST") files (still on disk); $(travelling) bytes would travel (limit 67108864)"
    echo "after the device call: $0 restore"
    ;;
  restore)
    [ -s "$LIST" ] || { echo "nothing to restore ($LIST missing)"; rm -f "$LIST"; exit 0; }
    if [ "$(git rev-parse HEAD)" != "$(cat "$HEADFILE")" ]; then
      echo "error: HEAD moved since slim (was $(cat "$HEADFILE")): a commit may have recorded the deletions of" \
           "$(wc -l < "$LIST") files; undo it (git reset --soft $(cat "$HEADFILE")), then run $0 restore" >&2; exit 1
    fi
    cp "$SAVED" "$INDEX"
    sed -i "/^$MARK begin\$/,/^$MARK end\$/d" "$EXCL"
    rm -f "$LIST" "$SAVED" "$HEADFILE"
    echo "restored; $(travelling) bytes in the tree"
    ;;
  size)
    echo "$(travelling) bytes would travel (limit 67108864)"
    ;;
  *)
    echo "usage: $0 slim|restore|size" >&2; exit 2 ;;
esac
