# Programmatic tool calling, the bash side: bash reads this file (BASH_ENV) before the
# program, then the server appends one function per tool that calls `_ptc_call <index>`.
#
# A call writes its JSON input to the bridge directory, announces itself on the `calls`
# FIFO ("<key> <tool index>") and waits on a FIFO of its own for the server's answer:
# a status line ("ok" or "error"), a length line, then that many bytes (the result as
# compact JSON, or the error message). The program blocks only in its own call; the
# server answers once the client has sent the tool's result.
# The program's time limit runs from here; bash started by the program reads this too.
if [ -z "${_PTC_STARTED:-}" ]; then
    export _PTC_STARTED=1
    printf 'start\n' > /run/ptc/calls
fi

_ptc_call() {
    local index=$1 input=${2:-} dir=/run/ptc
    [ -n "$input" ] || input='{}'
    local key="${BASHPID}-${SRANDOM}" reply status length
    printf '%s' "$input" > "$dir/$key.in" || return 1
    mkfifo -m 600 "$dir/$key.out" || return 1
    # Open read-write so the open does not wait for the server.
    exec {reply}<>"$dir/$key.out" || return 1
    if ! printf '%s %s\n' "$key" "$index" > "$dir/calls"; then
        exec {reply}<&-
        return 1
    fi
    IFS= read -r -u "$reply" status || status=
    IFS= read -r -u "$reply" length || length=0
    case $length in '' | *[!0-9]*) length=0 ;; esac
    if [ "$status" = ok ]; then
        head -c "$length" <&"$reply"
        printf '\n'
        exec {reply}<&-
        return 0
    fi
    head -c "$length" <&"$reply" >&2
    printf '\n' >&2
    exec {reply}<&-
    return 1
}
