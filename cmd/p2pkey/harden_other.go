//go:build unix && !linux

package main

import "syscall"

// harden keeps core dumps, which would hold the node key, from being
// written (RLIMIT_CORE 0). On Linux the process is also made non-dumpable.
func harden() error {
	return syscall.Setrlimit(syscall.RLIMIT_CORE, &syscall.Rlimit{})
}
