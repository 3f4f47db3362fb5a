package main

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// The real daemon, started with core dumps allowed, runs with none: a crash
// cannot write its keys to disk.
func TestDaemonWritesNoCoreFile(t *testing.T) {
	var saved unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_CORE, &saved); err != nil {
		t.Fatal(err)
	}
	if saved.Max == 0 {
		t.Skip("core files are not allowed here at all: nothing to inherit")
	}
	// The daemon inherits the most this process may allow.
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{Cur: saved.Max, Max: saved.Max}); err != nil {
		t.Fatal(err)
	}
	data := initNode(t)
	d := startDaemon(t, data, nil, "--bootstrap")
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &saved); err != nil {
		t.Fatal(err)
	}
	d.waitMember(t, 1)
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", d.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		if strings.HasPrefix(line, "Max core file size") {
			if f := strings.Fields(line); len(f) < 6 || f[4] != "0" || f[5] != "0" {
				t.Errorf("the daemon's core limit: %q, want 0 0", strings.TrimSpace(line))
			}
			return
		}
	}
	t.Error("no core limit in /proc/PID/limits")
}

// harden leaves the process non-dumpable, with no core file allowed. It runs
// after TestDaemonWritesNoCoreFile, which needs a core limit to hand on.
func TestHarden(t *testing.T) {
	if err := harden(); err != nil {
		t.Fatal(err)
	}
	d, err := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0)
	if err != nil || d != 0 {
		t.Errorf("PR_GET_DUMPABLE = %d, %v; want 0", d, err)
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_CORE, &lim); err != nil || lim.Cur != 0 || lim.Max != 0 {
		t.Errorf("RLIMIT_CORE = %+v, %v; want 0/0", lim, err)
	}
}
