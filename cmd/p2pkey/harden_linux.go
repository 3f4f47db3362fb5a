package main

import "golang.org/x/sys/unix"

// harden keeps this process's memory, which holds the node key and the keys
// derived from it, out of core dumps, and out of reach of other processes of
// the same user: no core file (RLIMIT_CORE 0), and the process is not
// dumpable (PR_SET_DUMPABLE 0), so a non-root process of the same uid can
// neither ptrace it nor read /proc/PID/mem. Root still can; swap is not
// covered (docs/SECURITY.md).
func harden() error {
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{}); err != nil {
		return err
	}
	return unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0)
}
