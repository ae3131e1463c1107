#!/bin/sh
# Serial command agent. Each request is one line "<id> <shell command>"; the
# reply is framed as "@@BEGIN <id>", the output, "@@END <id> <exit status>",
# so nothing else on the line can pass for a reply.
tty=${1:-/dev/ttyS1}
stty -F "$tty" raw -echo
exec <"$tty" >"$tty" 2>&1
echo "harness: agent ready" > /dev/kmsg
echo "@@READY"
while IFS= read -r line; do
	id=${line%% *}
	cmd=${line#* }
	echo "@@BEGIN $id"
	sh -c "$cmd" </dev/null 2>&1
	echo "@@END $id $?"
done
