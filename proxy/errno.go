package proxy

import "syscall"

// errTooManyFiles is the accept error that is retried after a pause.
var errTooManyFiles = syscall.EMFILE
